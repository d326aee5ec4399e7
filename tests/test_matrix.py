"""The whole `shardkit split` option matrix, through the CLI as real processes.

Axes: transform (none, shuffle, holdout, holdout-key, dedup, exclude, to-chat, validate,
all of them) x format (jsonl, parquet) x engine (none, local -j 2, ray -j 2) x store (a
local folder, an s3:// prefix on a real moto S3 server on 127.0.0.1).

One test per (transform, format) checks its 6 engine x store cells. Every cell runs once:
the `matrix` fixture starts all the cells the selected tests need (Ray jobs 2 at a time,
the others 3 at a time) and each test waits for its own. For every cell: exit 0, a
complete manifest, `--json` counts = the manifest's, conservation (read = written +
rejected + duplicates + excluded + blank + any other category; written = train +
validation), per source too, every listed file's sha256, no stray file in OUT or staging,
and that the transform did something (a flag silently ignored would pass the rest). Then
all 6 cells must hold the same files byte for byte and the same manifest (created_at
aside; input paths, relative to a local OUT and absolute for s3://, compared by name).
For Parquet, every row read by pyarrow equals the record of the JSONL run of the same
transform, shard by shard (absent keys read back as null; fields stored as JSON text,
named in the file's `shardkit.json_paths` metadata, are decoded).
A failure lists every problem of the group as [transform/format/engine/store] ....

REFUSED lists the cells that are refused up front on purpose (exit 2, the reason on stderr,
nothing written); the goal is every cell working, so it is empty.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from conftest import run_cli

moto_server = pytest.importorskip("moto.server", reason="the s3 extra (make test installs it)")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("ray", reason="the ray extra (make test installs it)")
pq = pytest.importorskip("pyarrow.parquet")

RAY = Path(sys.executable).with_name("ray")
BUCKET = "matrix"
CUT = ("--max-records", "50")
PARALLEL = {"ray": 2, "other": 3}  # cells at the same time: Ray jobs starve each other on 2 CPUs beyond 2

TRANSFORMS: dict[str, tuple[str, ...]] = {
    "none": (),
    "shuffle": ("--shuffle", "--seed", "3"),
    "holdout": ("--holdout", "0.2"),
    "holdout-key": ("--holdout", "0.2", "--holdout-key", "id"),
    "dedup": ("--dedup", "exact"),
    "exclude": ("--exclude", "{eval}"),
    "to-chat": ("--to", "chat"),
    "validate": ("--validate", "chat"),
    # --validate runs before --to (pipeline order): `auto` keeps the alpaca records --to converts
    "all": ("--shuffle", "--seed", "3", "--holdout", "0.2", "--holdout-key", "id", "--dedup", "exact",
            "--exclude", "{eval}", "--to", "chat", "--validate", "auto"),
}
FORMATS = ("jsonl", "parquet")
ENGINES: dict[str, tuple[str, ...]] = {"none": (), "local": ("--engine", "local", "-j", "2"),
                                       "ray": ("--engine", "ray", "-j", "2")}
STORES = ("dir", "s3")
REFERENCE = ("none", "dir")  # (engine, store) the other cells of a group are compared with

# (transform, format, engine, store) -> a substring of the refusal on stderr (exit 2, nothing written)
REFUSED: dict[tuple[str, str, str, str], str] = {}

INPUT_NAMES = ("a.jsonl", "b.jsonl", "eval.jsonl")


# ---------------------------------------------------------------- data


def _alpaca(i: int, tag: str) -> dict:
    r = {"id": f"{tag}-{i // 3:03d}", "instruction": f"Traduis «{tag}{i}» en 中文 😀",
         "input": "" if i % 2 else f"contexte n°{i}\ttab \"quoted\" \\ back", "output": f"答案 {i} — ok"}
    if i % 4 == 0:
        r["meta"] = {"src": tag, "n": i, "tags": ["alpaca", "é"]}
    return r


def _chat(i: int, tag: str) -> dict:
    msgs = [{"role": "user", "content": f"Question {tag}{i}: ça va? 你好 🚀\nline two"},
            {"role": "assistant", "content": f"Réponse {i} " + "ü" * (i % 7)}]
    if i % 5 == 0:
        msgs.insert(0, {"role": "system", "content": "Sois bref. \u2028 séparateur"})
    r = {"id": f"{tag}-{i // 3:03d}", "messages": msgs}
    if i % 3 == 0:
        r["meta"] = {"src": tag, "n": i, "tags": ["chat"]}
    return r


def _records(tag: str, n: int) -> list[bytes]:
    lines = []
    for i in range(n):
        if i % 29 == 7:  # invalid: a role chat does not know
            rec = {"id": f"{tag}-{i // 3:03d}", "messages": [{"role": "bot", "content": f"beep {i}"},
                                                           {"role": "assistant", "content": "x"}]}
        elif i % 31 == 11:  # invalid: no messages at all (and no other known kind)
            rec = {"id": f"{tag}-{i // 3:03d}", "meta": {"src": tag, "n": i, "tags": ["broken"]}, "note": f"no messages {i}"}
        elif i % 5 in (1, 3):
            rec = _alpaca(i, tag)
        else:
            rec = _chat(i, tag)
        lines.append(orjson.dumps(rec) + b"\n")
    return lines


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("matrix-in")
    a = _records("a", 220)
    b = _records("b", 180)
    # one JSON-text field for Parquet: meta.tags is a list everywhere but here
    a[60] = orjson.dumps({"id": "a-020", "meta": {"src": "a", "n": 60, "tags": "solo"},
                          "messages": [{"role": "user", "content": "tags as text"}, {"role": "assistant", "content": "ok"}]}) + b"\n"
    # exact duplicates: within a, within b, across files, and one with its keys in another order
    a[100:100] = [a[4], a[10]]
    a[170:170] = [a[2]]
    b[50:50] = [a[20], a[21], b[0]]
    reordered = orjson.loads(a[30])
    b[120:120] = [json.dumps(dict(reversed(list(reordered.items()))), ensure_ascii=False).encode() + b"\n"]
    b[80:80] = [b"\n", b"   \n"]  # blank lines
    (d / "a.jsonl").write_bytes(b"".join(a))
    (d / "b.jsonl").write_bytes(b"".join(b))
    # eval set: three chat records of the inputs (one re-serialised), two that are not there
    ev = [a[0], b[10], json.dumps(orjson.loads(a[40]), indent=None, separators=(", ", ": ")).encode() + b"\n",
          orjson.dumps(_chat(9999, "eval")) + b"\n", orjson.dumps(_chat(9998, "eval")) + b"\n"]
    for line in ev[:3]:
        assert "messages" in orjson.loads(line)
    (d / "eval.jsonl").write_bytes(b"".join(ev))
    return {"a": d / "a.jsonl", "b": d / "b.jsonl", "eval": d / "eval.jsonl", "dir": d}


# ---------------------------------------------------------------- services


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server for this module; the CLI gets the endpoint through its env, not ours."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    fs = s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True, use_listings_cache=False,
                           client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
    fs.mkdir(BUCKET)
    try:
        yield {"env": env, "fs": fs, "staging": tmp_path_factory.mktemp("matrix-staging")}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` once for the module, as a user would; `ray stop --force` at the end."""
    cwd = tmp_path_factory.mktemp("matrix-ray-head")
    out = subprocess.run([str(RAY), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
                          "--disable-usage-stats"], capture_output=True, text=True, cwd=cwd, timeout=180)
    assert out.returncode == 0, out.stderr
    m = re.search(r"--address='([^']+)'", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    try:
        yield {"RAY_ADDRESS": m.group(1), "RAY_AUTH_MODE": "token"}
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=180)


