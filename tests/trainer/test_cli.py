"""`python -m trainer` as a user runs it: end to end on a tiny budget, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.helpers import assert_manifest_hashes, assert_saved_model_contract, version_dirs, write_npz

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    # A MODEL_REPOSITORY from the caller's shell must not leak in: tests name their repository.
    full_env = {k: v for k, v in os.environ.items() if k != "MODEL_REPOSITORY"}
    full_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_the_options():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--preset", "--data", "--model-repository", "--version", "--runs-dir", "--device", "--epochs"):
        assert flag in r.stdout
    assert "torchrun" in r.stdout


def test_end_to_end_on_mnist_npz(tmp_path):
    data = write_npz(tmp_path / "mnist.npz", n_train=300, n_test=100)
    repo, runs = tmp_path / "repo", tmp_path / "runs"
    r = run_cli(
        "--data", str(data), "--epochs", "2", "--model-repository", str(repo), "--runs-dir", str(runs),
        "--no-progress", "--seed", "3", "--threads", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "published cnn version 1" in r.stdout
    assert "epoch 2:" in r.stderr  # per-epoch summary lines
    assert version_dirs(repo) == {"torchscript": ["1"], "tensorflow": ["1"], "staging": []}
    for tree in ("torchscript", "tensorflow"):
        m = assert_manifest_hashes(repo / tree / "cnn/1")
        assert m["dataset"]["name"] == "mnist" and m["dataset"]["split_sizes"] == {"train": 270, "val": 30, "test": 100}
        assert (
            m["config"]["seed"] == 3
            and m["config"]["epochs"] == 2
            and m["config"]["threads"] == 1
            and m["parity"]["max_abs_diff"] <= 1e-5
        )
        with np.load(repo / tree / "cnn/1/golden.npz") as g:
            assert g["images"].shape == (100, 28, 28, 1)  # N = min(256, test size)
    assert_saved_model_contract(repo / "tensorflow/cnn/1")
    events = list(runs.rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].parent.name.endswith("-small-v1")
    assert m["training"]["tensorboard_run"] == str(events[0].parent)


def _assert_one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_data", "data path not found"),
        ("malformed_data", "cannot read"),
        ("malformed_idx", "malformed IDX file"),
        ("unknown_preset", "unknown preset 'huge'"),
        ("unwritable_repo", "is not writable"),
        ("existing_version", "version 3 already exists"),
        ("bad_number", "invalid int value"),
        ("bad_epochs", "epochs must be >= 1"),
        ("cuda_missing", "no CUDA device is available"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case, needle):
    repo = tmp_path / "repo"
    args = ["--model-repository", str(repo), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    env = None
    if case == "missing_data":
        args += ["--data", str(tmp_path / "nope.npz")]
    elif case == "malformed_data":
        (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
        args += ["--data", str(tmp_path / "mnist.npz")]
    elif case == "malformed_idx":
        d = tmp_path / "idx"
        d.mkdir()
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
            (d / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # 3 bytes for 5 labels
        args += ["--data", str(d)]
    elif case == "unknown_preset":
        args += ["--preset", "huge"]
    elif case == "unwritable_repo":
        (tmp_path / "afile").write_text("x")
        repo = tmp_path / "afile" / "repo"
        args[1] = str(repo)
    elif case == "existing_version":
        (repo / "tensorflow/cnn/3").mkdir(parents=True)
        args = [*args[2:], "--version", "3"]
        env = {"MODEL_REPOSITORY": str(repo)}  # the env default is honoured
    elif case == "bad_number":
        args += ["--epochs", "many"]
    elif case == "bad_epochs":
        args += ["--epochs", "0"]
    elif case == "cuda_missing":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        args += ["--device", "cuda"]
    r = run_cli(*args, env=env)
    _assert_one_line_error(r, needle)
    if repo.is_dir():
        expected = ["3"] if case == "existing_version" else []
        assert version_dirs(repo) == {"torchscript": [], "tensorflow": expected, "staging": []}
    assert not list((tmp_path / "runs").rglob("events.*")) if (tmp_path / "runs").exists() else True
