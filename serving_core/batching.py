"""Dynamic batching driven by TF Serving's own batching-parameters file.

`load_batching_parameters` reads the text-proto file that `tensorflow_model_server
--batching_parameters_file` reads, so one file in `tf_serving/` configures both backends.
`DynamicBatcher` merges concurrent requests into batches the way TF Serving's
SharedBatchScheduler does: a batch closes when it is full or when its oldest request has waited
`batch_timeout_micros`; `num_batch_threads` batches run at once; the queue holds at most
`max_enqueued_batches` batches and a full queue is refused at once (UNAVAILABLE), never grown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, text_format, wrappers_pb2
from google.protobuf.message_factory import GetMessageClass

from serving_core.errors import InvalidArgument, ServingError, Unavailable

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[np.ndarray], Outputs]


class BatchingConfigError(ValueError):
    """The batching parameters file is missing, unparsable or inconsistent."""


def _batching_parameters_class() -> type:
    # tensorflow-serving-api does not ship session_bundle_config_pb2, so the message is declared
    # here from TF Serving's session_bundle_config.proto (field names are what text format uses).
    fdp = descriptor_pb2.FileDescriptorProto(
        name="cnn_serving/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    msg = fdp.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value"),
    ]
    for name, number, type_name in fields:
        msg.field.add(name=name, number=number, type=F.TYPE_MESSAGE, type_name=type_name, label=F.LABEL_OPTIONAL)
    msg.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


@dataclass(frozen=True)
class BatchingParameters:
    """Resolved parameters; defaults are SharedBatchScheduler's own."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    thread_pool_name: str = "batch_threads"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise BatchingConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise BatchingConfigError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        if self.max_enqueued_batches < 1:
            raise BatchingConfigError(f"max_enqueued_batches must be >= 1, got {self.max_enqueued_batches}")
        if self.num_batch_threads < 1:
            raise BatchingConfigError(f"num_batch_threads must be >= 1, got {self.num_batch_threads}")
        sizes = self.allowed_batch_sizes
        if sizes:
            # The same rules TF Serving enforces at start-up (batching_session.cc).
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise BatchingConfigError(f"allowed_batch_sizes must be increasing and positive: {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise BatchingConfigError(
                    f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size "
                    f"({self.max_batch_size})"
                )

    @property
    def queue_capacity(self) -> int:
        """Instances the queue may hold before refusing work."""
        return self.max_enqueued_batches * self.max_batch_size

    def padded_size(self, n: int) -> int:
        for size in self.allowed_batch_sizes:
            if size >= n:
                return size
        return n


def parse_batching_parameters(text: str, source: str = "<string>") -> BatchingParameters:
    cls = _batching_parameters_class()
    msg = cls()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise BatchingConfigError(f"{source}: not a valid BatchingParameters text proto: {exc}") from None
    kwargs: dict[str, object] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if msg.HasField(name):
            kwargs[name] = int(getattr(msg, name).value)
    if msg.HasField("thread_pool_name"):
        kwargs["thread_pool_name"] = msg.thread_pool_name.value
    kwargs["allowed_batch_sizes"] = tuple(int(s) for s in msg.allowed_batch_sizes)
    try:
        return BatchingParameters(**kwargs)  # type: ignore[arg-type]
    except BatchingConfigError as exc:
        raise BatchingConfigError(f"{source}: {exc}") from None


def load_batching_parameters(path: str | Path) -> BatchingParameters:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise BatchingConfigError(f"cannot read batching parameters file {p}: {exc.strerror}") from None
    return parse_batching_parameters(text, str(p))


@dataclass(frozen=True)
class BatchStats:
    """What one executed batch looked like, for metrics."""

    size: int  # real instances
    padded_size: int  # what the model actually ran on
    num_requests: int
    queue_seconds: tuple[float, ...]  # per request: enqueue -> batch start
    run_seconds: float


class Scheduler(Protocol):
    async def submit(self, images: np.ndarray) -> Outputs: ...
    def close(self, timeout: float = 30.0) -> None: ...
    @property
    def queued(self) -> int: ...


@dataclass
class _Task:
    images: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Outputs]
    enqueued: float

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


def _resolve(fut: asyncio.Future[Outputs], result: Outputs | None, error: BaseException | None) -> None:
    if fut.done():  # the client went away (cancelled); nothing to deliver
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)  # type: ignore[arg-type]


def _deliver(task: _Task, result: Outputs | None, error: BaseException | None) -> None:
    # RuntimeError: the caller's event loop is already closed, so nobody is waiting.
    with contextlib.suppress(RuntimeError):
        task.loop.call_soon_threadsafe(_resolve, task.future, result, error)


