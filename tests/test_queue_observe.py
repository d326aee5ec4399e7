"""Watching the queue (issue 22.3, 22.4): Prometheus textfile metrics checked with
prometheus-client's own parser, `queue status --watch` (plain and on a terminal), and
`queue log` over the journal, rotated parts included."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from shardkit.queue.journal import Journal

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

GOOD = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'


def queue_with_files(tmp_path: Path) -> Path:
    root = tmp_path / "q"
    assert run_cli("queue", "init", "--root", root).returncode == 0
    old = time.time() - 3600
    for name, n in (("a.jsonl", 3), ("b.jsonl", 5), ("c.jsonl", 2)):
        p = root / "inbox" / name
        p.write_bytes(GOOD * n)
        os.utime(p, (old, old))
    assert run_cli("queue", "ingest", "--root", root).returncode == 0
    assert run_cli("queue", "claim", "--root", root, "-w", "w1").returncode == 0
    return root


def test_prometheus_textfile_parses_and_matches_status(tmp_path):
    root = queue_with_files(tmp_path)
    prom = tmp_path / "metrics" / "shardkit.prom"
    prom.parent.mkdir()
    proc = run_cli("queue", "status", "--root", root, "--prometheus", prom, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    # conventions: one prefix, base units in the name, gauges, help text on each
    assert set(families) == {f"shardkit_queue_{n}" for n in (
        "files", "records", "bytes", "oldest_age_seconds", "attempts", "stale_leases", "dead_letters",
        "disk_free_bytes", "journal_bytes", "problems")}
    assert all(f.type == "gauge" and f.documentation for f in families.values())

    def by_state(name: str) -> dict:
        return {s.labels["state"]: s.value for s in families[name].samples}

    for metric, field in (("files", "files"), ("records", "records"), ("bytes", "bytes"), ("attempts", "attempts")):
        assert by_state(f"shardkit_queue_{metric}") == {k: v[field] for k, v in status["states"].items()}
    assert sum(by_state("shardkit_queue_files").values()) == 3
    assert by_state("shardkit_queue_records")["processing"] + by_state("shardkit_queue_records")["normal"] == 10
    ages = by_state("shardkit_queue_oldest_age_seconds")
    assert set(ages) == {k for k, v in status["states"].items() if v["files"]} and all(a > 3000 for a in ages.values())
    assert families["shardkit_queue_stale_leases"].samples[0].value == 0
    assert [p.name for p in prom.parent.iterdir()] == ["shardkit.prom"]  # no temporary left beside it
    bad = run_cli("queue", "status", "--root", root, "--prometheus", prom.parent)
    assert bad.returncode == 2 and b"is a folder" in bad.stderr


def test_watch_repeats_until_interrupted_and_rewrites_metrics(tmp_path):
    root = queue_with_files(tmp_path)
    prom = tmp_path / "q.prom"
    proc = subprocess.Popen([sys.executable, "-m", "shardkit", "queue", "status", "--root", str(root), "--watch", "0.1",
                             "--prometheus", str(prom)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.0)
    first = prom.stat().st_mtime_ns
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.count(b"queue ") >= 3  # one report per refresh
    assert prom.stat().st_mtime_ns > first


def test_watch_on_a_terminal_draws_a_live_table(tmp_path):
    root = queue_with_files(tmp_path)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "shardkit", "queue", "status", "--root", str(root), "--watch", "0.2"],
                            stdout=follower, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"})
    os.close(follower)
    seen = b""
    deadline = time.time() + 15
    while time.time() < deadline and seen.count(b"processing") < 2:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                seen += os.read(leader, 65536)
            except OSError:
                break
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    os.close(leader)
    assert proc.returncode == 0
    assert b"attempts" in seen and b"processing" in seen and seen.count(b"processing") >= 2  # redrawn


def test_queue_log_reads_rotated_parts_and_filters(tmp_path):
    root = queue_with_files(tmp_path)
    journal = Journal(root / ".shardkit" / "journal.jsonl", max_bytes=1500)
    for i in range(60):
        journal.append("note", name=f"x{i % 3}.jsonl", to="normal", n=i)
    assert journal.rotated_files(), "the small journal rotated"
    everything = json.loads(run_cli("queue", "log", "--root", root, "--json").stdout)["entries"]
    assert [e["op"] for e in everything[:3]] == ["ingest", "ingest", "ingest"] and len(everything) == 3 + 1 + 60
    x1 = json.loads(run_cli("queue", "log", "--root", root, "--item", "x1.jsonl", "--json").stdout)["entries"]
    assert [e["n"] for e in x1] == list(range(1, 60, 3))
    last = json.loads(run_cli("queue", "log", "--root", root, "--limit", "2", "--json").stdout)["entries"]
    assert [e["n"] for e in last] == [58, 59]
    claimed = next(e for e in everything if e["op"] == "claim")
    mine = run_cli("queue", "log", "--root", root, "--item", claimed["name"]).stdout.decode()
    assert f"claim          {claimed['name']}  normal -> processing  worker=w1" in mine
    assert json.loads(run_cli("queue", "log", "--root", root, "--since", "2h", "--json").stdout)["entries"] == everything
    future = run_cli("queue", "log", "--root", root, "--since", "2999-01-01")
    assert future.returncode == 0 and b"no journal entries since 2999-01-01" in future.stdout
    bad = run_cli("queue", "log", "--root", root, "--since", "yesterday")
    assert bad.returncode == 2 and b"--since 'yesterday'" in bad.stderr


def test_watch_ends_cleanly_whenever_ctrl_c_comes(tmp_path):
    """Ctrl-C during a refresh (here: just after the metrics file is rewritten, while the
    report is printed), not only during the sleep between two: the watch ends with exit 0
    and leaves no temporary metrics file."""
    root = queue_with_files(tmp_path)
    for k in range(4):
        prom = tmp_path / f"m{k}" / "q.prom"
        prom.parent.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "shardkit", "queue", "status", "--root", str(root),
                                 "--watch", "0.05", "--prometheus", str(prom)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not prom.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        first = prom.stat().st_mtime_ns
        while prom.stat().st_mtime_ns == first and time.monotonic() < deadline:
            pass  # the next refresh has just written it
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert [p.name for p in prom.parent.iterdir()] == ["q.prom"]
