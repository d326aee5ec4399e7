"""`shardkit mix` (issue 21.1): weights, epochs, filters per source, the manifest's record of
the draw, conservation, and byte-identical output across engines. Known sources and weights
are planted; the results are checked exactly."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from shardkit.core.errors import UsageError
from shardkit.pipeline.mix import draw, parse_sources, share_out


def chat(tag: str) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {tag}?"}, {"role": "assistant", "content": f"Answer {tag}."}]}


def write(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" if not isinstance(r, bytes) else r + b"\n" for r in records))
    return path


def shard_records(out) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    rows = []
    for f in m["files"]:
        if f["path"].endswith(".parquet"):
            rows += pq.read_table(out / f["path"]).to_pylist()
        else:
            rows += [orjson.loads(x) for x in (out / f["path"]).read_bytes().splitlines()]
    return rows


@pytest.fixture
def sources(tmp_path):
    a = write(tmp_path / "a.jsonl", [chat(f"a{i}") for i in range(10)])
    b = write(tmp_path / "b.jsonl", [chat(f"b{i}") for i in range(40)])
    return a, b


def test_weights_are_parsed_and_checked(tmp_path):
    assert parse_sources(["x.jsonl=2", "y.jsonl=0.5"]) == parse_sources(["x.jsonl=2.0", "y.jsonl=.5"])
    toml = tmp_path / "w.toml"
    toml.write_text('[weights]\n"x.jsonl" = 3\n"y.jsonl" = 1\n')
    assert [(s.path, s.weight) for s in parse_sources([], toml)] == [("x.jsonl", 3.0), ("y.jsonl", 1.0)]
    assert [(s.path, s.weight) for s in parse_sources(["y.jsonl"], toml)] == [("y.jsonl", 1.0)]
    for bad, message in ((["x.jsonl"], "no weight"), (["x.jsonl=0"], "above 0"), (["x.jsonl=-1"], "above 0"),
                         (["x.jsonl=1", "x.jsonl=2"], "given twice"), ([], "at least one source")):
        with pytest.raises(UsageError, match=message):
            parse_sources(bad)


def test_shares_and_epochs():
    assert share_out(10, [1, 1, 1]) == [4, 3, 3]
    assert share_out(100, [3, 1]) == [75, 25]
    assert share_out(7, [1, 2, 4]) == [1, 2, 4]
    draws = list(draw(4, seed=1, source=0, records=10))
    assert [e for e, _ in draws] == [0] * 4 + [1] * 4 + [2] * 2
    assert sorted(k for e, k in draws if e == 0) == [0, 1, 2, 3]  # without replacement within an epoch
    assert draws == list(draw(4, seed=1, source=0, records=10))
    assert draws != list(draw(4, seed=2, source=0, records=10))
    spent = list(draw(3, seed=1, source=0, budget=10, tokens=[4, 4, 4]))
    assert len(spent) == 3  # 4 + 4 < 10, the third reaches it


def test_mix_draws_in_proportion_upsamples_and_records_the_draw(tmp_path, sources):
    a, b = sources
    out = tmp_path / "mix"
    proc = run_cli("mix", f"{a}=1", f"{b}=1", "-o", str(out), "--records", "60", "--seed", "7", "-n", "25", "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    mix = m["mix"]
    assert mix["seed"] == 7 and mix["target"] == {"records": 60}
    by_path = {s["path"].rsplit("/", 1)[-1]: s for s in mix["sources"]}
    assert by_path["a.jsonl"]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert (by_path["a.jsonl"]["read"], by_path["a.jsonl"]["available"], by_path["a.jsonl"]["drawn"]) == (10, 10, 30)
    assert (by_path["a.jsonl"]["full_epochs"], by_path["a.jsonl"]["epochs"], by_path["a.jsonl"]["weight"]) == (3, 3.0, 1.0)
    assert (by_path["b.jsonl"]["drawn"], by_path["b.jsonl"]["full_epochs"], by_path["b.jsonl"]["epochs"]) == (30, 0, 0.75)
    assert mix["counts"] == {"read": 50, "set_aside": 0, "available": 50, "held_out": 0, "drawn": 60}
    rows = shard_records(out)
    assert len(rows) == 60 == m["counts"]["written"] and [f["records"] for f in m["files"]] == [25, 25, 10]
    seen = Counter(r["messages"][0]["content"] for r in rows)
    assert all(seen[f"Question a{i}?"] == 3 for i in range(10))  # each of a's records, three epochs
    assert sum(1 for k in seen if k.startswith("Question b")) == 30 and max(seen[k] for k in seen if "b" in k) == 1
    # shuffled together, not source after source
    assert {r["messages"][0]["content"][9] for r in rows[:25]} == {"a", "b"}
    assert [s["path"] for s in m["sources"]] == [s["path"] for s in mix["sources"]]


def test_filters_apply_per_source_before_the_draw(tmp_path, sources):
    a, b = sources
    dirty = write(tmp_path / "dirty.jsonl", [chat("d0"), b"{not json", chat("d1"), chat("d0"), {"messages": []}])
    out = tmp_path / "mix"
    proc = run_cli("mix", f"{dirty}=1", f"{b}=1", "-o", str(out), "--records", "20", "-n", "100",
                   "--validate", "chat", "--dedup", "exact")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    d = next(s for s in m["mix"]["sources"] if s["path"].endswith("dirty.jsonl"))
    assert d["read"] == 5 and d["set_aside"] == {"rejected": 2, "duplicates": 1, "excluded": 0, "blank": 0}
    assert (d["available"], d["drawn"], d["full_epochs"]) == (2, 10, 5)  # upsampled copies are not duplicates
    rejects = [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()]
    assert sorted(r["line"] for r in rejects) == [2, 5] and all(r["source"].endswith("dirty.jsonl") for r in rejects)
    dups = [orjson.loads(x) for x in (out / "duplicates.jsonl").read_bytes().splitlines()]
    assert [r["line"] for r in dups] == [4]
    assert m["rejects"]["records"] == 2 and m["duplicates"]["records"] == 1
    assert "rejects.jsonl" in (out / "SHA256SUMS").read_text()


def test_same_seed_same_bytes_on_every_engine_and_format(tmp_path, sources):
    a, b = sources
    outs = {}
    for name, extra in (("inline", ()), ("engine", ("--engine", "local")), ("again", ())):
        out = tmp_path / name
        proc = run_cli("mix", f"{a}=2", f"{b}=1", "-o", str(out), "--records", "45", "--seed", "3", "-n", "20", *extra)
        assert proc.returncode == 0, proc.stderr
        outs[name] = out
    names = sorted(p.name for p in outs["inline"].iterdir() if p.name != "manifest.json")
    assert names and all((outs["inline"] / n).read_bytes() == (outs["engine"] / n).read_bytes()
                         == (outs["again"] / n).read_bytes() for n in names)
    other = tmp_path / "seed4"
    assert run_cli("mix", f"{a}=2", f"{b}=1", "-o", str(other), "--records", "45", "--seed", "4", "-n", "20").returncode == 0
    assert (other / names[0]).read_bytes() != (outs["inline"] / names[0]).read_bytes()
    parquet = tmp_path / "parquet"
    proc = run_cli("mix", f"{a}=2", f"{b}=1", "-o", str(parquet), "--records", "45", "--seed", "3", "-n", "20",
                   "--format", "parquet")
    assert proc.returncode == 0, proc.stderr
    assert shard_records(parquet) == shard_records(outs["inline"])


def test_a_token_budget(tmp_path, sources):
    pytest.importorskip("tokenizers")
    from chatmodel import make_model

    model = make_model(tmp_path / "model")
    a, b = sources
    out = tmp_path / "mix"
    proc = run_cli("mix", f"{a}=1", f"{b}=3", "-o", str(out), "--tokens", "2000", "--tokenizer", str(model), "-n", "1000")
    assert proc.returncode == 0, proc.stderr
    mix = json.loads((out / "manifest.json").read_text())["mix"]
    assert mix["target"]["tokens"] == 2000 and mix["target"]["chat_template"]
    per = {s["path"].rsplit("/", 1)[-1]: s for s in mix["sources"]}
    for name, share in (("a.jsonl", 500), ("b.jsonl", 1500)):
        s = per[name]
        assert s["share"] == share and s["tokens_drawn"] >= share
        assert s["tokens_drawn"] - share < 40  # stops at the record that reaches its share


def test_mix_refusals(tmp_path, sources):
    a, b = sources
    for args, message in (
        ((f"{a}=1", "--records", "5", "--tokens", "5"), b"--records N or --tokens N"),
        ((f"{a}=1", "--tokens", "5"), b"--tokens needs --tokenizer"),
        ((f"{a}=1",), b"--records N or --tokens N"),
        ((f"{a}", "--records", "5"), b"no weight"),
        ((f"{tmp_path}/missing.jsonl=1", "--records", "5"), b"missing.jsonl"),
    ):
        proc = run_cli("mix", *args, "-o", str(tmp_path / "x"), "-n", "10")
        assert proc.returncode in (2, 3), (args, proc.stderr)
        assert message in proc.stderr, proc.stderr
    empty = write(tmp_path / "empty.jsonl", [b"{bad"])
    proc = run_cli("mix", f"{empty}=1", f"{a}=1", "-o", str(tmp_path / "y"), "--records", "5", "-n", "10", "--validate", "chat")
    assert proc.returncode == 1 and b"no record left after the filters" in proc.stderr


def test_holdout_applies_to_each_source_before_the_draw(tmp_path, sources):
    a, b = sources
    out = tmp_path / "mix"
    proc = run_cli("mix", f"{a}=1", f"{b}=1", "-o", str(out), "--records", "60", "--seed", "7", "-n", "25",
                   "--holdout", "0.2")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    # the records `split --holdout 0.2` holds out of each source, by the same stable hash
    held = set()
    for src in (a, b):
        ref = tmp_path / f"ref-{src.stem}"
        assert run_cli("split", str(src), "-o", str(ref), "-n", "1000", "--holdout", "0.2").returncode == 0
        for f in ref.glob("*-validation-*.jsonl"):
            held |= {orjson.loads(x)["messages"][0]["content"] for x in f.read_bytes().splitlines()}
    assert held
    train = [r["messages"][0]["content"] for f in sorted(out.glob("part-train-*.jsonl"))
             for r in map(orjson.loads, f.read_bytes().splitlines())]
    validation = [r["messages"][0]["content"] for f in sorted(out.glob("part-validation-*.jsonl"))
                  for r in map(orjson.loads, f.read_bytes().splitlines())]
    assert sorted(validation) == sorted(held)  # each held-out record once, never upsampled
    assert not held & set(train) and len(train) == 60
    c = m["mix"]["counts"]
    assert (c["read"], c["held_out"], c["available"], c["drawn"]) == (50, len(held), 50 - len(held), 60)
    assert (m["counts"]["train"], m["counts"]["validation"]) == (60, len(held))
    for s in m["mix"]["sources"]:
        assert s["read"] == sum(s["set_aside"].values()) + s["held_out"] + s["available"]


def test_a_killed_mixs_work_folder_is_removed_by_the_next(tmp_path, sources):
    import subprocess
    import sys

    a, b = sources
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".shardkit-mix-killed"
    (stale / "source-000").mkdir(parents=True)
    (stale / "owner").write_text(dead.stdout.strip())  # that process has exited
    live = tmp_path / ".shardkit-mix-running"
    live.mkdir()
    (live / "owner").write_text(str(os.getpid()))  # this one runs: left alone
    proc = run_cli("mix", f"{a}=1", "-o", str(tmp_path / "mix"), "--records", "5", "-n", "10")
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.glob(".shardkit-mix-*")) == [".shardkit-mix-running"]


@pytest.mark.parametrize("weights", [[1e308, 1e-308], [1e308, 1e308, 1e308], [5e-324, 5e-324], [1.7e308, 1.0]])
def test_share_out_takes_extreme_weights(weights):
    """Weights near the float limits share out as their ratios say (1e308 * total used to
    overflow to inf: an internal error)."""
    for total in (0, 1, 10, 10**9):
        shares = share_out(total, weights)
        assert sum(shares) == total and all(s >= 0 for s in shares)
        if weights[0] == weights[-1]:
            assert max(shares) - min(shares) <= 1
        elif total:
            assert shares[0] == total
