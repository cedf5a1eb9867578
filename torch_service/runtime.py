"""What the endpoints share: settings, metrics and the version manager of the one served model."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serving_core.batching import BatchingParameters, Outputs, load_batching_parameters
from serving_core.errors import NotFound
from serving_core.repository import ServableManager
from torch_service.metrics import Metrics
from torch_service.model import SchedulerConfig, TorchServable, load_servable, resolve_device, unload_servable
from torch_service.settings import Settings

log = logging.getLogger(__name__)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset/cgroup CPU sets, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class ModelRuntime:
    settings: Settings
    metrics: Metrics
    device: torch.device
    sched: SchedulerConfig
    manager: ServableManager[TorchServable] = field(init=False)
    _servables: dict[int, TorchServable] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.manager = ServableManager(
            name=self.settings.model_name,
            base_path=self.settings.model_base_path,
            loader=self._load,
            unloader=self._unload,
            policy=self.settings.policy,
            poll_interval_s=self.settings.poll_interval_s,
            on_change=self._publish_versions,
        )
        self.metrics.queued.set_function(self.queued_instances)

    @classmethod
    def build(cls, settings: Settings) -> ModelRuntime:
        """Resolve device and batching parameters now, so bad settings fail before the server starts."""
        metrics = Metrics()
        device = resolve_device(settings.device)
        batching: BatchingParameters | None = None
        if settings.enable_batching:
            batching = load_batching_parameters(settings.batching_file)
        sched = SchedulerConfig(
            batching=batching,
            inference_threads=settings.resolved_inference_threads,
            max_in_flight=settings.max_in_flight,
            max_request_instances=settings.max_request_instances,
            on_batch=metrics.observe_batch,
        )
        return cls(settings, metrics, device, sched)

    def _load(self, path: Path, version: int) -> TorchServable:
        servable = load_servable(path, version, device=self.device, sched=self.sched)
        with self._lock:
            self._servables[version] = servable
        return servable

    def _unload(self, servable: TorchServable) -> None:
        unload_servable(servable)
        with self._lock:
            if self._servables.get(servable.version) is servable:
                del self._servables[servable.version]

    def queued_instances(self) -> float:
        """Images waiting in the schedulers of every loaded version (batching off: requests in flight)."""
        with self._lock:
            return float(sum(s.scheduler.queued for s in self._servables.values() if s.scheduler is not None))

    def _publish_versions(self) -> None:
        known = [int(s["version"]) for s in self._status_or_empty()]
        self.metrics.set_versions(self.settings.model_name, known, self.manager.available_versions())

    def _status_or_empty(self) -> list[dict]:
        try:
            return self.manager.status()
        except NotFound:
            return []

    def intra_op_threads(self) -> int:
        """TORCH_SERVICE_NUM_THREADS (1 by default); 0 = the cores shared out among the batches that run at once.

        torch's default (one thread per core for every call) oversubscribes the CPU as soon as two
        batches run concurrently, and its spinning threads turn a 0.2 ms call into tens of ms on a
        busy host. Even shared out, OpenMP's spinning workers burn cores between calls on a large host
        (docs/benchmarks.md, torch_service on the GPU machine's 16 cores), and a model this small gains
        nothing from intra-op parallelism: concurrency comes from num_batch_threads instead.
        """
        if self.settings.num_threads:
            return self.settings.num_threads
        concurrent = self.sched.batching.num_batch_threads if self.sched.batching else self.sched.inference_threads
        return max(1, available_cpus() // concurrent)

    def configure_threads(self) -> None:
        s = self.settings
        torch.set_num_threads(self.intra_op_threads())
        if s.num_interop_threads:
            try:
                torch.set_num_interop_threads(s.num_interop_threads)
            except RuntimeError as exc:  # only allowed before torch's first parallel work in this process
                log.warning("cannot set interop threads: %s", exc)

    def start(self) -> None:
        """Blocking: load what the policy asks for (before the server reports ready), then poll."""
        self.configure_threads()
        if not self.settings.model_base_path.is_dir():
            log.warning("model base path %s does not exist (yet); polling for it", self.settings.model_base_path)
        self.manager.start()
        self._publish_versions()
        log.info(
            "serving %s versions %s on %s (batching %s, %d intra-op thread(s) per call)",
            self.settings.model_name,
            self.manager.available_versions(),
            self.device,
            "on" if self.sched.batching else "off",
            torch.get_num_threads(),
        )

    def stop(self) -> None:
        """Blocking: stop polling, drain each version's queue, unload."""
        self.manager.stop()

    def check_name(self, name: str, version: int | None = None) -> None:
        if name != self.settings.model_name:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise NotFound(f"Servable not found for request: {what}")

    async def predict(self, version: int | None, images: np.ndarray) -> tuple[int, Outputs]:
        with self.manager.acquire(version) as (v, servable):
            return v, await servable.predict(images, self.settings.request_timeout_s)
