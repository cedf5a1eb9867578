"""Resource use of a backend while it is being measured: CPU and memory (and GPU where nvidia-smi runs).

Sources, chosen by config or availability: a local process (psutil; found by its listening port or
given by PID), or a container's stats from the Docker API (compose: by service name).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from typing import Any

import psutil

COMPOSE_SERVICE = {"torch": "torch_service", "tf": "tf_serving"}


def pids_listening_on(ports: tuple[int, ...]) -> list[int]:
    pids: set[int] = set()
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports and c.pid:
            pids.add(c.pid)
    return sorted(pids)


class _Source:
    name = "none"

    def sample(self) -> tuple[float, float] | None:  # (cpu percent, memory MB)
        return None

    def close(self) -> None:
        pass


class _Processes(_Source):
    name = "psutil"

    def __init__(self, pids: list[int]):
        self.procs: dict[int, psutil.Process] = {}
        self.roots = [psutil.Process(p) for p in pids]
        self._refresh()

    def _refresh(self) -> None:
        # Children too: a server may run its work in worker processes (uvicorn --workers, TF threads).
        for root in self.roots:
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    if p.pid not in self.procs:
                        self.procs[p.pid] = p
                        with contextlib.suppress(psutil.Error):
                            p.cpu_percent(None)

    def sample(self) -> tuple[float, float] | None:
        cpu = mem = 0.0
        alive = False
        for p in list(self.procs.values()):
            try:
                cpu += p.cpu_percent(None)
                mem += p.memory_info().rss / 2**20
                alive = True
            except psutil.Error:
                self.procs.pop(p.pid, None)
        return (cpu, mem) if alive else None


class _Container(_Source):
    name = "docker"

    def __init__(self, container: Any):
        self.container = container

    def sample(self) -> tuple[float, float] | None:
        try:
            st = self.container.stats(stream=False)
            cpu_d = st["cpu_stats"]["cpu_usage"]["total_usage"] - st["precpu_stats"]["cpu_usage"]["total_usage"]
            sys_d = st["cpu_stats"].get("system_cpu_usage", 0) - st["precpu_stats"].get("system_cpu_usage", 0)
            ncpu = st["cpu_stats"].get("online_cpus") or 1
            cpu = (cpu_d / sys_d) * ncpu * 100.0 if sys_d > 0 else 0.0
            mem = st.get("memory_stats", {}).get("usage", 0) / 2**20
            return cpu, mem
        except Exception:  # the Docker API answers many shapes across versions; a gap is tolerable
            return None


def _docker_container(backend: str, container_name: str | None) -> Any | None:
    try:
        import docker

        client = docker.from_env(timeout=3)
        if container_name:
            return client.containers.get(container_name)
        found = client.containers.list(
            filters={"label": f"com.docker.compose.service={COMPOSE_SERVICE.get(backend, backend)}"}
        )
        # Two compose projects running the same service: which one is measured cannot be told, and
        # another stack's numbers are worse than none.
        return found[0] if len(found) == 1 else None
    except Exception:  # no engine, no permission, no such container: resource use is then "n/a"
        return None


def make_source(
    mode: str,
    backend: str,
    ports: tuple[int, ...],
    pid: int | None = None,
    container: str | None = None,
    docker_ok: bool = True,
) -> _Source:
    """mode: auto | psutil | docker | none. `docker_ok=False`: no container found by its compose
    service label (a named `container` still is), for a backend known not to be one."""
    if mode == "none":
        return _Source()
    if mode in ("auto", "psutil"):
        pids = [pid] if pid else pids_listening_on(ports)
        if pids:
            with contextlib.suppress(psutil.Error):
                return _Processes(pids)
        if mode == "psutil":
            return _Source()
    if mode in ("auto", "docker") and (docker_ok or container):
        c = _docker_container(backend, container)
        if c is not None:
            return _Container(c)
    return _Source()


def _gpu_sample() -> tuple[float, float] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=3,
            check=True,
        ).stdout
        rows = [line.split(",") for line in out.strip().splitlines() if line.strip()]
        return sum(float(r[0]) for r in rows) / len(rows), sum(float(r[1]) for r in rows)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class Sampler:
    """Samples one source (and the GPU) on a background thread for the duration of a step."""

    def __init__(self, source: _Source, interval_s: float = 0.5):
        self.source = source
        self.interval_s = interval_s
        self.gpu = shutil.which("nvidia-smi") is not None
        self.cpu: list[float] = []
        self.mem: list[float] = []
        self.gpu_util: list[float] = []
        self.gpu_mem: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="resource-sampler")

    def __enter__(self) -> Sampler:
        if self.source.name != "none" or self.gpu:
            self.source.sample()  # primes psutil's cpu_percent
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            s = self.source.sample()
            if s is not None:
                self.cpu.append(s[0])
                self.mem.append(s[1])
            if self.gpu:
                g = _gpu_sample()
                if g is not None:
                    self.gpu_util.append(g[0])
                    self.gpu_mem.append(g[1])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        def mean(xs: list[float]) -> float | None:
            return sum(xs) / len(xs) if xs else None

        return {
            "source": self.source.name,
            "cpu_percent_mean": mean(self.cpu),
            "cpu_percent_max": max(self.cpu, default=None),
            "memory_mb_max": max(self.mem, default=None),
            "gpu_util_percent_mean": mean(self.gpu_util),
            "gpu_memory_mb_max": max(self.gpu_mem, default=None),
            "samples": len(self.cpu),
        }


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and GPUs of the machine the generator runs on."""
    import platform

    model = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            gpus = [g.strip() for g in out.splitlines() if g.strip()]
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": model,
        "logical_cores": psutil.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "load_average": list(psutil.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
