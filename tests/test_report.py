"""`shardkit report` and `split --report` (issue 22.1, 22.2): one self-contained HTML page whose
numbers equal `stats --json`, checked in a real browser (Debian's chromium, driven by
playwright; .ci/run installs it): no console error, every plot drawn with data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import orjson
import pytest
from conftest import run_cli

pytest.importorskip("plotly")

ROOT = Path(__file__).resolve().parent.parent


def u(t):
    return {"role": "user", "content": t}


def a(t):
    return {"role": "assistant", "content": t}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Chat records of varied length and turns, alpaca records, exact duplicates and
    invalid ones (a bad role, not JSON), so every plot has something to show."""
    folder = tmp_path_factory.mktemp("report")
    lines = []
    for i in range(120):
        turns = 1 + i % 4
        messages = []
        for t in range(turns):
            messages += [u(f"Question {i}.{t} about shards " + "word " * (i % 17)), a("Answer " + "text " * (5 + 7 * (i % 11)))]
        lines.append(orjson.dumps({"messages": messages}))
    lines += [orjson.dumps({"instruction": f"Translate {i}", "input": "", "output": "Done " * i}) for i in range(1, 30)]
    lines += lines[:7]  # exact duplicates
    lines += [orjson.dumps({"messages": [u("hi"), {"role": "bot", "content": "x"}]})] * 3 + [b"{not json"]
    path = folder / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def stats_json(path: Path, *extra: str) -> dict:
    proc = run_cli("stats", str(path), "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def expected_numbers(stats: dict) -> dict[str, object]:
    t = stats["total"]
    out = {"records": t["records"], "bytes": t["bytes"], "blank_lines": t["blank_lines"],
           "invalid_lines": t["invalid"]["count"], "duplicates": t["duplicates"]["records"]}
    out.update({f"kind:{k}": n for k, n in t["kinds"].items()})
    out.update({f"chars:{k}": t["chars"][k] for k in ("p50", "p95", "max")})
    if t.get("tokens"):
        out.update({f"tokens:{k}": t["tokens"][k] for k in ("p50", "p95", "max", "total")})
    return out


def shown_numbers(html: str) -> dict[str, object]:
    import re

    return {m[0]: json.loads(m[1].replace("&quot;", '"')) for m in re.findall(r'data-stat="([^"]+)" data-value="([^"]+)"', html)}


def test_report_numbers_equal_stats_json(data, tmp_path):
    out = tmp_path / "report.html"
    proc = run_cli("report", str(data), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    shown = shown_numbers(html)
    for key, value in expected_numbers(stats_json(data)).items():
        assert shown[key] == value, key
    assert (shown["valid"], shown["invalid"]) == (156, 4)  # 120 + 29 + 7 valid; 3 bad roles, 1 not JSON
    for plot in ("chars", "turns", "rejects", "duplicates"):
        assert f'data-plot="{plot}"' in html
    import re

    assert not re.search(r'<(script|link|img|iframe)\b[^>]*\b(src|href)=', html)  # nothing loaded from anywhere: self-contained
    doc = json.loads(proc.stdout)
    assert doc["command"] == "report" and doc["stats"]["total"]["records"] == shown["records"]


def test_split_report_shows_the_run(data, tmp_path):
    out, page = tmp_path / "shards", tmp_path / "run.html"
    proc = run_cli("split", str(data), "-o", str(out), "-n", "50", "--validate", "auto", "--holdout", "0.1",
                   "--dedup", "exact", "--report", str(page))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    shown = shown_numbers(page.read_text())
    for key in ("written", "train", "validation", "rejected", "duplicates"):
        assert shown[f"run:{key}"] == m["counts"][key]
    assert 'data-plot="holdout"' in page.read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_in_a_real_browser(data, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install playwright)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    from chatmodel import make_model
    from playwright.sync_api import sync_playwright

    model = make_model(tmp_path / "model")
    page_path = tmp_path / "report.html"
    out = tmp_path / "shards"
    proc = run_cli("split", str(data), "-o", str(out), "-n", "50", "--validate", "auto", "--holdout", "0.1", "--report", str(page_path))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("report", data.name, "-o", str(page_path), "--tokenizer", str(model), cwd=data.parent)
    assert proc.returncode == 0, proc.stderr
    expected = expected_numbers(stats_json(data, "--tokenizer", str(model)))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            page.wait_for_selector(".chart .main-svg", timeout=30_000)
            charts = page.eval_on_selector_all(
                ".chart", "els => els.map(e => [e.dataset.plot, e.querySelectorAll('.main-svg').length, "
                          "e.querySelectorAll('.bars path').length])")
            numbers = dict(page.eval_on_selector_all("[data-stat]", "els => els.map(e => [e.dataset.stat, JSON.parse(e.dataset.value)])"))
            shot = Path(os.environ.get("SHARDKIT_SCREENSHOT", ROOT / "build" / "report.png"))
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert {c[0] for c in charts} >= {"chars", "tokens", "turns", "rejects", "duplicates"}
    assert all(svgs >= 1 and bars >= 1 for _, svgs, bars in charts), charts  # every plot drawn, with data
    for key, value in expected.items():
        assert numbers[key] == value, key
    assert shot.stat().st_size > 10_000