# ---------------------------------------------------------------- running cells


class Cell:
    """One run: its args, process result, and (when it wrote something) OUT's files as bytes."""

    def __init__(self, key: tuple[str, str, str, str]):
        self.key = key
        self.name = "/".join(key)
        self.args: list[str] = []
        self.proc: subprocess.CompletedProcess | None = None
        self.files: dict[str, bytes] = {}  # every file under OUT, relative path -> bytes
        self.staging_left: list[str] = []
        self.manifest: dict | None = None
        self.seconds = 0.0
        self.error: str | None = None  # the harness failed (timeout, S3 read): not the product's answer

    @property
    def ok(self) -> bool:
        return self.proc is not None and self.proc.returncode == 0 and self.manifest is not None

    def stderr_tail(self, lines: int = 4) -> str:
        text = self.proc.stderr.decode(errors="replace").strip() if self.proc else ""
        return " | ".join(text.splitlines()[-lines:]) or "(no stderr)"


class Matrix:
    def __init__(self, data, s3, ray_env, root: Path):
        self.data, self.s3, self.ray_env, self.root = data, s3, ray_env, root
        self.pools = {kind: ThreadPoolExecutor(n) for kind, n in PARALLEL.items()}
        self.futures: dict[tuple[str, str, str, str], Future] = {}

    def out_of(self, key) -> str:
        transform, fmt, engine, store = key
        if store == "s3":
            return f"s3://{BUCKET}/{transform}/{fmt}/{engine}"
        return str(self.root / transform / fmt / engine)

    def run(self, key) -> Cell:
        cell = Cell(key)
        try:
            self._run(cell)
        except Exception as e:  # noqa: BLE001 - reported against the cell
            cell.error = f"{type(e).__name__}: {e}"
        return cell

    def _run(self, cell: Cell) -> None:
        key = cell.key
        transform, fmt, engine, store = key
        extra = [a.format(eval=self.data["eval"]) for a in TRANSFORMS[transform]]
        out = self.out_of(key)
        cell.args = ["split", str(self.data["a"]), str(self.data["b"]), "-o", out, *CUT, "--format", fmt,
                     *extra, *ENGINES[engine], "--json"]
        env = {}
        staging = self.s3["staging"] / transform / fmt / engine
        if store == "s3":
            env.update(self.s3["env"], SHARDKIT_STAGING=str(staging))
        if engine == "ray":
            env.update(self.ray_env)
        t0 = time.monotonic()
        cell.proc = run_cli(*cell.args, env=env)
        cell.seconds = time.monotonic() - t0
        cell.files = self._read_out(key)
        if store == "s3" and staging.exists():
            cell.staging_left = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        if cell.proc.returncode == 0 and "manifest.json" in cell.files:
            cell.manifest = orjson.loads(cell.files["manifest.json"])

    def _read_out(self, key) -> dict[str, bytes]:
        out = self.out_of(key)
        if key[3] == "s3":
            fs = self.s3["fs"]
            prefix = out[len("s3://"):]
            fs.invalidate_cache()
            return {p[len(prefix) + 1:]: fs.cat_file(p) for p in fs.find(prefix)}
        base = Path(out)
        if not base.exists():
            return {}
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def exists(self, key) -> bool:
        if key[3] == "s3":
            fs = self.s3["fs"]
            fs.invalidate_cache()
            return bool(fs.find(self.out_of(key)[len("s3://"):]))
        return Path(self.out_of(key)).exists()

    def start(self, keys) -> None:
        """Submit cells (S3 first: slower); each runs once per module."""
        for key in sorted(keys, key=lambda k: (k[3] != "s3", k[2] == "none")):
            if key not in self.futures:
                self.futures[key] = self.pools["ray" if key[2] == "ray" else "other"].submit(self.run, key)

    def cell(self, key) -> Cell:
        self.start([key])
        return self.futures[key].result()

    def group(self, transform: str, fmt: str) -> dict[tuple[str, str], Cell]:
        keys = [(transform, fmt, e, s) for e in ENGINES for s in STORES]
        self.start(keys)
        return {(k[2], k[3]): self.cell(k) for k in keys}

    def reference(self, transform: str, fmt: str) -> Cell:
        return self.cell((transform, fmt, *REFERENCE))


