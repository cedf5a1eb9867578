"""Model repository: versions on disk, TF Serving's version policy, manifest checks, hot swap.

`ServableManager` does for any framework what TF Serving's AspiredVersionsManager does for
SavedModels: it polls `<base_path>/<version>/`, loads the versions the policy asks for, makes a
new version available before it unloads an old one (availability-preserving), keeps serving the
old one when a new one fails to load or verify, and reports every version's state in the shape of
`GetModelStatusResponse`. Unloading waits for in-flight requests on that version to finish.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from serving_core.errors import NotFound, ServingError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
MANIFEST_FILE = "manifest.json"


# ----------------------------------------------------------------------------- versions on disk
def list_versions(base_path: Path) -> list[int]:
    """Positive-integer subdirectories, ascending. Anything else (staging dirs, files) is ignored."""
    try:
        entries = list(Path(base_path).iterdir())
    except FileNotFoundError:
        return []
    versions = []
    for e in entries:
        if e.is_dir() and e.name.isdigit() and int(e.name) > 0:
            versions.append(int(e.name))
    return sorted(versions)


# ------------------------------------------------------------------------------ version policy
@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: `latest` N (default 1), `all`, or `specific` versions."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> VersionPolicy:
        """`latest`, `latest:N`, `all`, or `specific:1,2` (the env-var form of the same policy)."""
        text = spec.strip().lower()
        kind, _, arg = text.partition(":")
        try:
            if kind == "latest":
                n = int(arg) if arg else 1
                if n < 1:
                    raise ValueError
                return cls("latest", num_versions=n)
            if kind == "all" and not arg:
                return cls("all")
            if kind == "specific" and arg:
                versions = tuple(sorted({int(v) for v in arg.split(",") if v.strip()}))
                if not versions or min(versions) < 1:
                    raise ValueError
                return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(f"invalid version policy {spec!r}: use 'latest', 'latest:N' (N >= 1), 'all' or 'specific:1,2'")

    @classmethod
    def from_proto(cls, policy: Any) -> VersionPolicy:
        """From `tensorflow_serving.config.file_system_storage_path_source_pb2.ServableVersionPolicy`."""
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return cls("all")
        if which == "specific":
            return cls("specific", versions=tuple(sorted(int(v) for v in policy.specific.versions)))
        if which == "latest":
            return cls("latest", num_versions=int(policy.latest.num_versions) or 1)
        return cls()

    def select(self, available: list[int]) -> list[int]:
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return sorted(v for v in available if v in self.versions)
        return sorted(available)[-self.num_versions :]

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


# ------------------------------------------------------------------------------------ manifest
class ManifestError(Exception):
    """A version's manifest is missing, unreadable, or does not match the files beside it."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(version_dir: Path) -> dict[str, Any]:
    path = Path(version_dir) / MANIFEST_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict) or not doc["files"]:
        raise ManifestError(f"{path} has no 'files' checksum table")
    return doc


