"""The three servers' command lines: configured by environment variables only, `--help` lists them and
exits 0 without serving anything; any other argument is refused by name with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVERS = [
    ("gateway", "GATEWAY_PORT"),
    ("tf_serving.compat", "TF_SERVING_REST_PORT"),
    ("torch_service", "MODEL_REPOSITORY"),
]


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    # A port nobody could bind: if the server started anyway, it would fail differently (exit 3, "address").
    env = {**os.environ, "GATEWAY_PORT": "1", "TF_SERVING_REST_PORT": "1", "TORCH_SERVICE_PORT": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(("module", "variable"), SERVERS)
def test_help_lists_the_environment_and_serves_nothing(module: str, variable: str) -> None:
    for flag in ("--help", "-h"):
        proc = _run(module, flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: python -m {module}") and variable in proc.stdout
        assert "Started server" not in proc.stderr and "Uvicorn running" not in proc.stderr


@pytest.mark.parametrize(("module", "variable"), SERVERS)
def test_an_unknown_argument_is_refused_by_name(module: str, variable: str) -> None:
    proc = _run(module, "--bogus", "x")
    assert proc.returncode == 2
    assert "unrecognized arguments: --bogus x" in proc.stderr and variable in proc.stderr