@pytest.fixture(scope="module")
def matrix(request, data, s3, ray_head, tmp_path_factory):
    """Every cell the selected tests need starts at once (the pool keeps the 2 cores busy)."""
    m = Matrix(data, s3, ray_head, tmp_path_factory.mktemp("matrix-out"))
    keys = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is request.module and "transform" in params:
            t, f = params["transform"], params["fmt"]
            keys += [(t, f, e, s) for e in ENGINES for s in STORES]
            if f == "parquet":
                keys.append((t, "jsonl", *REFERENCE))
    m.start(keys)
    try:
        yield m
    finally:
        for pool in m.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- checks


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def side_entries(m: dict) -> dict[str, dict]:
    """The side files a manifest lists (rejects, duplicates, excluded, and any other {path, sha256})."""
    return {k: v for k, v in m.items() if isinstance(v, dict) and "path" in v and "sha256" in v}


def listed_files(m: dict) -> list[dict]:
    return list(m["files"]) + list(side_entries(m).values())


def norm_paths(value):
    """Input paths in a manifest are relative to a local OUT, absolute for an s3:// one: keep the name."""
    if isinstance(value, dict):
        return {k: norm_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [norm_paths(v) for v in value]
    if isinstance(value, str) and "/" in value and os.path.basename(value) in INPUT_NAMES:
        return f"<input {os.path.basename(value)}>"
    return value


def comparable(m: dict) -> dict:
    return norm_paths({k: v for k, v in m.items() if k != "created_at"})


def check_cell(cell: Cell) -> list[str]:
    """Everything one successful cell must hold on its own."""
    m, problems = cell.manifest, []
    if not m.get("complete"):
        problems.append("manifest says complete=false")
    # the summary on stdout is one JSON document with the manifest's counts
    try:
        summary = orjson.loads(cell.proc.stdout)
        if summary.get("counts") != m.get("counts"):
            problems.append(f"--json summary counts {summary.get('counts')} != manifest counts {m.get('counts')}")
    except orjson.JSONDecodeError as e:
        problems.append(f"--json stdout is not one JSON document ({e}): {cell.proc.stdout[:200]!r}")
    # conservation: read = every category a line can end in (written = train + validation is a breakdown)
    counts = dict(m.get("counts") or {})
    read = counts.pop("read", None)
    if read is None:
        problems.append(f"counts has no 'read': {m.get('counts')}")
    else:
        if "train" in counts or "validation" in counts:
            train, validation = counts.pop("train", 0), counts.pop("validation", 0)
            if train + validation != counts.get("written"):
                problems.append(f"train {train} + validation {validation} != written {counts.get('written')}")
        if read != sum(counts.values()):
            problems.append(f"conservation: read {read} != {' + '.join(f'{k} {v}' for k, v in counts.items())} "
                            f"= {sum(counts.values())}")
    if sum(f["records"] for f in m["files"]) != m["counts"].get("written"):
        problems.append(f"shards hold {sum(f['records'] for f in m['files'])} records, counts.written is "
                        f"{m['counts'].get('written')}")
    for name, entry in side_entries(m).items():
        if name in m["counts"] and entry.get("records") != m["counts"][name]:
            problems.append(f"{name} file lists {entry.get('records')} records, counts.{name} is {m['counts'][name]}")
    # per-source counts add up to the totals, and each source conserves its own records
    for k in ("blank", "rejected", "duplicates", "excluded", "train", "validation"):
        if k in m["counts"] and all(k in s for s in m["sources"]):
            if sum(s[k] for s in m["sources"]) != m["counts"][k]:
                problems.append(f"sources' {k} add up to {sum(s[k] for s in m['sources'])}, counts.{k} is {m['counts'][k]}")
    if read is not None and sum(s.get("records", 0) + s.get("blank", 0) for s in m["sources"]) != read:
        problems.append(f"sources' records + blank != counts.read {read}: {[(s.get('records'), s.get('blank')) for s in m['sources']]}")
    for s in m["sources"]:
        if "train" in s:
            written = s["train"] + s.get("validation", 0)
        else:  # one input's records are in the shards that name it
            written = sum(f["records"] for f in m["files"] if f.get("source") == s["path"])
        set_aside = sum(s.get(k, 0) for k in ("rejected", "duplicates", "excluded"))
        if s.get("records") != written + set_aside:
            problems.append(f"source {os.path.basename(s['path'])}: records {s.get('records')} != written {written} "
                            f"+ set aside {set_aside}")
    # every listed file is there with its sha256, and nothing else is
    for f in listed_files(m):
        body = cell.files.get(f["path"])
        if body is None:
            problems.append(f"{f['path']}: listed, not in OUT")
        elif sha(body) != f["sha256"] or len(body) != f.get("bytes", len(body)):
            problems.append(f"{f['path']}: sha256/bytes differ from the manifest")
    expected = {f["path"] for f in listed_files(m)} | {"manifest.json", "SHA256SUMS"}
    stray = sorted(set(cell.files) - expected)
    if stray:
        problems.append(f"files in OUT the manifest does not list: {stray[:8]}")
    if cell.staging_left:
        problems.append(f"staging folder not cleaned: {cell.staging_left[:5]}")
    return problems


def check_refused(matrix: Matrix, cell: Cell, reason: str) -> list[str]:
    problems = []
    err = cell.proc.stderr.decode(errors="replace")
    if cell.proc.returncode != 2:
        problems.append(f"expected a refusal (exit 2), got exit {cell.proc.returncode}: {cell.stderr_tail()}")
    elif reason not in err:
        problems.append(f"refused, but stderr lacks {reason!r}: {cell.stderr_tail()}")
    if matrix.exists(cell.key):
        problems.append(f"refused, but OUT was created: {sorted(cell.files)[:5]}")
    return problems


def differences(ref: Cell, cell: Cell) -> list[str]:
    """What differs between two successful cells that must be byte-identical."""
    a, b = ref.manifest, cell.manifest
    problems = []
    fa = [(f["path"], f["sha256"], f["records"], f.get("split")) for f in a["files"]]
    fb = [(f["path"], f["sha256"], f["records"], f.get("split")) for f in b["files"]]
    if fa != fb:
        la, lb = {x[0] for x in fa}, {x[0] for x in fb}
        if la != lb:
            problems.append(f"shard names differ: only in {ref.name}: {sorted(la - lb)[:4]}, here: {sorted(lb - la)[:4]}")
        else:
            diff = [x[0] for x, y in zip(fa, fb, strict=True) if x != y]
            problems.append(f"shards differ from {ref.name}: {diff[:6]}{' ...' if len(diff) > 6 else ''}")
    sa = {k: (v["path"], v["sha256"]) for k, v in side_entries(a).items()}
    sb = {k: (v["path"], v["sha256"]) for k, v in side_entries(b).items()}
    if sa != sb:
        problems.append(f"side files differ from {ref.name}: {sorted(set(sa.items()) ^ set(sb.items()))}")
    if ref.files.get("SHA256SUMS") != cell.files.get("SHA256SUMS"):
        problems.append(f"SHA256SUMS differs from {ref.name}")
    ca, cb = comparable(a), comparable(b)
    if ca != cb:
        keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        detail = "; ".join(f"{k}: {_short(ca.get(k))} vs {_short(cb.get(k))}" for k in keys[:4])
        problems.append(f"manifest differs from {ref.name} in {keys}: {detail}")
    return problems


def _short(v, n: int = 160) -> str:
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "..."


# ---------------------------------------------------------------- Parquet rows


def drop_nulls(v):
    if isinstance(v, dict):
        return {k: drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [drop_nulls(x) for x in v]
    return v


def restore_json(v, path: list):
    """Decode a field stored as JSON text (path: keys, None for a list item; from shardkit.json_paths)."""
    if v is None:
        return None
    if not path:
        return orjson.loads(v)
    head, rest = path[0], path[1:]
    if head is None:
        return [restore_json(x, rest) for x in v] if isinstance(v, list) else v
    if isinstance(v, dict) and head in v:
        return {**v, head: restore_json(v[head], rest)}
    return v


def parquet_rows(body: bytes) -> list[dict]:
    table = pq.read_table(io.BytesIO(body))
    meta = table.schema.metadata or {}
    paths = json.loads(meta.get(b"shardkit.json_paths", b"[]"))
    rows = table.to_pylist()
    for p in paths:
        rows = [restore_json(r, p) for r in rows]
    return rows


def compare_parquet(pq_cell: Cell, jsonl_cell: Cell) -> list[str]:
    """Every Parquet shard holds, row for row, the records of the JSONL run's shard in the same place."""
    a, b = jsonl_cell.manifest, pq_cell.manifest
    problems = []
    if [(f["records"], f.get("split")) for f in a["files"]] != [(f["records"], f.get("split")) for f in b["files"]]:
        problems.append(f"shard records/splits differ from {jsonl_cell.name}: "
                        f"{[f['records'] for f in a['files']]} vs {[f['records'] for f in b['files']]}")
        return problems
    for fj, fp in zip(a["files"], b["files"], strict=True):
        if fp.get("format", "parquet") != "parquet":
            problems.append(f"{fp['path']}: format {fp.get('format')!r}")
        want = [drop_nulls(orjson.loads(x)) for x in jsonl_cell.files[fj["path"]].splitlines() if x.strip()]
        try:
            got = [drop_nulls(r) for r in parquet_rows(pq_cell.files[fp["path"]])]
        except Exception as e:  # noqa: BLE001 - say which shard
            problems.append(f"{fp['path']}: pyarrow cannot read it: {e}")
            continue
        if got != want:
            bad = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y), min(len(want), len(got)))
            problems.append(f"{fp['path']} row {bad} != {fj['path']} of {jsonl_cell.name}: "
                            f"{_short(got[bad] if bad < len(got) else None)} vs {_short(want[bad] if bad < len(want) else None)}")
    for name, entry in side_entries(a).items():
        other = side_entries(b).get(name)
        if other is None or other["sha256"] != entry["sha256"]:
            problems.append(f"side file {name} differs from {jsonl_cell.name}'s (they hold the original bytes)")
    return problems


