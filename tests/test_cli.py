"""CLI wiring: help text, exit codes, one-line errors, what startup imports."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from conftest import ROOT, run_cli

from shardkit import __version__
from shardkit.cli import app


def all_commands():
    group = typer.main.get_command(app)
    return [(name, cmd) for name, cmd in group.commands.items()]


def test_every_command_and_option_has_help():
    commands = all_commands()
    assert {"split", "manifest", "verify"} <= {name for name, _ in commands}
    for name, cmd in commands:
        assert cmd.help and len(cmd.help) > 20, name
        for param in cmd.params:
            if param.name in ("help",):
                continue
            assert getattr(param, "help", None), f"{name} {param.name} has no help"


@pytest.mark.parametrize("args", [["--help"], ["split", "--help"], ["manifest", "-h"], ["verify", "--help"]])
def test_help_runs(args):
    r = run_cli(*args)
    assert r.returncode == 0 and b"Usage:" in r.stdout


def test_version_both_entry_points():
    r = run_cli("--version")
    assert r.stdout.decode().strip() == f"shardkit {__version__}"
    exe = Path(sys.executable).with_name("shardkit")
    if exe.exists():
        assert subprocess.run([exe, "--version"], capture_output=True).stdout.decode().strip() == f"shardkit {__version__}"


def test_typer_only_in_cli():
    for path in (ROOT / "shardkit").glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if path.name != "cli.py":
            assert "typer" not in modules and "click" not in modules, path.name
            assert "tqdm" not in modules, path.name


HEAVY = {"pyarrow", "polars", "jsonschema", "fsspec", "tokenizers", "ray"}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["split", "--help"], ["queue", "--help"],
                                  ["queue", "status", "--help"], ["head", "--help"]])
def test_startup_imports_no_heavy_module(args):
    """Start-up stays fast as features grow: help and version import none of the heavy
    modules (a new eager import anywhere on these paths fails here)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "shardkit", *args], capture_output=True)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.decode().splitlines() if "|" in line}
    assert "typer" in imported  # the measurement works
    assert not imported & HEAVY, imported & HEAVY
    if args == ["--version"]:
        assert "rich" not in imported  # help panels may import rich; --version never


def test_split_on_plain_jsonl_does_not_import_pyarrow(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_bytes(b'{"a":1}\n')
    code = (
        "import sys, shardkit; shardkit.split([sys.argv[1]], sys.argv[2], shardkit.SplitOptions(max_records=1)); "
        "assert 'pyarrow' not in sys.modules and 'polars' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, src, tmp_path / "o"], check=True)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["split", "{tmp}/missing.jsonl", "-o", "{tmp}/o", "-n", "5"], 3, "shardkit: error: {tmp}/missing.jsonl: no such file"),
        (["split", "{tmp}", "-o", "{tmp}/o", "-n", "5"], 3, "shardkit: error: {tmp}: is a directory, expected a JSONL file"),
        (["split", "{tmp}/a.jsonl", "-o", "{tmp}/o"], 2, "shardkit: error: say how to cut: give --max-records N, --max-bytes SIZE or --num-shards N"),
        (["split", "{tmp}/a.jsonl", "-o", "{tmp}/o", "-n", "1", "--resume", "--overwrite"], 2, "shardkit: error: --resume and --overwrite cannot be used together"),
        (["split", "{tmp}/a.jsonl", "-o", "{tmp}/o", "-n", "1", "--oversize", "drop"], 2, "shardkit: error: --oversize must be one of own-shard, reject, error (got 'drop')"),
        (["split", "{tmp}/a.jsonl", "-o", "{tmp}/a.jsonl", "-n", "1"], 4, "shardkit: error: {tmp}/a.jsonl: exists and is not a directory"),
        (["split", "{tmp}/bad.gz", "-o", "{tmp}/o", "-n", "1"], 3, "shardkit: error: {tmp}/bad.gz: corrupt gzip data: "),
    ],
)
def test_errors_are_one_line_with_exit_code(tmp_path, args, code, message):
    (tmp_path / "a.jsonl").write_bytes(b'{"a":1}\n')
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    r = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(message.replace("{tmp}", str(tmp_path)))
    assert "Traceback" not in err


def test_bad_flag_values_exit_2(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"a":1}\n')
    r = run_cli("split", tmp_path / "a.jsonl", "-o", tmp_path / "o", "--max-bytes", "12QB")
    assert r.returncode == 2 and b"--max-bytes: invalid size '12QB'" in r.stderr
    r = run_cli("split", tmp_path / "a.jsonl", "-o", tmp_path / "o", "-b", "64")
    assert r.returncode == 2, r.stderr
    assert b"64 has no unit: did you mean 64MB? write 64B for bytes" in r.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is written
    r = run_cli("split", tmp_path / "a.jsonl", "-o", tmp_path / "o", "-b", "64B")
    assert r.returncode == 0, r.stderr
    r = run_cli("split", tmp_path / "a.jsonl", "-o", tmp_path / "o", "--max-records", "0")
    assert r.returncode == 2
    r = run_cli("split", tmp_path / "a.jsonl", "-o", tmp_path / "o", "--no-such-flag")
    assert r.returncode == 2
