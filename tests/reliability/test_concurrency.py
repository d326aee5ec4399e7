"""Concurrency (issue 24): 8 trainers claiming, 2 `queue ingest --watch` runs, and operator
loops of `queue prune --yes`, `queue requeue-stale --older-than 1s`, `queue doctor --repair`
and `queue retry --all`, all on one queue while the test drops files into the inbox, for
SHARDKIT_RACE_SECONDS (8 s in CI, 30 s in torture). Some drops are over max_records, so
ingest splits them while the trainers claim their shards; one claim in eight fails and is
retried (by its worker, or first by the operator's retry loop).

Then: no file was held by two workers at once (journal claim lines and worker logs agree),
every dropped record was completed exactly once (and is either still in
recently_completed/ or was pruned with a journal `delete` line naming its item), nothing is
left pending, no file got a second item record, and `queue doctor` is clean.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import torture as T

from shardkit.queue.state import PRIORITIES, Queue

WORKERS = 8
KEEP = 5
HERE = Path(__file__).resolve().parent


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def data_names(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()]


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    base = tmp_path_factory.mktemp("race")
    root = base / "q"
    Queue(root, create=True)
    (root / "shardkit.toml").write_text('settle = "0s"\nmax_records = 40\nkind = "chat"\nmax_attempts = 1000\n')
    logs = base / "logs"
    logs.mkdir()
    stop = base / "stop"
    env = T.clean_env()
    workers = [
        subprocess.Popen([sys.executable, str(HERE / "race_worker.py"), str(root), f"w{k}", str(logs / f"w{k}.jsonl"), str(stop), f"{T.SEED}-{k}"],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(logs / f"w{k}.err", "wb"), start_new_session=True)
        for k in range(WORKERS)
    ]
    ingesters = [
        subprocess.Popen([*T.SHARDKIT, "queue", "ingest", "--root", str(root), "--watch", "0.1"], env=env,
                         stdout=subprocess.DEVNULL, stderr=open(logs / f"ingest{k}.err", "wb"), start_new_session=True)
        for k in range(2)
    ]

    def loop(args: list, ok: tuple[int, ...] = (0,)):
        def once() -> str | None:
            r = T.run(args)
            return None if r.returncode in ok else r.describe()
        return once

    pruner = T.Stopwatch(loop(["queue", "prune", "--root", root, "--keep", str(KEEP), "--yes"]), pause=0.05).start()
    operators = {
        # a live claim is never stale (its owner runs): requeue-stale must leave every one alone
        "requeue-stale": T.Stopwatch(loop(["queue", "requeue-stale", "--root", root, "--older-than", "1s"]), pause=0.05),
        # findings may be transient mid-race (exit 1); a crash or a refusal (2, 3, 4) never is
        "doctor": T.Stopwatch(loop(["queue", "doctor", "--root", root, "--repair"], ok=(0, 1)), pause=0.05),
        "retry": T.Stopwatch(loop(["queue", "retry", "--all", "--root", root]), pause=0.05),
    }
    for op in operators.values():
        op.start()
    rng = random.Random(T.SEED)
    dropped: collections.Counter = collections.Counter()
    n = 0
    deadline = time.monotonic() + T.RACE_SECONDS
    while time.monotonic() < deadline:
        size = rng.choice([1, 5, 20, 40, 41, 95])  # 41 and 95: split on ingest
        lines = [T.chat_record(f"drop{n}", i) + b"\n" for i in range(size)]
        tmp = root / "inbox" / f".drop-{n:05d}.jsonl.tmp"
        tmp.write_bytes(b"".join(lines))
        os.rename(tmp, root / "inbox" / f"drop-{n:05d}.jsonl")  # a producer publishes whole files
        dropped.update(lines)
        n += 1
        time.sleep(rng.uniform(0, 0.12))
    problems = []
    try:
        wait_until(lambda: not data_names(root / "inbox") or all(i.poll() is not None for i in ingesters), 120,
                   "ingest to drain the inbox")
        for k, ingester in enumerate(ingesters):
            if ingester.poll() is not None:
                problems.append(f"queue ingest --watch exited early ({ingester.returncode}): "
                                f"{(logs / f'ingest{k}.err').read_text()[-1500:]}")
        time.sleep(0.5)  # the current passes end; then Ctrl-C (SIGINT) between passes
        for ingester in ingesters:
            ingester.send_signal(signal.SIGINT)
        for ingester in ingesters:
            ingester.wait(60)
        settle = T.run(["queue", "ingest", "--root", root])  # rolls forward a split Ctrl-C may have cut short
        if settle.returncode != 0:
            problems.append(f"final ingest: {settle.describe()}")
        stop.write_text("stop")
        wait_until(lambda: all(w.poll() is not None for w in workers), 120, "the workers to drain the queue")
    finally:
        pruner.stop()
        for op in operators.values():
            op.stop()
        for p in [*workers, *ingesters]:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {"root": root, "logs": logs, "dropped": dropped, "drops": n, "workers": workers, "pruner": pruner,
            "operators": operators, "problems": problems,
            "ingest_err": "".join((logs / f"ingest{k}.err").read_text() for k in range(len(ingesters)))}


def log_events(logs: Path) -> list[dict]:
    out = []
    for p in sorted(logs.glob("w*.jsonl")):
        out += [orjson.loads(line) for line in p.read_bytes().splitlines()]
    return sorted(out, key=lambda e: e["t"])


def test_race_ran_cleanly(race):
    assert not race["problems"], race["problems"]
    assert race["drops"] >= 20, f"only {race['drops']} drops in {T.RACE_SECONDS}s"
    for k, w in enumerate(race["workers"]):
        err = (race["logs"] / f"w{k}.err").read_text()
        assert w.returncode == 0, f"worker w{k} exited {w.returncode}: {err[-1500:]}"
    assert not race["pruner"].problems, race["pruner"].problems[:3]
    assert race["pruner"].rounds >= 3
    for name, op in race["operators"].items():
        assert not op.problems, f"{name}: {op.problems[:3]}"
        assert op.rounds >= 3, f"{name} ran only {op.rounds} time(s)"
    assert "Traceback" not in race["ingest_err"] and "internal error" not in race["ingest_err"], race["ingest_err"][-2000:]
    errors = [e for e in log_events(race["logs"]) if e["event"] == "error"]
    assert not errors, errors[:5]


def test_no_file_held_by_two_workers_at_once(race):
    """Per item id, claims alternate with fail/complete: never two claims in a row. The
    journal and the worker logs name the same claims."""
    journal = T.journal_lines(race["root"])
    claims = [e for e in journal if e.get("op") == "claim"]
    by_id: dict[str, list[str]] = collections.defaultdict(list)
    for e in journal:
        if e.get("op") in ("claim", "complete", "fail") and "id" in e:
            by_id[e["id"]].append(e["op"])
    doubled = {i: ops for i, ops in by_id.items() if any(a == b == "claim" for a, b in zip(ops, ops[1:], strict=False))}
    assert not doubled, f"claimed again while held: {list(doubled.items())[:5]}"
    logged = [(e["id"], e["worker"]) for e in log_events(race["logs"]) if e["event"] == "claim"]
    journaled = [(e["id"], e.get("worker")) for e in claims]
    assert collections.Counter(logged) == collections.Counter(journaled), "worker logs and journal disagree on who claimed what"
    tokens = [e["token"] for e in log_events(race["logs"]) if e["event"] == "claim"]
    assert len(tokens) == len(set(tokens))


def test_every_record_completed_exactly_once(race):
    events = log_events(race["logs"])
    held = {}
    done: collections.Counter = collections.Counter()
    for e in events:
        if e["event"] == "claim":
            held[(e["id"], e["worker"])] = e["lines"]
        elif e["event"] == "complete":
            done.update(line.encode() + b"\n" for line in held[(e["id"], e["worker"])])
    dropped = race["dropped"]
    lost, twice = dropped - done, done - dropped
    assert not lost and not twice, f"{sum(lost.values())} dropped records never completed, {sum(twice.values())} completed twice"


def test_nothing_left_behind(race):
    root = race["root"]
    for state in ["inbox", *PRIORITIES, "processing", "failed", "dead", "quarantine"]:
        folder = Queue(root).dir(state)
        assert not data_names(folder), f"{state}/ still holds {data_names(folder)[:5]}"
    assert len(data_names(Queue(root).dir("completed"))) <= KEEP


def test_no_file_gets_a_second_item_record(race):
    """Every file of the race was recorded by ingest (or by the split that published it):
    no claim or prune may adopt it as record-less. An `adopt` journal line means a process
    listed a state folder against a stale index of item records, and gave a file that
    already had a record a second one (the first then "says normal, but no such file")."""
    adopted = [e for e in T.journal_lines(race["root"]) if e.get("op") == "adopt"]
    assert not adopted, f"{len(adopted)} file(s) adopted during the race, e.g. {adopted[:3]}"


def test_prune_journals_the_item_it_deletes(race):
    """Each `delete` line names the id of a completed item, and that item is marked deleted;
    a completed item whose file is gone was pruned with such a line."""
    root = race["root"]
    journal = T.journal_lines(root)
    completed = {e["id"] for e in journal if e.get("op") == "complete"}
    deleted = [e for e in journal if e.get("op") == "delete"]
    assert deleted, "prune never deleted anything: the race did not exercise it"
    assert all(e.get("state") == "completed" for e in deleted)
    anonymous = [e["name"] for e in deleted if e.get("id") not in completed]
    assert not anonymous, f"{len(anonymous)} of {len(deleted)} delete lines name no completed item (id missing), e.g. {anonymous[:5]}"
    on_disk = set(data_names(Queue(root).dir("completed")))
    pruned_ids = {e["id"] for e in deleted}
    items = {i.id: i for i in Queue(root).items()}
    wrong = []
    for item_id in completed:
        item = items[item_id]
        if not ((item.state == "deleted" and item_id in pruned_ids) or (item.state == "completed" and item.name in on_disk)):
            wrong.append(f"{item.name}: state {item.state}, pruned {item_id in pruned_ids}, on disk {item.name in on_disk}")
    assert not wrong, f"{len(wrong)} completed item(s) whose record disagrees with the folder, e.g. {wrong[:5]}"


def test_requeue_stale_never_took_a_live_claim(race):
    """Every worker lived through the race, so no lease was ever stale: a `requeue` journal
    line means requeue-stale took a file from a live claim (issue 24.2)."""
    requeued = [e for e in T.journal_lines(race["root"]) if e.get("op") == "requeue"]
    assert not requeued, f"{len(requeued)} live claim(s) requeued, e.g. {requeued[:3]}"


def test_doctor_is_clean_after_the_race(race):
    r = T.run(["queue", "doctor", "--root", race["root"]])
    assert r.returncode == 0, r.stdout.decode() + r.err