def _as_serving_error(exc: BaseException) -> BaseException:
    if isinstance(exc, ServingError):
        return exc
    from serving_core.errors import Internal

    return Internal(f"inference failed: {type(exc).__name__}: {exc}")


def _report(on_batch: Callable[[BatchStats], None], stats: BatchStats) -> None:
    # A failing metrics hook must neither kill a batch thread nor fail a request that succeeded.
    try:
        on_batch(stats)
    except Exception:
        logging.getLogger(__name__).exception("on_batch callback failed")


class DynamicBatcher:
    """Merges concurrent `submit` calls into batches run by `num_batch_threads` worker threads."""

    def __init__(
        self,
        run_batch: RunBatch,
        params: BatchingParameters,
        *,
        name: str = "batcher",
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._run = run_batch
        self.params = params
        self._on_batch = on_batch
        self._queue: deque[_Task] = deque()
        self._queued_instances = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    @property
    def queued(self) -> int:
        return self._queued_instances

    async def submit(self, images: np.ndarray) -> Outputs:
        n = int(images.shape[0])
        if n > self.params.max_batch_size:
            # TF Serving's wording for the same condition (no large-batch splitting).
            raise InvalidArgument(f"Task size {n} is larger than maximum input batch size {self.params.max_batch_size}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outputs] = loop.create_future()
        with self._cond:
            if self._closed:
                raise Unavailable("Server is shutting down; not accepting new requests")
            if self._queued_instances + n > self.params.queue_capacity:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full "
                    f"({self._queued_instances} instances queued, capacity {self.params.queue_capacity})"
                )
            self._queue.append(_Task(images, loop, fut, time.perf_counter()))
            self._queued_instances += n
            self._cond.notify()
        return await fut

    def _take_batch(self) -> list[_Task] | None:
        """Block until a batch is due (full, or oldest task waited the timeout); None when closed."""
        p = self.params
        timeout = p.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                deadline = self._queue[0].enqueued + timeout
                while self._queue and self._queued_instances < p.max_batch_size and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._queue:
                    continue  # another worker took them while we waited
                batch: list[_Task] = []
                total = 0
                while self._queue and total + self._queue[0].size <= p.max_batch_size:
                    task = self._queue.popleft()
                    batch.append(task)
                    total += task.size
                self._queued_instances -= total
                if self._queue:
                    self._cond.notify()  # leftovers: wake another worker
                return batch

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._execute(batch)

    def _execute(self, batch: list[_Task]) -> None:
        start = time.perf_counter()
        n = sum(t.size for t in batch)
        padded = self.params.padded_size(n)
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([t.images for t in batch])
            if padded > n:
                # Pad to an allowed size (as TF Serving does) so only warmed-up shapes ever run.
                pad = np.repeat(images[-1:], padded - n, axis=0)
                images = np.concatenate([images, pad])
            outputs = self._run(images)
        except BaseException as exc:  # a failed batch fails only its own requests
            err = _as_serving_error(exc)
            for t in batch:
                _deliver(t, None, err)
            return
        run_s = time.perf_counter() - start
        offset = 0
        for t in batch:
            part = {k: v[offset : offset + t.size] for k, v in outputs.items()}
            offset += t.size
            _deliver(t, part, None)
        if self._on_batch is not None:
            _report(self._on_batch, BatchStats(n, padded, len(batch), tuple(start - t.enqueued for t in batch), run_s))

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, run everything already queued, then stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


class DirectScheduler:
    """Batching off: each request runs alone on a thread pool, with the same bounded admission."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        num_threads: int,
        max_in_flight: int,
        name: str = "direct",
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._run = run_batch
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix=name)
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closed = False
        self._on_batch = on_batch

    @property
    def queued(self) -> int:
        return self._in_flight

    def _call(self, images: np.ndarray, enqueued: float) -> Outputs:
        start = time.perf_counter()
        out = self._run(images)
        if self._on_batch is not None:
            n = int(images.shape[0])
            _report(self._on_batch, BatchStats(n, n, 1, (start - enqueued,), time.perf_counter() - start))
        return out

    async def submit(self, images: np.ndarray) -> Outputs:
        with self._lock:
            if self._closed:
                raise Unavailable("Server is shutting down; not accepting new requests")
            if self._in_flight >= self._max_in_flight:
                raise Unavailable(f"Too many requests in flight ({self._in_flight}); retry later")
            self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._call, images, time.perf_counter())
        except ServingError:
            raise
        except Exception as exc:
            raise _as_serving_error(exc) from exc
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
