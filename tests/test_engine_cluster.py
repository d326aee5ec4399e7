"""--engine ray against a running Ray cluster, as on a real one: `ray start --head`, then the
CLI connects through RAY_ADDRESS. The workers run in their own folders, so relative input
and output paths must still work. (Own module: `ray stop` ends every Ray runtime here.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from test_engine import _inputs, _same_run

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture
def ray_head(tmp_path_factory):
    pytest.importorskip("ray", reason="the ray extra (make test installs it)")
    cwd = tmp_path_factory.mktemp("ray-head")
    out = subprocess.run([str(RAY), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
                          "--disable-usage-stats"], capture_output=True, text=True, cwd=cwd, timeout=180)
    assert out.returncode == 0, out.stderr
    m = re.search(r"--address='([^']+)'", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    try:
        yield {"RAY_ADDRESS": m.group(1), "RAY_AUTH_MODE": "token"}
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=180)


def test_engine_ray_on_a_running_cluster_with_relative_paths(tmp_path: Path, ray_head):
    inputs = [os.path.relpath(p, tmp_path) for p in _inputs(tmp_path)]
    args = ["-n", "100", "--validate", "chat"]
    r = run_cli("split", *inputs, "-o", "ray", *args, "--engine", "ray", "-j", "2", env=ray_head, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r1 = run_cli("split", *inputs, "-o", "one", *args, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    _same_run(tmp_path / "one", tmp_path / "ray")