def verify_manifest(version_dir: Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; returns the manifest."""
    version_dir = Path(version_dir)
    doc = read_manifest(version_dir)
    for rel, expected in doc["files"].items():
        f = (version_dir / rel).resolve()
        if version_dir.resolve() not in f.parents:
            raise ManifestError(f"manifest entry {rel!r} points outside {version_dir}")
        if not f.is_file():
            raise ManifestError(f"{rel} is listed in the manifest but missing from {version_dir}")
        actual = sha256_file(f)
        if actual != expected:
            raise ManifestError(f"{rel} checksum mismatch: manifest {expected[:12]}..., file {actual[:12]}...")
    return doc


# ----------------------------------------------------------------------------- servable manager
State = Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]


@dataclass
class VersionState(Generic[T]):
    version: int
    state: State = "START"
    error_code: str = "OK"
    error_message: str = ""
    servable: T | None = None
    loaded_at: float | None = None
    in_flight: int = 0
    fingerprint: str = ""  # manifest mtime+size at load attempt: a changed failed version is retried

    def to_json(self) -> dict[str, Any]:
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


Loader = Callable[[Path, int], T]
Unloader = Callable[[T], None]


@dataclass
class ServableManager(Generic[T]):
    """Loads, serves and retires versions of one model according to a `VersionPolicy`."""

    name: str
    base_path: Path
    loader: Loader[T]
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    unloader: Unloader[T] | None = None
    poll_interval_s: float = 2.0
    unload_drain_timeout_s: float = 30.0
    on_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.base_path = Path(self.base_path)
        self._versions: dict[int, VersionState[T]] = {}
        self._lock = threading.RLock()
        self._drained = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- queries ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        with self._lock:
            return any(v.state == "AVAILABLE" for v in self._versions.values())

    def available_versions(self) -> list[int]:
        with self._lock:
            return sorted(v.version for v in self._versions.values() if v.state == "AVAILABLE")

    def status(self, version: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if version is not None:
                st = self._versions.get(version)
                if st is None:
                    raise NotFound(f"Could not find version {version} of model {self.name}")
                return [st.to_json()]
            if not self._versions:
                raise NotFound(f"Could not find any versions of model {self.name}")
            return [self._versions[v].to_json() for v in sorted(self._versions, reverse=True)]

    def resolve(self, version: int | None) -> int:
        with self._lock:
            if version is None:
                avail = self.available_versions()
                if not avail:
                    raise NotFound(f"Servable not found for request: Latest({self.name})")
                return avail[-1]
            st = self._versions.get(version)
            if st is None or st.state != "AVAILABLE":
                raise NotFound(f"Servable not found for request: Specific({self.name}, {version})")
            return version

    @contextlib.contextmanager
    def acquire(self, version: int | None = None) -> Iterator[tuple[int, T]]:
        """Hold a version for the duration of one request; unloading waits until it is released."""
        with self._lock:
            v = self.resolve(version)
            st = self._versions[v]
            st.in_flight += 1
        try:
            assert st.servable is not None
            yield v, st.servable
        finally:
            with self._lock:
                st.in_flight -= 1
                if st.in_flight == 0:
                    self._drained.notify_all()

    # -- polling ----------------------------------------------------------------------------
    def _fingerprint(self, version: int) -> str:
        d = self.base_path / str(version)
        try:
            stat = (d / MANIFEST_FILE).stat()
            return f"{stat.st_mtime_ns}:{stat.st_size}"
        except OSError:
            return "no-manifest"

    def poll_once(self) -> None:
        """One reconciliation step: load what the policy wants, then unload what it no longer does."""
        wanted = self.policy.select(list_versions(self.base_path))
        changed = False
        for v in wanted:
            with self._lock:
                st = self._versions.get(v)
                fp = self._fingerprint(v)
                failed_unchanged = st is not None and st.error_code != "OK" and st.fingerprint == fp
                if st is not None and (st.state in ("LOADING", "AVAILABLE", "UNLOADING") or failed_unchanged):
                    continue  # loaded, loading, or failed with unchanged files (don't retry in a loop)
                # Otherwise: new, failed but since rewritten, or unloaded earlier and wanted again
                # (a newer version was removed: roll back to this one).
                st = VersionState[T](v, state="LOADING", fingerprint=fp)
                self._versions[v] = st
            changed = True
            self._load(st)
        # Availability-preserving: retire versions only while another one is available.
        with self._lock:
            retire = [st for v, st in self._versions.items() if v not in wanted and st.state == "AVAILABLE"]
            if retire and not any(self._versions[v].state == "AVAILABLE" for v in wanted if v in self._versions):
                retire = []
            for st in retire:
                st.state = "UNLOADING"
            # A failed version that has since been deleted is forgotten, so an old error is not
            # reported forever. Unloaded versions stay as END, as TF Serving's state monitor keeps
            # them: clients polling model status see the swap complete, not the old version vanish.
            for v, st in list(self._versions.items()):
                if v not in wanted and st.error_code != "OK" and not (self.base_path / str(v)).is_dir():
                    del self._versions[v]
        for st in retire:
            changed = True
            self._unload(st)
        if changed and self.on_change is not None:
            self.on_change()

    def _load(self, st: VersionState[T]) -> None:
        path = self.base_path / str(st.version)
        t0 = time.perf_counter()
        try:
            servable = self.loader(path, st.version)
        except Exception as exc:  # any load/verify failure is reported, never fatal to the server
            msg = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            log.error("model %s version %d failed to load: %s", self.name, st.version, msg)
            with self._lock:
                st.state, st.error_code, st.error_message = "END", "UNKNOWN", f"Failed to load version: {msg}"
            return
        with self._lock:
            st.servable, st.state, st.loaded_at = servable, "AVAILABLE", time.time()
        log.info("model %s version %d available (loaded in %.2fs)", self.name, st.version, time.perf_counter() - t0)

    def _unload(self, st: VersionState[T]) -> None:
        with self._lock:
            deadline = time.monotonic() + self.unload_drain_timeout_s
            while st.in_flight > 0 and time.monotonic() < deadline:
                self._drained.wait(max(0.0, deadline - time.monotonic()))
            servable, st.servable = st.servable, None
        if servable is not None and self.unloader is not None:
            try:
                self.unloader(servable)
            except Exception:
                log.exception("unloading model %s version %d failed", self.name, st.version)
        with self._lock:
            st.state = "END"
        log.info("model %s version %d unloaded", self.name, st.version)

    def start(self) -> None:
        """Load synchronously once (so readiness means something), then poll in the background."""
        self.poll_once()
        if self.poll_interval_s > 0:
            self._thread = threading.Thread(target=self._poll_loop, name=f"{self.name}-poller", daemon=True)
            self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception:
                log.exception("polling %s failed", self.base_path)

    def stop(self) -> None:
        """Stop polling and unload everything (after in-flight requests finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            live = [st for st in self._versions.values() if st.state == "AVAILABLE"]
            for st in live:
                st.state = "UNLOADING"
        for st in live:
            self._unload(st)

    def require_ready(self) -> None:
        if not self.ready:
            raise Unavailable(f"Model {self.name} has no version available yet")
