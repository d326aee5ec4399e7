"""`shardkit report`: one self-contained HTML page to look at before training.

The numbers are `stats`'s (`compute_stats`, with the extras: histograms per kind, turns, the
longest records), the reject reasons `validate`'s, a seeded sample `sample`'s, and with
`split --report` the run's manifest (rejected, duplicates, holdout sizes). Plots are made
by plotly with its JavaScript inlined: the file opens with no network. Every number the page
shows carries ``data-stat``/``data-value`` attributes, so a test (or a person) can check it
against ``shardkit stats --json``.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shardkit.core.errors import UsageError
from shardkit.core.io import atomic_write, format_size

__all__ = ["build_report", "render_html", "write_report"]


def build_report(
    inputs: Sequence[str],
    *,
    tokenizer: str | None = None,
    kind: str = "auto",
    sample: int = 8,
    seed: int = 0,
    manifest: dict | None = None,
    validation: Any = None,
    progress=None,
) -> dict:
    """Everything the page shows, as data (the CLI's --json gives it too)."""
    from shardkit.pipeline.peek import sample as draw_sample
    from shardkit.pipeline.scan import validate_files
    from shardkit.pipeline.stats import compute_stats

    if sample < 0:
        raise UsageError(f"--sample must be 0 or more (got {sample})")
    stats = compute_stats(list(inputs), tokenizer_path=tokenizer, examples=10, extras=True, progress=progress)
    if validation is None:
        validation = validate_files(list(inputs), kind=kind, max_errors=2**62, examples=3).report
    records = draw_sample(list(inputs), sample, seed) if sample else []
    return {
        "inputs": list(inputs),
        "stats": stats,
        "validation": validation.to_dict(),
        "sample": [{"file": p.source, "line": p.line, "text": _preview(p.raw)} for p in records],
        "run": _run_counts(manifest) if manifest is not None else None,
    }


def _preview(raw: bytes, limit: int = 240) -> str:
    from shardkit.records.tokens import record_text
    from shardkit.records.validate import detect_kind

    try:
        obj = json.loads(raw)
        text = record_text(obj, detect_kind(obj)) or raw.decode("utf-8", "replace")
    except ValueError:
        text = raw.decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_counts(m: dict) -> dict:
    c = m.get("counts", {})
    return {k: c.get(k) for k in ("read", "written", "train", "validation", "rejected", "duplicates", "excluded", "blank")}


# ------------------------------------------------------------------ HTML


def render_html(data: dict, title: str = "shardkit report") -> str:
    try:
        import plotly.graph_objects as go
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise UsageError("shardkit report needs plotly: pip install 'shardkit[report]'") from None
    stats, total = data["stats"], data["stats"]["total"]
    extras = stats.get("extras", {})
    figures: list[tuple[str, str, Any]] = []

    def bars(name: str, heading: str, traces: list[tuple[str, list, list]], xtitle: str, ytitle: str = "records") -> None:
        fig = go.Figure([go.Bar(name=label, x=x, y=y) for label, x, y in traces])
        fig.update_layout(barmode="group", height=360, margin={"l": 50, "r": 20, "t": 30, "b": 60},
                          xaxis_title=xtitle, yaxis_title=ytitle, legend={"orientation": "h"})
        figures.append((name, heading, fig))

    def bins(hist: list) -> tuple[list, list]:
        return [f"{lo:,}–{hi - 1:,}" for lo, hi, _ in hist], [n for _, _, n in hist]

    by_kind = extras.get("by_kind", {})
    if by_kind:
        bars("chars", "Characters per record, by kind", [(k, *bins(v["chars_histogram"])) for k, v in by_kind.items()], "characters")
        if any("tokens_histogram" in v for v in by_kind.values()):
            bars("tokens", "Tokens per record, by kind" + (" (after the chat template)" if stats.get("chat_template") else ""),
                 [(k, *bins(v["tokens_histogram"])) for k, v in by_kind.items() if "tokens_histogram" in v], "tokens")
    if extras.get("turns"):
        bars("turns", "Turns per conversation", [("records", [t for t, _ in extras["turns"]], [n for _, n in extras["turns"]])], "user → assistant turns")
    errors = [i for i in data["validation"]["issues"] if i["severity"] == "error"]
    if errors:
        bars("rejects", "Why records are invalid (records per reason)", [("records", [i["code"] for i in errors], [i["records"] for i in errors])], "reason")
    dup = total["duplicates"]
    bars("duplicates", "Exact duplicates", [("records", ["distinct", "repeat an earlier one"], [total["records"] - dup["records"], dup["records"]])], "")
    run = data.get("run")
    if run and run.get("validation"):
        bars("holdout", "Holdout sizes", [("records", ["train", "validation"], [run["train"], run["validation"]])], "split")

    plots = "\n".join(
        f'<section class="plot"><h2>{html.escape(heading)}</h2>'
        f'<div id="plot-{name}" class="chart" data-plot="{name}"></div>'
        f'<script>(function () {{ var fig = {_script_json(fig)}; Plotly.newPlot("plot-{name}", fig.data, fig.layout, '
        f'{{"displaylogo": false, "responsive": true}}); }})();</script></section>'
        for name, heading, fig in figures
    )
    return _PAGE.format(
        title=html.escape(title),
        plotly=get_plotlyjs(),
        inputs=html.escape(", ".join(data["inputs"])),
        summary=_summary(data),
        plots=plots,
        longest=_table(["record", "kind", "characters"],
                       [(f"{r['file']}:{r['line']}", r["kind"], f"{r['chars']:,}") for r in extras.get("longest", [])]),
        sample=_table(["record", "text"], [(f"{s['file']}:{s['line']}", s["text"]) for s in data["sample"]]),
        data=html.escape(json.dumps({"stats": total, "validation": data["validation"]["records"]}, sort_keys=True)),
    )


def _script_json(fig: Any) -> str:
    """A figure's JSON, safe inside a <script> element."""
    return fig.to_json().replace("</", "<\\/")


def _stat(name: str, label: str, value: Any, shown: str | None = None) -> str:
    text = shown if shown is not None else (f"{value:,}" if isinstance(value, int) else str(value))
    return (f'<div class="stat"><span class="label">{html.escape(label)}</span>'
            f'<span class="value" data-stat="{html.escape(name)}" data-value="{html.escape(json.dumps(value))}">{html.escape(text)}</span></div>')


def _summary(data: dict) -> str:
    t = data["stats"]["total"]
    v = data["validation"]
    out = [
        _stat("records", "records", t["records"]),
        _stat("bytes", "size", t["bytes"], format_size(t["bytes"])),
        _stat("blank_lines", "blank lines", t["blank_lines"]),
        _stat("invalid_lines", "lines that are not JSON objects", t["invalid"]["count"]),
        _stat("duplicates", "exact duplicates", t["duplicates"]["records"]),
        _stat("valid", "valid records", v["records"]["valid"]),
        _stat("invalid", "invalid records", v["records"]["invalid"]),
    ]
    for kind, n in t["kinds"].items():
        out.append(_stat(f"kind:{kind}", kind, n))
    for key in ("p50", "p95", "max"):
        if t.get("chars"):
            out.append(_stat(f"chars:{key}", f"characters {key}", t["chars"][key]))
    if t.get("tokens"):
        for key in ("p50", "p95", "max", "total"):
            out.append(_stat(f"tokens:{key}", f"tokens {key}", t["tokens"][key]))
    run = data.get("run")
    if run:
        for key in ("written", "train", "validation", "rejected", "duplicates", "excluded"):
            if run.get(key) is not None:
                out.append(_stat(f"run:{key}", f"run: {key}", run[key]))
    return "\n".join(out)


def _table(headers: list[str], rows: list[tuple]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(data: dict, path: str | os.PathLike, title: str = "shardkit report") -> Path:
    """The page, written atomically (a reader never sees half of it)."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target}: is a folder; give a file name such as {target}/report.html")
    atomic_write(target, render_html(data, title).encode())
    return target


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ font-size: 16px; margin: 18px 0 6px; }}
.inputs {{ color: #666; font-size: 13px; margin-bottom: 16px; word-break: break-all; }}
.stats {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.stat {{ border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 120px; }}
.stat .label {{ display: block; color: #666; font-size: 12px; }} .stat .value {{ font-size: 18px; font-weight: 600; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 12px; }}
table {{ border-collapse: collapse; font-size: 13px; width: 100%; }}
td, th {{ border-bottom: 1px solid #eee; padding: 4px 8px; text-align: left; vertical-align: top; }}
</style>
<script>{plotly}</script>
</head><body>
<h1>{title}</h1>
<div class="inputs">{inputs}</div>
<div class="stats">{summary}</div>
<div class="plots">{plots}</div>
<h2>Longest records</h2>{longest}
<h2>A sample</h2>{sample}
<script type="application/json" id="shardkit-data">{data}</script>
</body></html>
"""
