"""The local stack: torch_service, the TF-Serving-compatible server and the gateway as processes on loopback.

`Stack` is a context manager: whatever happens inside the `with` block (a failing step, Ctrl-C,
SIGTERM turned into KeyboardInterrupt by the CLI), every process it started is stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from devstack.process import ManagedProcess, ServiceFailed, http_ok
from devstack.settings import StackSettings

# Readiness endpoints fixed by the issue contracts of each service.
TORCH_READY_PATH = "/v2/health/ready"
TF_READY_PATH = "/v1/models/cnn"
# TF Serving answers 200 on the status URL while still LOADING; quoted so "UNAVAILABLE"-like text never matches.
TF_READY_BODY = '"AVAILABLE"'
GATEWAY_READY_PATH = "/readyz"


class StackError(RuntimeError):
    """The local stack could not start (bad ports, a service that died or never became ready)."""


class PortInUse(StackError):
    """A port the stack needs is already taken by another process."""


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port. SO_REUSEADDR so a port left in TIME_WAIT by the
    previous run (which the servers can rebind, they set it too) does not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(settings: StackSettings) -> None:
    busy = {name: port for name, port in settings.ports().items() if port_in_use(settings.host, port)}
    if busy:
        listing = ", ".join(f"{name} {port}" for name, port in busy.items())
        raise PortInUse(
            f"port(s) already in use on {settings.host}: {listing}. Another stack (or `make up`, or a "
            f"container publishing these ports) is probably running: stop it, or pick other ports, e.g. "
            f"`.venv/bin/python -m devstack demo --ports auto` or "
            f"`.venv/bin/python -m devstack demo "
            f"--ports gateway=18000,torch_service=18080,tf_rest=18501,tf_grpc=18500`."
        )


def service_processes(settings: StackSettings, log_dir: Path) -> dict[str, ManagedProcess]:
    """The three services, wired to each other through the environment variables of DESIGN.md."""
    s = settings
    repo = str(Path(s.model_repository).resolve())
    torch_url, tf_rest_url = s.url(s.torch_port), s.url(s.tf_rest_port)
    return {
        "torch_service": ManagedProcess.python_module(
            "torch_service",
            "torch_service",
            ready_url=torch_url + TORCH_READY_PATH,
            log_dir=log_dir,
            env={
                "MODEL_REPOSITORY": repo,
                "TORCH_SERVICE_HOST": s.host,
                "TORCH_SERVICE_PORT": str(s.torch_port),
            },
        ),
        "tf_serving": ManagedProcess.python_module(
            "tf_serving",
            "tf_serving.compat",
            ready_url=tf_rest_url + TF_READY_PATH,
            ready_body=TF_READY_BODY,
            log_dir=log_dir,
            env={
                "MODEL_REPOSITORY": repo,
                "TF_SERVING_HOST": s.host,
                "TF_SERVING_REST_PORT": str(s.tf_rest_port),
                "TF_SERVING_GRPC_PORT": str(s.tf_grpc_port),
            },
        ),
        "gateway": ManagedProcess.python_module(
            "gateway",
            "gateway",
            ready_url=s.url(s.gateway_port) + GATEWAY_READY_PATH,
            log_dir=log_dir,
            env={
                "GATEWAY_HOST": s.host,
                "GATEWAY_PORT": str(s.gateway_port),
                "GATEWAY_TORCH_URLS": torch_url,
                "GATEWAY_TF_REST_URLS": tf_rest_url,
                "GATEWAY_TF_GRPC_TARGETS": f"{s.host}:{s.tf_grpc_port}",
            },
        ),
    }


def wait_all_ready(processes: Iterable[ManagedProcess], timeout: float, interval: float = 0.25) -> None:
    """Wait for several processes at once, so one that dies early fails the start at once
    instead of after the others' timeouts."""
    pending = list(processes)
    deadline = time.monotonic() + timeout
    while pending:
        for proc in list(pending):
            if not proc.alive:
                code = proc.proc.returncode if proc.proc is not None else None
                raise ServiceFailed(
                    f"{proc.name} exited with code {code} before it was ready; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )
            if proc.ready_url is None or http_ok(proc.ready_url, body_contains=proc.ready_body):
                pending.remove(proc)
        if not pending:
            return
        if time.monotonic() >= deadline:
            proc = pending[0]
            raise ServiceFailed(
                f"{proc.name} not ready at {proc.ready_url} after {timeout:.0f}s; "
                f"last lines of {proc.log_path}:\n{proc.log_tail()}"
            )
        time.sleep(interval)


@dataclass
class Stack:
    """Start with `start()` (or `with Stack(...) as stack`), stop with `stop()`; both idempotent."""

    settings: StackSettings
    log_dir: Path
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    # Process-group ids of everything started, kept to sweep stragglers after the leaders exit.
    _groups: list[int] = field(default_factory=list)
    _hurry: bool = False

    def start(self) -> Stack:
        check_ports_free(self.settings)
        self.processes = service_processes(self.settings, self.log_dir)
        backends = [self.processes["torch_service"], self.processes["tf_serving"]]
        # The two backends start side by side (each spends most of its start importing its framework);
        # the gateway comes last because its readiness includes the backends'.
        for proc in backends:
            self._launch(proc)
        wait_all_ready(backends, self.settings.ready_timeout_s)
        gateway = self.processes["gateway"]
        self._launch(gateway)
        wait_all_ready([gateway], self.settings.ready_timeout_s)
        return self

    def _launch(self, proc: ManagedProcess) -> None:
        proc.start()
        if proc.proc is not None:
            # start_new_session=True makes the child a group leader: its pid is the group id.
            self._groups.append(proc.proc.pid)

    def check_alive(self) -> None:
        """Raise ServiceFailed naming the first service that has exited, with its log tail."""
        for proc in self.processes.values():
            if proc.proc is not None and not proc.alive:
                raise ServiceFailed(
                    f"{proc.name} exited with code {proc.proc.returncode}; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )

    def stop(self) -> None:
        # A second Ctrl-C (or SIGTERM) while the services drain must not cut this cleanup short and
        # leave some running: it ends the grace period instead, with SIGKILL to every group at once.
        with self._signals_end_grace():
            # Reverse start order: the gateway stops taking calls before its backends go away.
            for proc in reversed(list(self.processes.values())):
                with contextlib.suppress(Exception):
                    proc.stop(grace=0.0 if self._hurry else self.settings.stop_grace_s)
            # A leader that exited on SIGTERM may leave children behind (worker processes, a server
            # started by a wrapper); SIGKILL whatever is left in each group.
            self._kill_groups()
            self._groups.clear()

    def _kill_groups(self) -> None:
        for pgid in self._groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    @contextlib.contextmanager
    def _signals_end_grace(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # handlers can only be set from the main thread; nothing to guard elsewhere
            return
        self._hurry = False

        def hurry(signum: int, frame: FrameType | None) -> None:
            self._hurry = True
            self._kill_groups()

        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, hurry) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def urls(self) -> dict[str, str]:
        s = self.settings
        return {
            "gateway": s.url(s.gateway_port),
            "torch_service": s.url(s.torch_port),
            "tf_serving (REST)": s.url(s.tf_rest_port),
            "tf_serving (gRPC)": f"{s.host}:{s.tf_grpc_port}",
        }

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
