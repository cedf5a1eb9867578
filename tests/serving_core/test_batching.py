"""DynamicBatcher and DirectScheduler with a real numpy "model": ordering, failures, timeouts, overload, drain."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving_core.batching import BatchingParameters, BatchStats, DirectScheduler, DynamicBatcher
from serving_core.errors import Internal, InvalidArgument, Unavailable


def images(n: int, value: float) -> np.ndarray:
    return np.full((n, 28, 28, 1), value, dtype=np.float32)


class Model:
    """Echoes each image's first pixel, so every caller can check it got its own rows back."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.seen_sizes: list[int] = []
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.started.set()
        self.gate.wait(10)
        if (x == 13).any():
            raise RuntimeError("poisoned input")
        self.seen_sizes.append(len(x))
        first = x.reshape(len(x), -1)[:, 0]
        return {"probabilities": np.repeat(first[:, None], 10, axis=1), "classes": first.astype(np.int64)}


def params(**kw: object) -> BatchingParameters:
    base: dict[str, object] = {
        "max_batch_size": 8,
        "batch_timeout_micros": 2000,
        "max_enqueued_batches": 10,
        "num_batch_threads": 1,
    }
    return BatchingParameters(**{**base, **kw})  # type: ignore[arg-type]


async def test_results_go_back_to_their_own_requests_in_order() -> None:
    stats: list[BatchStats] = []
    model = Model()
    b = DynamicBatcher(model, params(max_batch_size=16, batch_timeout_micros=20000), on_batch=stats.append)
    try:
        sizes = [1, 3, 2, 1, 4, 1, 2]
        outs = await asyncio.gather(*(b.submit(images(n, float(i))) for i, n in enumerate(sizes)))
        for i, (n, out) in enumerate(zip(sizes, outs, strict=True)):
            assert out["classes"].tolist() == [i] * n
            assert out["probabilities"].shape == (n, 10)
    finally:
        b.close()  # joins the workers: stats are reported after results are delivered
    # They were merged: fewer batches than requests, no instance lost.
    assert len(stats) < len(sizes) and sum(s.size for s in stats) == sum(sizes)
    assert max(s.num_requests for s in stats) > 1


async def test_failed_batch_fails_only_its_own_requests() -> None:
    # A batch closes only when full (2 instances; the timeout is long), so the pairs are two batches.
    b = DynamicBatcher(Model(), params(max_batch_size=2, batch_timeout_micros=10_000_000))
    try:
        bad = await asyncio.gather(b.submit(images(1, 13)), b.submit(images(1, 1)), return_exceptions=True)
        assert all(isinstance(e, Internal) and "poisoned input" in e.message for e in bad)
        good = await asyncio.gather(b.submit(images(1, 2)), b.submit(images(1, 3)))
        assert [g["classes"].tolist() for g in good] == [[2], [3]]
    finally:
        b.close()


async def test_lone_request_runs_after_the_batch_timeout() -> None:
    stats: list[BatchStats] = []
    b = DynamicBatcher(Model(), params(max_batch_size=64, batch_timeout_micros=50_000), on_batch=stats.append)
    try:
        out = await asyncio.wait_for(b.submit(images(1, 5)), timeout=10)
        assert out["classes"].tolist() == [5]
    finally:
        b.close()
    assert stats[0].size == 1 and stats[0].num_requests == 1
    # It waited for company until the timeout (behaviour, not a performance threshold).
    assert stats[0].queue_seconds[0] >= 0.04


async def test_full_queue_refuses_at_once_then_recovers() -> None:
    model = Model()
    model.gate.clear()  # the model "hangs" until released
    b = DynamicBatcher(model, params(max_batch_size=2, max_enqueued_batches=1, batch_timeout_micros=0))
    try:
        running = asyncio.ensure_future(b.submit(images(2, 1)))
        await asyncio.to_thread(model.started.wait, 10)  # the worker took it and is busy
        queued = asyncio.ensure_future(b.submit(images(2, 2)))
        await asyncio.sleep(0.05)
        assert b.queued == 2
        with pytest.raises(Unavailable, match=r"queue .* is full"):
            await b.submit(images(1, 3))
        model.gate.set()
        assert (await running)["classes"].tolist() == [1, 1]
        assert (await queued)["classes"].tolist() == [2, 2]
        assert (await b.submit(images(1, 4)))["classes"].tolist() == [4]
    finally:
        model.gate.set()
        b.close()


async def test_too_large_request_is_invalid() -> None:
    b = DynamicBatcher(Model(), params(max_batch_size=4))
    try:
        with pytest.raises(InvalidArgument, match="larger than maximum input batch size 4"):
            await b.submit(images(5, 1))
    finally:
        b.close()


async def test_batches_are_padded_to_allowed_sizes_and_trimmed() -> None:
    stats: list[BatchStats] = []
    model = Model()
    b = DynamicBatcher(model, params(max_batch_size=8, allowed_batch_sizes=(2, 4, 8)), on_batch=stats.append)
    try:
        out = await b.submit(images(3, 7))
        assert out["classes"].tolist() == [7, 7, 7]
        assert model.seen_sizes == [4]
    finally:
        b.close()
    assert stats[0].size == 3 and stats[0].padded_size == 4


async def test_close_runs_everything_queued_and_refuses_new_work() -> None:
    model = Model()
    model.gate.clear()
    b = DynamicBatcher(model, params(max_batch_size=1, batch_timeout_micros=0))
    futs = [asyncio.ensure_future(b.submit(images(1, float(i)))) for i in range(4)]
    await asyncio.to_thread(model.started.wait, 10)
    closer = asyncio.ensure_future(asyncio.to_thread(b.close, 20))
    await asyncio.sleep(0.05)
    with pytest.raises(Unavailable, match="shutting down"):
        await b.submit(images(1, 9))
    model.gate.set()
    await closer
    assert [(await f)["classes"].tolist() for f in futs] == [[0], [1], [2], [3]]


async def test_direct_scheduler_bounds_in_flight_and_maps_errors() -> None:
    model = Model()
    model.gate.clear()
    d = DirectScheduler(model, num_threads=2, max_in_flight=2)
    try:
        a = asyncio.ensure_future(d.submit(images(1, 1)))
        b = asyncio.ensure_future(d.submit(images(1, 2)))
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable, match="Too many requests"):
            await d.submit(images(1, 3))
        model.gate.set()
        assert [(await a)["classes"].tolist(), (await b)["classes"].tolist()] == [[1], [2]]
        with pytest.raises(Internal, match="poisoned"):
            await d.submit(images(1, 13))
    finally:
        model.gate.set()
        d.close()


async def test_a_failing_on_batch_hook_neither_fails_requests_nor_kills_batch_threads() -> None:
    def broken_hook(_: BatchStats) -> None:
        raise RuntimeError("metrics backend down")

    b = DynamicBatcher(Model(), params(num_batch_threads=1, batch_timeout_micros=0), on_batch=broken_hook)
    d = DirectScheduler(Model(), num_threads=1, max_in_flight=4, on_batch=broken_hook)
    try:
        for i in range(3):  # the single batch thread survives every failed hook
            assert (await asyncio.wait_for(b.submit(images(1, i)), 10))["classes"].tolist() == [i]
            assert (await d.submit(images(1, i)))["classes"].tolist() == [i]
    finally:
        b.close()
        d.close()
