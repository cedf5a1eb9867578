"""Versioning, writability and the atomic two-tree publish (no training here)."""

from __future__ import annotations

import json
import os

import pytest

from tests.trainer.helpers import assert_manifest_hashes, version_dirs
from trainer import publish
from trainer.errors import TrainerError
from trainer.publish import (
    choose_version,
    commit_version,
    ensure_writable,
    existing_versions,
    staging_area,
    write_manifest,
)


def _staged(repo, files=("model.pt",)):
    """A staging dir with both trees' version dirs holding a file each."""
    cm = staging_area(repo)
    staging = cm.__enter__()
    for tree in ("torchscript", "tensorflow"):
        (staging / tree).mkdir()
        for f in files:
            (staging / tree / f).write_text(tree)
    return cm, staging


def test_versions_are_positive_integers_in_either_tree(tmp_path):
    assert existing_versions(tmp_path) == set() and choose_version(tmp_path, None) == 1
    (tmp_path / "torchscript/cnn/3").mkdir(parents=True)
    (tmp_path / "tensorflow/cnn/7").mkdir(parents=True)
    for ignored in ("0", "x", ".staging-abc", "12a"):
        (tmp_path / "tensorflow/cnn" / ignored).mkdir()
    assert existing_versions(tmp_path) == {3, 7}
    assert choose_version(tmp_path, None) == 8
    assert choose_version(tmp_path, 5) == 5
    for taken in (3, 7):
        with pytest.raises(TrainerError, match=f"version {taken} already exists"):
            choose_version(tmp_path, taken)
    with pytest.raises(TrainerError, match="positive integer"):
        choose_version(tmp_path, 0)


def test_ensure_writable_creates_and_rejects(tmp_path):
    ensure_writable(tmp_path / "a/b", "model repository")
    assert (tmp_path / "a/b").is_dir() and list((tmp_path / "a/b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainerError, match=r"model repository .* is not writable"):
        ensure_writable(tmp_path / "file" / "repo", "model repository")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only directory")
def test_ensure_writable_rejects_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(TrainerError, match="not writable"):
        ensure_writable(ro, "model repository")


def test_commit_moves_both_trees_and_cleans_staging(tmp_path):
    cm, staging = _staged(tmp_path)
    targets = commit_version(staging, tmp_path, 4)
    cm.__exit__(None, None, None)
    assert targets == {t: tmp_path / t / "cnn" / "4" for t in ("torchscript", "tensorflow")}
    assert (targets["tensorflow"] / "model.pt").read_text() == "tensorflow"
    assert version_dirs(tmp_path) == {"torchscript": ["4"], "tensorflow": ["4"], "staging": []}


def test_second_rename_failure_rolls_back_first(tmp_path, monkeypatch):
    real_rename = os.rename
    calls = []

    def flaky_rename(src, dst):
        calls.append((str(src), str(dst)))
        if "tensorflow" in str(dst) and "/cnn/" in str(dst):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    cm, staging = _staged(tmp_path)
    monkeypatch.setattr(publish.os, "rename", flaky_rename)
    with pytest.raises(TrainerError, match=r"cannot publish version 1 .*No space left"):
        commit_version(staging, tmp_path, 1)
    monkeypatch.undo()
    cm.__exit__(None, None, None)
    # TorchScript went first, TF (the commit point) failed, TorchScript was moved back.
    assert "torchscript" in calls[0][1] and "tensorflow" in calls[1][1] and "torchscript" in calls[2][0]
    assert version_dirs(tmp_path) == {"torchscript": [], "tensorflow": [], "staging": []}


def test_commit_refuses_a_version_that_appeared_meanwhile(tmp_path):
    cm, staging = _staged(tmp_path)
    (tmp_path / "tensorflow/cnn/2").mkdir(parents=True)
    with pytest.raises(TrainerError, match="appeared"):
        commit_version(staging, tmp_path, 2)
    cm.__exit__(None, None, None)
    assert version_dirs(tmp_path) == {"torchscript": [], "tensorflow": ["2"], "staging": []}


def test_staging_is_removed_on_error(tmp_path):
    with pytest.raises(RuntimeError), staging_area(tmp_path) as staging:
        (staging / "junk").write_text("x")
        raise RuntimeError("boom")
    assert version_dirs(tmp_path)["staging"] == []


def test_write_manifest_hashes_every_file_but_itself(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables/v.index").write_bytes(b"abc")
    (tmp_path / "model.pt").write_bytes(b"xyz")
    m = write_manifest(tmp_path, {"model_name": "cnn", "sizes": {"params": 1}})
    assert set(m["files"]) == {"variables/v.index", "model.pt"}
    assert m["sizes"] == {"params": 1, "artifact_bytes": 6}
    assert json.loads((tmp_path / "manifest.json").read_text()) == m
    assert_manifest_hashes(tmp_path)
