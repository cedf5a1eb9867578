"""Start, watch and stop the system's services as local processes (used by `make up/demo` and the tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Every ManagedProcess started by this process and not yet stopped (see stop_started_on_sigterm).
_started: list[ManagedProcess] = []


def stop_started_on_sigterm(exit_code: int = 143) -> None:
    """On SIGTERM (what `timeout` and `kill` send), stop every service this process started, then exit.

    The services run in sessions of their own, so the signal never reaches them; a script killed this
    way would leave them running. Raising SystemExit from the handler is not enough: under uvloop it can
    land in a transport callback, which reports it as a fatal transport error and carries on. So the
    handler stops the services itself and leaves with os._exit.
    """

    def handler(signum: int, frame: object) -> None:
        for proc in reversed(list(_started)):
            with contextlib.suppress(Exception):
                proc.stop(grace=5)
        os._exit(exit_code)

    signal.signal(signal.SIGTERM, handler)


class ServiceFailed(RuntimeError):
    """A service exited or never became ready; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it; a small race is accepted in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pythonpath(*first: str | Path) -> str:
    """PYTHONPATH for a child: `first` ahead of whatever this process was given.

    Keeping the inherited entries matters where dependencies live outside the interpreter's own
    site-packages (the GPU image's carried wheels under PYTHONPATH, say): replacing the variable would
    leave the child unable to import them.
    """
    entries = [str(x) for x in first] + [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    return os.pathsep.join(dict.fromkeys(entries))


def http_ok(url: str, timeout: float = 1.0, body_contains: str | None = None) -> bool:
    """True when `url` answers 2xx (and, if `body_contains` is given, its body contains that text).

    The body check exists for TF Serving's readiness: `GET /v1/models/cnn` answers 200 while the
    model is still LOADING, so only the text `"AVAILABLE"` in the body means ready.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if not 200 <= resp.status < 300:
                return False
            return body_contains is None or body_contains in resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@dataclass
class ManagedProcess:
    """One service process: its own process group, its log in a file, a readiness URL.

    Logs go to a file rather than a pipe so a chatty server can never block on a full pipe.
    """

    name: str
    argv: Sequence[str]
    ready_url: str | None
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    # Ready only when the answer's body contains this text (see http_ok); None = any 2xx.
    ready_body: str | None = None

    @classmethod
    def python_module(
        cls,
        name: str,
        module: str,
        *,
        ready_url: str | None,
        log_dir: Path,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        cwd: Path | None = None,
        ready_body: str | None = None,
    ) -> ManagedProcess:
        return cls(
            name=name,
            argv=[sys.executable, "-m", module, *args],
            ready_url=ready_url,
            log_path=Path(log_dir) / f"{name}.log",
            env=dict(env),
            cwd=cwd,
            ready_body=ready_body,
        )

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
        self.proc = subprocess.Popen(
            list(self.argv),
            env=full_env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        _started.append(self)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.proc.returncode if self.proc else None
                raise ServiceFailed(
                    f"{self.name} exited with code {code} before it was ready; last log lines:\n{self.log_tail()}"
                )
            if self.ready_url is None or http_ok(self.ready_url, body_contains=self.ready_body):
                return
            time.sleep(interval)
        raise ServiceFailed(
            f"{self.name} not ready at {self.ready_url} after {timeout:.0f}s; last log lines:\n{self.log_tail()}"
        )

    def signal(self, sig: int) -> None:
        if self.alive and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL after `grace` seconds."""
        if self.proc is None:
            return None
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        with contextlib.suppress(ValueError):
            _started.remove(self)
        return self.proc.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=5)
