"""torchrun with two CPU processes (gloo): both train, only rank 0 publishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.helpers import version_dirs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    repo = tmp_path / "repo"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "trainer", "--device", "cpu", "--epochs", "2", "--max-train-samples", "300",
        "--model-repository", str(repo), "--runs-dir", str(tmp_path / "runs"), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("published cnn version 1") == 1  # rank 1 does not publish
    assert version_dirs(repo) == {"torchscript": ["1"], "tensorflow": ["1"], "staging": []}
    m = json.loads((repo / "torchscript/cnn/1/manifest.json").read_text())
    assert m["training"]["world_size"] == 2 and m["parity"]["max_abs_diff"] <= 1e-5
    assert m["dataset"]["split_sizes"]["train"] == 300
    assert len(list((tmp_path / "runs").rglob("events.out.tfevents.*"))) == 1  # only rank 0 logs