# ---------------------------------------------------------------- what each transform must have done


def transform_effect(transform: str, m: dict) -> list[str]:
    """A flag silently ignored would still conserve and agree across cells: check it did something."""
    c, problems = m["counts"], []
    opts = TRANSFORMS[transform]
    if "--dedup" in opts and not c.get("duplicates"):
        problems.append(f"--dedup set nothing aside: {c}")
    if "--exclude" in opts and not c.get("excluded"):
        problems.append(f"--exclude set nothing aside: {c}")
    if "--holdout" in opts and not c.get("validation"):
        problems.append(f"--holdout made no validation split: {c}")
    if "--validate" in opts and not c.get("rejected"):
        problems.append(f"--validate rejected nothing: {c}")
    if "--to" in opts and not c.get("rejected"):
        problems.append(f"--to chat rejected nothing (a record with no messages cannot be converted): {c}")
    if "--shuffle" in opts and not all(f["path"].startswith("part-") for f in m["files"]):
        problems.append(f"--shuffle shards are named part-NNNNN: {[f['path'] for f in m['files']][:3]}")
    if c.get("blank") != 2:
        problems.append(f"the inputs hold 2 blank lines, counts.blank is {c.get('blank')}")
    return problems


# ---------------------------------------------------------------- the test


def guarded(cell: Cell, check, *args) -> list[str]:
    """A check's problems, each naming the cell; a manifest of an unexpected shape is one more problem."""
    try:
        found = check(*args)
    except Exception as e:  # noqa: BLE001 - say which cell and check
        found = [f"{check.__name__} raised {type(e).__name__}: {e} (manifest of an unexpected shape?)"]
    return [f"[{cell.name}] {p}" for p in found]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_split_matrix(matrix: Matrix, transform: str, fmt: str):
    cells = matrix.group(transform, fmt)
    problems: list[str] = []
    good: dict[tuple[str, str], Cell] = {}
    for (engine, store), cell in cells.items():
        if cell.error is not None:
            problems.append(f"[{cell.name}] could not run or read back: {cell.error}")
            continue
        refused = REFUSED.get(cell.key)
        if refused is not None:
            problems += [f"[{cell.name}] {p}" for p in check_refused(matrix, cell, refused)]
            continue
        if cell.proc.returncode != 0:
            problems.append(f"[{cell.name}] exit {cell.proc.returncode} ({cell.seconds:.1f} s): {cell.stderr_tail()}")
            continue
        if cell.manifest is None:
            problems.append(f"[{cell.name}] exit 0 but no manifest.json in OUT (has {sorted(cell.files)[:5]})")
            continue
        good[(engine, store)] = cell
        problems += guarded(cell, check_cell, cell) + guarded(cell, transform_effect, transform, cell.manifest)
    if good:
        ref = good.get(REFERENCE) or next(iter(good.values()))
        for cell in good.values():
            if cell is not ref:
                problems += guarded(cell, differences, ref, cell)
        if fmt == "parquet":
            jsonl = matrix.reference(transform, "jsonl")
            if jsonl.error is not None:
                problems.append(f"[{jsonl.name}] could not run or read back: {jsonl.error}")
            elif jsonl.ok:
                for cell in good.values():
                    problems += guarded(cell, compare_parquet, cell, jsonl)
            else:
                problems.append(f"[{transform}/parquet] no JSONL run to compare the rows with: "
                                f"[{jsonl.name}] exit {jsonl.proc.returncode}: {jsonl.stderr_tail()}")
    if problems:
        pytest.fail(f"{len(problems)} problem(s) in {transform}/{fmt}:\n  " + "\n  ".join(problems), pytrace=False)
