"""Models being served: one ServableManager per configured model, one scheduler (batcher) per loaded version.

The REST and gRPC front ends both call `ModelRegistry.predict`, so batching, version resolution,
errors and runtime metrics are the same whichever protocol a request came in on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving_core.batching import BatchStats, DirectScheduler, DynamicBatcher, Scheduler
from serving_core.errors import NotFound
from serving_core.repository import ServableManager
from tf_serving.compat.metrics import ServingMetrics
from tf_serving.compat.servable import SavedModelServable
from tf_serving.compat.settings import ServerConfig, Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedVersion:
    servable: SavedModelServable
    scheduler: Scheduler


class ModelRegistry:
    """All configured models; `start` loads them (blocking), `stop` drains and unloads them."""

    def __init__(self, settings: Settings, config: ServerConfig, metrics: ServingMetrics | None = None) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics or ServingMetrics()
        self.managers: dict[str, ServableManager[LoadedVersion]] = {}
        for entry in config.models:
            base = entry.local_base_path(settings.model_repository)
            self.managers[entry.name] = ServableManager(
                name=entry.name,
                base_path=base,
                loader=self._loader(entry.name),
                unloader=self._unload,
                policy=entry.policy,
                poll_interval_s=settings.file_system_poll_wait_seconds,
            )

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        for name, manager in self.managers.items():
            manager.start()
            if not manager.ready:
                log.warning("model %s: no version available under %s yet (polling)", name, manager.base_path)

    def stop(self) -> None:
        for manager in self.managers.values():
            manager.stop()

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.managers.values())

    def _loader(self, model_name: str) -> Any:
        def load(path: Path, version: int) -> LoadedVersion:
            t0 = time.perf_counter()
            servable = SavedModelServable.load(
                path, version, warmup=self.settings.enable_model_warmup, verify=self.settings.verify_manifest
            )
            self.metrics.load_latency.observe((time.perf_counter() - t0) * 1e6, model_name)
            return LoadedVersion(servable, self._scheduler(model_name, servable))

        return load

    def _scheduler(self, model_name: str, servable: SavedModelServable) -> Scheduler:
        params = self.config.batching
        metrics = self.metrics

        def run(images: np.ndarray) -> dict[str, np.ndarray]:
            t0 = time.perf_counter()
            out = servable.run(images)
            metrics.runtime_latency.observe((time.perf_counter() - t0) * 1e6, model_name, "Predict", "TF1")
            return out

        if params is None:
            return DirectScheduler(
                run,
                num_threads=self.settings.num_threads,
                max_in_flight=self.settings.max_in_flight,
                name=f"{model_name}-v{servable.version}",
            )

        pool = params.thread_pool_name

        def on_batch(stats: BatchStats) -> None:
            metrics.wrapped_run_count.inc()
            metrics.input_batch_size.observe(stats.size, model_name, "batching_session")
            for q in stats.queue_seconds:
                metrics.queuing_latency.observe(q * 1e6, pool)

        return DynamicBatcher(run, params, name=f"{model_name}-v{servable.version}", on_batch=on_batch)

    @staticmethod
    def _unload(loaded: LoadedVersion) -> None:
        loaded.scheduler.close()

    # -- serving ----------------------------------------------------------------------------------
    def manager(
        self, model_name: str, *, for_status: bool = False, version: int | None = None
    ) -> ServableManager[LoadedVersion]:
        m = self.managers.get(model_name)
        if m is None:
            # TF Serving's wording: status lookups vs. servable lookups.
            if for_status:
                raise NotFound(f"Could not find any versions of model {model_name}")
            what = f"Specific({model_name}, {version})" if version is not None else f"Latest({model_name})"
            raise NotFound(f"Servable not found for request: {what}")
        return m

    @contextmanager
    def acquire(self, model_name: str, version: int | None) -> Iterator[tuple[int, LoadedVersion]]:
        with self.manager(model_name, version=version).acquire(version) as (v, loaded):
            yield v, loaded

    async def predict(
        self, model_name: str, version: int | None, images: np.ndarray
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Run one request through the version's scheduler; returns (version served, outputs)."""
        with self.acquire(model_name, version) as (v, loaded):
            outputs = await loaded.scheduler.submit(images)
        return v, outputs
