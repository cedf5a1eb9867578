"""The model repository side: version numbers, writability, staging and the atomic publish.

Layout (shared/DESIGN.md): <repo>/tensorflow/cnn/<v>/ and <repo>/torchscript/cnn/<v>/. A version is
built complete in <repo>/.staging-<uuid>/ (same filesystem, and not a positive integer, so servers
ignore it), then each tree's directory is moved into place with one os.rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.config import MODEL_NAME
from trainer.errors import TrainerError

TREES = ("torchscript", "tensorflow")
STAGING_PREFIX = ".staging-"
MANIFEST = "manifest.json"


def default_repository() -> Path:
    return Path(os.environ.get("MODEL_REPOSITORY") or "./model_repository")


def tree_dir(repo: Path, tree: str) -> Path:
    return repo / tree / MODEL_NAME


def existing_versions(repo: Path) -> set[int]:
    """Positive-integer version directories present in either tree."""
    found: set[int] = set()
    for tree in TREES:
        d = tree_dir(repo, tree)
        if d.is_dir():
            for child in d.iterdir():
                if child.name.isdigit() and int(child.name) > 0:
                    found.add(int(child.name))
    return found


def ensure_writable(directory: Path, what: str) -> None:
    """Create `directory` if needed and prove we can write into it (a real write: os.access lies for
    root and read-only mounts)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainerError(f"{what} {directory} is not writable: {e.strerror or e}") from None


def choose_version(repo: Path, requested: int | None) -> int:
    """The requested version if free, else the next integer after the highest in either tree."""
    present = existing_versions(repo)
    if requested is None:
        return max(present, default=0) + 1
    if requested < 1:
        raise TrainerError(f"version must be a positive integer, not {requested}")
    if requested in present:
        raise TrainerError(f"version {requested} already exists in {repo}; refusing to overwrite it")
    return requested


@contextlib.contextmanager
def staging_area(repo: Path) -> Iterator[Path]:
    """A fresh hidden directory inside the repository, removed (with whatever is left in it) on exit."""
    staging = repo / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_version(staging: Path, repo: Path, version: int) -> dict[str, Path]:
    """Move staging/<tree> to <repo>/<tree>/cnn/<version> for both trees.

    TorchScript goes first and TensorFlow last, because the TF tree is watched by stock TensorFlow
    Serving, which starts loading (and replaying warm-up requests) the moment a version directory
    appears and which we cannot tell to stop: if the second rename fails, the only directory ever
    rolled back is the TorchScript one, whose server tolerates a version vanishing. The TF rename is
    thus the commit point: once a version is in the TF tree it is complete in both.
    os.rename onto an existing non-empty directory fails, so a concurrent publisher of the same
    number cannot be silently overwritten.
    """
    targets = {tree: tree_dir(repo, tree) / str(version) for tree in TREES}
    for tree in TREES:
        targets[tree].parent.mkdir(parents=True, exist_ok=True)
    if version in existing_versions(repo):
        raise TrainerError(f"version {version} appeared in {repo} while training; refusing to overwrite it")
    first, second = TREES
    try:
        os.rename(staging / first, targets[first])
    except OSError as e:
        raise TrainerError(f"cannot publish version {version} into {targets[first].parent}: {e}") from None
    try:
        os.rename(staging / second, targets[second])
    except OSError as e:
        # Roll back the first rename so neither tree shows the version.
        try:
            os.rename(targets[first], staging / first)
        except OSError:
            shutil.rmtree(targets[first], ignore_errors=True)
        raise TrainerError(f"cannot publish version {version} into {targets[second].parent}: {e}") from None
    return targets


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(version_dir: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file in the version dir except the manifest."""
    return {
        p.relative_to(version_dir).as_posix(): sha256_file(p)
        for p in sorted(version_dir.rglob("*"))
        if p.is_file() and p.relative_to(version_dir).as_posix() != MANIFEST
    }


def write_manifest(version_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add file hashes and artifact bytes to `manifest`, write it as manifest.json, return it."""
    files = file_hashes(version_dir)
    manifest = dict(manifest)
    manifest["sizes"] = {
        **manifest.get("sizes", {}),
        "artifact_bytes": sum((version_dir / rel).stat().st_size for rel in files),
    }
    manifest["files"] = files
    (version_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
