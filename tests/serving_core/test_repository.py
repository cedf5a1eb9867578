"""Version policy, manifest checks and ServableManager (hot swap, failed versions, drain on unload).

The servables are real files read by a real loader: a version directory with `value.txt` and a manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from serving_core.errors import NotFound
from serving_core.repository import (
    ManifestError,
    ServableManager,
    VersionPolicy,
    list_versions,
    verify_manifest,
)


def publish(base: Path, version: int, value: str, *, corrupt: bool = False) -> Path:
    staging = base / f".tmp-{version}"
    staging.mkdir(parents=True)
    (staging / "value.txt").write_text(value)
    digest = hashlib.sha256(value.encode()).hexdigest()
    (staging / "manifest.json").write_text(json.dumps({"files": {"value.txt": digest}}))
    if corrupt:
        (staging / "value.txt").write_text(value + " tampered")
    final = base / str(version)
    staging.rename(final)
    return final


class Loader:
    def __init__(self) -> None:
        self.unloaded: list[str] = []

    def load(self, path: Path, version: int) -> str:
        verify_manifest(path)
        return (path / "value.txt").read_text()

    def unload(self, servable: str) -> None:
        self.unloaded.append(servable)


def manager(base: Path, policy: str = "latest") -> tuple[ServableManager[str], Loader]:
    loader = Loader()
    m = ServableManager(
        "cnn", base, loader.load, policy=VersionPolicy.parse(policy), unloader=loader.unload, poll_interval_s=0
    )
    return m, loader


def states(m: ServableManager[str]) -> dict[str, str]:
    return {s["version"]: s["state"] for s in m.status()}


# ------------------------------------------------------------------------------------- policy
@pytest.mark.parametrize(
    ("spec", "available", "selected"),
    [
        ("latest", [1, 2, 3], [3]),
        ("latest:2", [1, 2, 3], [2, 3]),
        ("LATEST:5", [1, 2], [1, 2]),
        ("all", [3, 1, 2], [1, 2, 3]),
        ("specific:1,3", [1, 2, 3], [1, 3]),
        ("specific:4", [1, 2, 3], []),
    ],
)
def test_policy_selects(spec: str, available: list[int], selected: list[int]) -> None:
    policy = VersionPolicy.parse(spec)
    assert policy.select(available) == selected
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("spec", ["", "newest", "latest:0", "latest:x", "specific", "specific:0", "all:2"])
def test_bad_policies(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid version policy"):
        VersionPolicy.parse(spec)


def test_only_positive_integer_directories_are_versions(tmp_path: Path) -> None:
    for name in ("1", "10", "0", ".tmp-3", "abc"):
        (tmp_path / name).mkdir()
    (tmp_path / "2").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 10]
    assert list_versions(tmp_path / "missing") == []


# ----------------------------------------------------------------------------------- manifest
def test_manifest_checks(tmp_path: Path) -> None:
    good = publish(tmp_path, 1, "one")
    assert verify_manifest(good)["files"]
    with pytest.raises(ManifestError, match="checksum mismatch"):
        verify_manifest(publish(tmp_path, 2, "two", corrupt=True))
    (good / "value.txt").unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_manifest(good)
    escape = publish(tmp_path, 3, "three")
    (escape / "manifest.json").write_text(json.dumps({"files": {"../1/manifest.json": "0"}}))
    with pytest.raises(ManifestError, match="outside"):
        verify_manifest(escape)
    (escape / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_manifest(escape)


# ------------------------------------------------------------------------------------ manager
def test_hot_swap_to_new_version(tmp_path: Path) -> None:
    publish(tmp_path, 1, "one")
    m, loader = manager(tmp_path)
    m.start()
    assert m.ready and m.available_versions() == [1]
    with m.acquire() as (v, servable):
        assert (v, servable) == (1, "one")
    publish(tmp_path, 2, "two")
    m.poll_once()
    assert states(m) == {"2": "AVAILABLE", "1": "END"}
    assert loader.unloaded == ["one"]
    with m.acquire() as (v, servable):
        assert (v, servable) == (2, "two")
    with pytest.raises(NotFound, match=r"Specific\(cnn, 1\)"):
        m.resolve(1)
    m.stop()
    assert loader.unloaded == ["one", "two"]


def test_unloaded_version_stays_end_across_polls_and_is_reloaded_on_rollback(tmp_path: Path) -> None:
    publish(tmp_path, 1, "one")
    m, loader = manager(tmp_path)
    m.start()
    publish(tmp_path, 2, "two")
    m.poll_once()
    # Clients that poll model status must be able to see the swap finish: version 1 stays END.
    for _ in range(3):
        m.poll_once()
        assert states(m) == {"2": "AVAILABLE", "1": "END"}
    # Version 2 withdrawn from disk: version 1 is wanted again and comes back.
    shutil.rmtree(tmp_path / "2")
    m.poll_once()
    assert states(m) == {"2": "END", "1": "AVAILABLE"}
    assert loader.unloaded == ["one", "two"]
    with m.acquire() as (v, servable):
        assert (v, servable) == (1, "one")
    m.stop()


def test_failed_version_deleted_from_disk_is_forgotten(tmp_path: Path) -> None:
    publish(tmp_path, 1, "one")
    m, _ = manager(tmp_path)
    m.start()
    publish(tmp_path, 2, "two", corrupt=True)
    m.poll_once()
    assert states(m) == {"2": "END", "1": "AVAILABLE"}
    shutil.rmtree(tmp_path / "2")
    m.poll_once()
    assert states(m) == {"1": "AVAILABLE"}
    m.stop()


def test_failed_version_is_reported_and_old_one_keeps_serving(tmp_path: Path) -> None:
    publish(tmp_path, 1, "one")
    m, _ = manager(tmp_path)
    m.start()
    publish(tmp_path, 2, "two", corrupt=True)
    m.poll_once()
    st = {s["version"]: s for s in m.status()}
    assert st["2"]["state"] == "END" and st["2"]["status"]["error_code"] != "OK"
    assert "checksum mismatch" in st["2"]["status"]["error_message"]
    assert st["1"]["state"] == "AVAILABLE"
    assert m.resolve(None) == 1
    # A failed version is not retried in a loop; a fixed one (new manifest) is.
    m.poll_once()
    assert states(m)["2"] == "END"
    time.sleep(0.01)  # a new mtime for the rewritten manifest
    value = "two"
    (tmp_path / "2" / "value.txt").write_text(value)
    (tmp_path / "2" / "manifest.json").write_text(
        json.dumps({"files": {"value.txt": hashlib.sha256(value.encode()).hexdigest()}})
    )
    m.poll_once()
    assert states(m) == {"2": "AVAILABLE", "1": "END"}
    m.stop()


def test_no_versions_means_not_ready(tmp_path: Path) -> None:
    m, _ = manager(tmp_path / "empty")
    m.start()
    assert not m.ready
    with pytest.raises(NotFound, match="Could not find any versions"):
        m.status()
    with pytest.raises(NotFound, match=r"Latest\(cnn\)"):
        m.resolve(None)
    m.stop()


def test_policies_in_the_manager(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        publish(tmp_path, v, str(v))
    m, _ = manager(tmp_path, "latest:2")
    m.start()
    assert m.available_versions() == [2, 3]
    m.stop()
    m, _ = manager(tmp_path, "specific:1")
    m.start()
    assert m.available_versions() == [1]
    with pytest.raises(NotFound):
        m.resolve(3)
    m.stop()


def test_unload_waits_for_in_flight_requests(tmp_path: Path) -> None:
    publish(tmp_path, 1, "one")
    m, loader = manager(tmp_path)
    m.start()
    publish(tmp_path, 2, "two")
    with m.acquire(1) as (_, servable):
        swap = threading.Thread(target=m.poll_once)
        swap.start()
        # Version 2 comes up, version 1 is UNLOADING but not unloaded while this request holds it.
        deadline = time.monotonic() + 10
        while states(m).get("1") != "UNLOADING" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert states(m) == {"2": "AVAILABLE", "1": "UNLOADING"}
        assert loader.unloaded == [] and servable == "one"
        with m.acquire() as (v, _):
            assert v == 2  # new requests already go to the new version
    swap.join(10)
    assert loader.unloaded == ["one"] and states(m)["1"] == "END"
    m.stop()
