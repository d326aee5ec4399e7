"""Near-duplicates (issue 21.2): MinHash signatures over word shingles, LSH in input order.
Known near-copies are planted among distinct records; split --near-dedup must set aside
exactly those, each naming its original, identically with any number of workers and on
every engine; stats --near-dup must report the same clusters without writing."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from conftest import run_cli

pytest.importorskip("datasketch")

from shardkit.records.minhash import NearDupIndex, Signer, lsh_params  # noqa: E402
from shardkit.records.ngrams import words  # noqa: E402

VOCAB = [f"w{i}" for i in range(2000)]


def text(rng: random.Random, n: int = 200) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def chat(t: str) -> dict:
    return {"messages": [{"role": "user", "content": "Summarise this."}, {"role": "assistant", "content": t}]}


def shingles(t: str, k: int = 5) -> set[str]:
    ws = words("Summarise this.\n" + t)
    return {" ".join(ws[i : i + k]) for i in range(len(ws) - k + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """60 distinct records; then 6 near-copies (one word changed at the end: Jaccard ~0.95)
    and 4 far edits (40 of 200 words changed: Jaccard well below 0.5)."""
    rng = random.Random(7)
    base = [text(rng) for _ in range(60)]
    records = [chat(t) for t in base]
    near, far = {}, {}
    for i in (3, 10, 11, 25, 40, 59):
        ws = base[i].split()
        ws[-1] = "changed"
        records.append(chat(" ".join(ws)))
        near[len(records)] = i + 1  # line of the copy -> line of the original
        assert jaccard(base[i], " ".join(ws)) > 0.93
    for i in (5, 6, 7, 8):
        ws = base[i].split()
        for j in range(0, 200, 5):
            ws[j] = "x" + ws[j]
        records.append(chat(" ".join(ws)))
        far[len(records)] = i + 1
        assert jaccard(base[i], " ".join(ws)) < 0.5
    path = tmp_path_factory.mktemp("near") / "data.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path, near, far


def test_signatures_estimate_jaccard_like_datasketch(planted):
    from datasketch import MinHash

    path, near, far = planted
    records = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    signer = Signer(5)
    for copy, original in [*near.items(), *far.items()]:
        a, b = records[original - 1], records[copy - 1]
        truth = jaccard(a["messages"][1]["content"], b["messages"][1]["content"])
        ours = float((signer.sign(a) == signer.sign(b)).mean())
        theirs = []
        for r in (a, b):
            m = MinHash(num_perm=128)
            m.update_batch([s.encode() for s in shingles(r["messages"][1]["content"])])
            theirs.append(m)
        assert abs(ours - truth) < 0.12, (copy, ours, truth)
        assert abs(theirs[0].jaccard(theirs[1]) - truth) < 0.12


def test_lsh_parameters_are_datasketchs():
    from datasketch import MinHashLSH

    for t in (0.5, 0.8, 0.9):
        lsh = MinHashLSH(threshold=t, num_perm=128)
        assert lsh_params(t) == (lsh.b, lsh.r)
        index = NearDupIndex(t)
        assert index.bands * index.rows <= 128


def test_split_near_dedup_sets_aside_exactly_the_planted_copies(planted, tmp_path):
    path, near, _ = planted
    outs = {}
    for name, extra in (("j1", ("-j", "1")), ("j2", ("-j", "2")), ("engine", ("--engine", "local"))):
        out = tmp_path / name
        proc = run_cli("split", str(path), "-o", str(out), "-n", "25", "--near-dedup", "0.8", *extra)
        assert proc.returncode == 0, proc.stderr
        side = [orjson.loads(x) for x in (out / "near-duplicates.jsonl").read_bytes().splitlines()]
        assert {e["line"]: int(e["near_duplicate_of"].rsplit(":", 1)[1]) for e in side} == near
        assert all(e["code"] == "near_duplicate" and e["similarity"] >= 0.8 for e in side)
        m = json.loads((out / "manifest.json").read_text())
        c = m["counts"]
        assert (c["read"], c["written"], c["duplicates"]) == (70, 64, 6)
        assert m["near_duplicates"]["records"] == 6 and m["near_dedup"]["threshold"] == 0.8
        outs[name] = out
    names = sorted(p.name for p in outs["j1"].iterdir() if p.name != "manifest.json")
    for name in names:
        assert (outs["j1"] / name).read_bytes() == (outs["j2"] / name).read_bytes() == (outs["engine"] / name).read_bytes()


def test_near_dedup_composes_with_shuffle_holdout_and_parquet(planted, tmp_path):
    path, near, _ = planted
    out = tmp_path / "all"
    proc = run_cli("split", str(path), "-o", str(out), "-n", "25", "--near-dedup", "0.8", "--shuffle", "--seed", "3",
                   "--holdout", "0.2", "--dedup", "exact", "--format", "parquet")
    assert proc.returncode == 0, proc.stderr
    c = json.loads((out / "manifest.json").read_text())["counts"]
    assert (c["read"], c["written"], c["duplicates"], c["train"] + c["validation"]) == (70, 64, 6, 64)


def test_stats_near_dup_reports_the_clusters(planted):
    path, near, _ = planted
    for extra in ((), ("--engine", "local")):
        proc = run_cli("stats", str(path), "--near-dup", "0.8", "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)["near_duplicates"]
        assert (report["records"], report["clusters"]) == (6, 6)
        assert {c["kept"]: c["members"] for c in report["largest"]} == {
            f"{path}:{original}": [f"{path}:{copy}"] for copy, original in sorted(near.items(), key=lambda kv: kv[1])[:3]
        }
    text_report = run_cli("stats", str(path), "--near-dup", "0.8").stdout.decode()
    assert "near-duplicates (estimated Jaccard >= 0.8, 5-word shingles): 6 records in 6 clusters" in text_report


def test_bad_thresholds_are_usage_errors(planted, tmp_path):
    path, _, _ = planted
    for bad in ("0", "1.5"):
        proc = run_cli("split", str(path), "-o", str(tmp_path / "x"), "-n", "5", "--near-dedup", bad)
        assert proc.returncode == 2, proc.stderr
