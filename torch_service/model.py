"""The TorchScript servable: verify, load, warm up, and predict through its own batch scheduler.

One `TorchServable` per model version, each with its own scheduler (as TF Serving gives each
session its own batching queue), so a version being unloaded drains its queue without touching
the version that replaced it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving_core import contract
from serving_core.batching import BatchingParameters, BatchStats, DirectScheduler, DynamicBatcher, Outputs, Scheduler
from serving_core.errors import DeadlineExceeded, FailedPrecondition
from serving_core.repository import verify_manifest

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


def resolve_device(spec: str) -> torch.device:
    """`auto` -> first GPU when CUDA is present, else CPU; explicit CUDA devices must exist."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} requested but CUDA is not available (torch {torch.__version__})")
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        dev = torch.device("cuda", index)
    return dev


def warmup_sizes(params: BatchingParameters | None, max_request_instances: int) -> list[int]:
    """Every batch size the model will see: allowed_batch_sizes, else powers of two up to the max."""
    if params is not None and params.allowed_batch_sizes:
        return list(params.allowed_batch_sizes)
    top = params.max_batch_size if params is not None else max_request_instances
    sizes, s = [], 1
    while s < top:
        sizes.append(s)
        s *= 2
    return [*sizes, top]


@dataclass(frozen=True)
class SchedulerConfig:
    """How each version schedules inference: a DynamicBatcher with `batching`, else direct calls."""

    batching: BatchingParameters | None
    inference_threads: int
    max_in_flight: int
    max_request_instances: int
    on_batch: Callable[[BatchStats], None] | None = None

    @property
    def request_limit(self) -> int:
        if self.batching is not None:
            return min(self.max_request_instances, self.batching.max_batch_size)
        return self.max_request_instances


@dataclass
class TorchServable:
    """One loaded version: the TorchScript module on its device and the scheduler that feeds it."""

    version: int
    path: Path
    module: torch.jit.ScriptModule
    device: torch.device
    manifest: dict[str, Any]
    scheduler: Scheduler | None = None
    load_seconds: float = 0.0
    warmed_sizes: list[int] = field(default_factory=list)

    def run_batch(self, images: np.ndarray) -> Outputs:
        """Blocking forward pass (called on scheduler threads, never on the event loop)."""
        with torch.inference_mode():
            x = torch.from_numpy(images)
            if self.device.type != "cpu":
                x = x.to(self.device, non_blocking=True)
            out = self.module(x)
            return {name: out[name].cpu().numpy() for name in contract.OUTPUT_NAMES}

    async def predict(self, images: np.ndarray, timeout_s: float | None = None) -> Outputs:
        assert self.scheduler is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await self.scheduler.submit(images)
        except TimeoutError:
            raise DeadlineExceeded(f"Inference did not finish within {timeout_s:g} s") from None

    def check_contract(self, n: int) -> None:
        """Run a batch of `n` and check the outputs honour the model contract (names, shapes, dtypes)."""
        images = np.full((n, *contract.INSTANCE_SHAPE), 0.5, dtype=np.float32)
        out = self.run_batch(images)
        probs, classes = out[contract.OUTPUT_PROBABILITIES], out[contract.OUTPUT_CLASSES]
        if probs.shape != (n, contract.NUM_CLASSES) or probs.dtype != np.float32:
            raise FailedPrecondition(
                f"model output 'probabilities' is {probs.dtype}{list(probs.shape)}, expected float32[{n}, 10]"
            )
        if classes.shape != (n,) or classes.dtype != np.int64:
            raise FailedPrecondition(
                f"model output 'classes' is {classes.dtype}{list(classes.shape)}, expected int64[{n}]"
            )

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


def load_servable(path: Path, version: int, *, device: torch.device, sched: SchedulerConfig) -> TorchServable:
    """ServableManager loader: checksums, torch.jit.load, warm-up of every batch size, then a scheduler."""
    t0 = time.perf_counter()
    manifest = verify_manifest(path)
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise FailedPrecondition(f"{model_file} is missing")
    try:
        module = torch.jit.load(str(model_file), map_location=device)
    except Exception as exc:  # torch raises RuntimeError with a C++ trace for anything unreadable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FailedPrecondition(f"{model_file} is not a loadable TorchScript module: {first}") from None
    module.eval()
    servable = TorchServable(version, path, module, device, manifest)
    sizes = warmup_sizes(sched.batching, sched.request_limit)
    # Twice per size: TorchScript's profiling executor specialises a graph on its second run.
    for n in sizes:
        servable.check_contract(n)
        servable.check_contract(n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    servable.warmed_sizes = sizes
    if sched.batching is not None:
        servable.scheduler = DynamicBatcher(
            servable.run_batch, sched.batching, name=f"batch-v{version}", on_batch=sched.on_batch
        )
    else:
        servable.scheduler = DirectScheduler(
            servable.run_batch,
            num_threads=sched.inference_threads,
            max_in_flight=sched.max_in_flight,
            name=f"infer-v{version}",
            on_batch=sched.on_batch,
        )
    servable.load_seconds = time.perf_counter() - t0
    log.info("version %d loaded on %s, warmed batch sizes %s in %.2fs", version, device, sizes, servable.load_seconds)
    return servable


def unload_servable(servable: TorchServable) -> None:
    """ServableManager unloader: the scheduler runs what it has queued, then stops."""
    servable.close()
