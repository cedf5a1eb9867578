"""The load generator: one measured step, closed or open loop, in one or more worker processes.

Closed loop: N clients, each sends its next request when the previous one answered.
Open loop: requests leave on a schedule (constant or seeded Poisson) whether or not earlier ones have
answered; latency counts from the INTENDED send time (no coordinated omission) and the service time
(actual send -> response) is kept beside it. The dispatcher measures its own lateness against the
schedule, so a generator that cannot keep up marks the step invalid instead of blaming the server.

Clients: REST closed loop on raw sockets (rawhttp.py, no asyncio per request); REST open loop on
asyncio streams; gRPC on grpc.aio.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import multiprocessing as mp
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gateway.loadtest import histograms as H
from gateway.loadtest import rawhttp
from gateway.loadtest.data import BodySet
from gateway.loadtest.targets import (
    ERR_PROTOCOL,
    ERR_WRONG_ANSWER,
    ERR_WRONG_BATCH,
    GrpcClient,
    HttpConnection,
    RequestFailed,
    Target,
    parse_rest_classes,
)


@dataclass(frozen=True)
class StepSpec:
    target: Target
    loop: str = "closed"  # closed | open
    concurrency: int = 4
    rate: float = 100.0  # open loop, requests/s over all workers
    arrival: str = "poisson"  # poisson | constant
    connections: int = 64  # open loop: connection cap over all workers (requests queue for one beyond it)
    duration_s: float = 5.0
    requests: int | None = None  # stop after this many (over all workers), whichever comes first
    timeout_s: float = 10.0
    seed: int = 0
    block_s: float = 1.0
    max_lag_ms: float = 50.0  # scheduling-lag p99 above this marks an open-loop step invalid
    min_rate_fraction: float = 0.95  # an open-loop step must send at least this share of its schedule
    worker_index: int = 0
    worker_count: int = 1
    start_at: float | None = None  # perf_counter() time shared by all workers (CLOCK_MONOTONIC on Linux)
    # An answer whose classes disagree with the golden predictions is an error (wrong_answer). Set only
    # when those predictions are the served version's (runner.golden_rule); else it lowers
    # golden_agreement and nothing more.
    check_golden: bool = False

    def for_worker(self, index: int, count: int, start_at: float) -> StepSpec:
        return replace(self, worker_index=index, worker_count=count, start_at=start_at)


# (classes or None when the batch size is wrong, images, correct, golden checked, golden agreeing)
AnswerCheck = tuple[list[int] | None, int, int, int, int]


def check_answer(body_idx: int, bodies: BodySet, classes: list[int]) -> AnswerCheck:
    """An answer's classes against the labels (accuracy under load) and the golden predictions."""
    expected = bodies.expected_labels[body_idx]
    if len(classes) != len(expected):
        return None, 0, 0, 0, 0
    correct = sum(1 for a, b in zip(classes, expected, strict=True) if a == b)
    golden_checked = golden_agree = 0
    if bodies.expected_classes is not None:
        golden = bodies.expected_classes[body_idx]
        golden_checked = len(classes)
        golden_agree = sum(1 for a, b in zip(classes, golden, strict=True) if a == b)
    return classes, len(classes), correct, golden_checked, golden_agree


class _Recorder:
    """Everything one worker learns in one step."""

    def __init__(self, spec: StepSpec, start: float):
        self.spec = spec
        self.start = start
        # Raw samples during the step (a list append is ~50 ns); histograms are filled after it, so
        # the hot loop spends its CPU on requests, not on bookkeeping.
        self.lat_s: list[float] = []  # open loop: from intended send time; closed: = service
        self.svc_s: list[float] = []
        self.when_s: list[float] = []  # offset of the (intended) send from the step start, for blocks
        self.lag_s: list[float] = []
        self.block_errors: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.ok = 0
        self.sent = 0
        self.scheduled = 0
        self.images = 0
        self.correct = 0
        self.golden_agree = 0
        self.golden_checked = 0
        self.predictions: dict[int, list[int]] = {}
        self.aborted: str | None = None
        self.last_done = start

    def record(
        self,
        body_idx: int,
        bodies: BodySet,
        when: float,
        sent: float,
        done: float,
        classes: list[int] | None,
        error: RequestFailed | None,
    ) -> None:
        if done > self.last_done:
            self.last_done = done
        if error is not None:
            self._error(error.kind, when, str(error))
            return
        assert classes is not None
        self.record_checked(body_idx, when, sent, done, check_answer(body_idx, bodies, classes))

    def _error(self, kind: str, when: float, sample: str) -> None:
        self.errors[kind] += 1
        self.block_errors[int(max(when - self.start, 0.0) / self.spec.block_s)] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(sample[:300])

    def record_checked(self, body_idx: int, when: float, sent: float, done: float, check: AnswerCheck) -> None:
        """An answered 200 whose check_answer() is known (the same body answered the same before).

        A well-formed answer that is wrong is a failed request, like any other error: an answer with
        the wrong number of classes always, one whose classes disagree with the golden predictions
        when the step checks them (spec.check_golden). Labels (accuracy) are never used for this: a
        correct model gets some labels wrong.
        """
        if done > self.last_done:
            self.last_done = done
        classes, images, correct, golden_checked, golden_agree = check
        if classes is None:
            self._error(ERR_WRONG_BATCH, when, f"{ERR_WRONG_BATCH}: not one class per image sent")
            return
        self.images += images
        self.correct += correct
        self.golden_checked += golden_checked
        self.golden_agree += golden_agree
        self.predictions.setdefault(body_idx, classes)
        if self.spec.check_golden and golden_agree < golden_checked:
            sample = (  # built only while samples are still wanted: a broken model fails every answer
                f"{ERR_WRONG_ANSWER}: classes {classes} disagree with the golden predictions on "
                f"{golden_checked - golden_agree} of {golden_checked} images"
                if len(self.error_samples) < 5
                else ""
            )
            self._error(ERR_WRONG_ANSWER, when, sample)
            return
        self.ok += 1
        self.lat_s.append(done - when)
        self.svc_s.append(done - sent)
        self.when_s.append(when - self.start)

    def result(self, end: float) -> dict[str, Any]:
        elapsed = max(end, self.last_done) - self.start
        lat = np.asarray(self.lat_s, dtype=np.float64)
        block_idx = (np.maximum(np.asarray(self.when_s, dtype=np.float64), 0.0) / self.spec.block_s).astype(np.int64)
        n_blocks = int(max(block_idx.max(initial=-1), max(self.block_errors, default=-1))) + 1
        blocks = []
        for i in range(n_blocks):
            sel = lat[block_idx == i]
            blocks.append(
                {
                    "index": i,
                    "hist": H.encode(H.from_seconds(sel)) if len(sel) else "",
                    "errors": self.block_errors.get(i, 0),
                }
            )
        return {
            "target": self.spec.target.name,
            "loop": self.spec.loop,
            "ok": self.ok,
            "sent": self.sent,
            "scheduled": self.scheduled,
            "errors": dict(self.errors),
            "error_samples": self.error_samples,
            "elapsed_s": elapsed,
            "latency": H.encode(H.from_seconds(lat)),
            "service": H.encode(H.from_seconds(np.asarray(self.svc_s))),
            "lag": H.encode(H.from_seconds(np.asarray(self.lag_s))),
            "blocks": blocks,
            "aborted": self.aborted,
            "images": self.images,
            "correct": self.correct,
            "golden_checked": self.golden_checked,
            "golden_agree": self.golden_agree,
            "predictions": {str(k): v for k, v in self.predictions.items()},
        }


def _body_sequence(spec: StepSpec, bodies: BodySet) -> np.ndarray:
    # Same seed -> same sequence for every target: the backends answer the same requests in order.
    n = spec.requests if spec.requests else max(int(spec.rate * spec.duration_s * 1.2) + 16, 4096)
    return bodies.sequence(spec.seed, min(n, 1_000_000))


def _uses_raw_sockets(spec: StepSpec) -> bool:
    # REST closed loop: the epoll/blocking-socket core of rawhttp, whose per-request cost is a fraction
    # of asyncio's (futures, tasks, StreamReader). The open loop stays on asyncio, whose timers keep the
    # schedule without spinning a core; gRPC stays on grpc.aio.
    return spec.target.protocol == "rest" and spec.loop == "closed"


def run_step_blocking(spec: StepSpec, bodies: BodySet, cancel: threading.Event | None = None) -> dict[str, Any]:
    """Run one step in this thread (no event loop of the caller's is used) and return its result."""
    if _uses_raw_sockets(spec):
        return _run_raw_closed_loop(spec, bodies, cancel)
    with asyncio.Runner(loop_factory=_loop_factory(spec.target)) as runner:
        return runner.run(run_step(spec, bodies, cancel))


async def run_step(spec: StepSpec, bodies: BodySet, cancel: threading.Event | None = None) -> dict[str, Any]:
    """Run one step from an event loop and return its (JSON-able) result."""
    if _uses_raw_sockets(spec):
        # The raw-socket loop blocks its thread: keep it off the caller's event loop.
        return await asyncio.to_thread(_run_raw_closed_loop, spec, bodies, cancel)
    start = spec.start_at if spec.start_at is not None else time.perf_counter() + 0.05
    now = time.perf_counter()
    if start > now:
        await asyncio.sleep(start - now)
    rec = _Recorder(spec, start)
    grpc_client = GrpcClient(spec.target.addresses, spec.timeout_s) if spec.target.protocol == "grpc" else None
    try:
        if spec.loop == "closed":
            await _closed_loop(spec, bodies, rec, grpc_client, cancel)
        elif spec.loop == "open":
            await _open_loop(spec, bodies, rec, grpc_client, cancel)
        else:
            raise ValueError(f"unknown loop {spec.loop!r}")
    finally:
        if grpc_client is not None:
            await grpc_client.close()
    return rec.result(time.perf_counter())


def _run_raw_closed_loop(spec: StepSpec, bodies: BodySet, cancel: threading.Event | None) -> dict[str, Any]:
    start = spec.start_at if spec.start_at is not None else time.perf_counter() + 0.05
    now = time.perf_counter()
    if start > now:
        time.sleep(start - now)
    rec = _Recorder(spec, start)
    seq = _body_sequence(spec, bodies).tolist()
    per_worker = _share(spec.concurrency, spec.worker_index, spec.worker_count)
    limit = _share(spec.requests, spec.worker_index, spec.worker_count) if spec.requests else None
    # Worker k takes request numbers k, k+W, k+2W...: the merged run sends the sequence in order.
    numbers = itertools.count(spec.worker_index, spec.worker_count)
    addrs = spec.target.addresses
    encoded = {a: rawhttp.encode_posts(a, spec.target.path, bodies.rest, spec.target.headers) for a in addrs}
    # Connection i of worker k goes to replica (k + i) mod R, as the asyncio client's did.
    slots = [addrs[(spec.worker_index + i) % len(addrs)] for i in range(per_worker)]

    def issue() -> int:
        if limit is not None and rec.sent >= limit:
            return -1
        rec.sent += 1
        return seq[next(numbers) % len(seq)]

    # Answers already checked, by (body, answer bytes): a server answers the same body the same way
    # almost always, and parsing plus checking it again would cost the generator's core ~2 us each.
    checked: dict[tuple[int, bytes], AnswerCheck] = {}

    def complete(idx: int, sent: float, done: float, status: int, body: bytes) -> None:
        # Runs after the response's timestamp was taken: checking the answer is not latency.
        if status != 200:
            error = RequestFailed(f"http_{status}", body[:200].decode(errors="replace"))
            rec.record(idx, bodies, sent, sent, done, None, error)
            return
        check = checked.get((idx, body))
        if check is None:
            try:
                classes = parse_rest_classes(body)
            except (ValueError, KeyError, TypeError):
                error = RequestFailed(ERR_PROTOCOL, f"unexpected body: {body[:120]!r}")
                rec.record(idx, bodies, sent, sent, done, None, error)
                return
            check = check_answer(idx, bodies, classes)
            if len(checked) < 4096:  # bounded: a server whose answers vary must not grow it forever
                checked[(idx, body)] = check
        rec.record_checked(idx, sent, sent, done, check)

    def fail(idx: int, started: float, done: float, error: RequestFailed) -> None:
        rec.record(idx, bodies, started, started, done, None, error)

    loop = rawhttp.ClosedLoop([(a, encoded[a]) for a in slots], spec.timeout_s, issue, complete, fail)
    loop.run(rec.start + spec.duration_s, cancel)
    return rec.result(time.perf_counter())


def _http_factory(spec: StepSpec):
    counter = itertools.count(spec.worker_index)

    def make() -> HttpConnection:
        addrs = spec.target.addresses
        return HttpConnection(addrs[next(counter) % len(addrs)], spec.target.path, spec.timeout_s, spec.target.headers)

    return make


async def _send(
    conn: HttpConnection | None, grpc_client: GrpcClient | None, bodies: BodySet, body_idx: int
) -> tuple[float, Any]:
    """One request over whichever client this step uses; returns (actual send time, classes)."""
    if conn is not None:
        return await conn.request(bodies.rest[body_idx])
    assert grpc_client is not None
    return await grpc_client.request(bodies.grpc[body_idx])


async def _closed_loop(
    spec: StepSpec, bodies: BodySet, rec: _Recorder, grpc_client: GrpcClient | None, cancel: threading.Event | None
) -> None:
    # gRPC (REST closed loops take _run_raw_closed_loop; this still serves REST if called directly).
    seq = _body_sequence(spec, bodies)
    end = rec.start + spec.duration_s
    per_worker = _share(spec.concurrency, spec.worker_index, spec.worker_count)
    limit = _share(spec.requests, spec.worker_index, spec.worker_count) if spec.requests else None
    # Worker k takes request numbers k, k+W, k+2W...: the merged run sends the sequence in order.
    numbers = itertools.count(spec.worker_index, spec.worker_count)
    make = _http_factory(spec)

    async def client() -> None:
        conn = make() if grpc_client is None else None
        try:
            while True:
                if time.perf_counter() >= end or (cancel is not None and cancel.is_set()):
                    return
                if limit is not None and rec.sent >= limit:
                    return
                i = next(numbers)
                body_idx = int(seq[i % len(seq)])
                rec.sent += 1
                t0 = time.perf_counter()
                try:
                    sent, classes = await _send(conn, grpc_client, bodies, body_idx)
                    rec.record(body_idx, bodies, sent, sent, time.perf_counter(), classes, None)
                except RequestFailed as exc:
                    rec.record(body_idx, bodies, t0, t0, time.perf_counter(), None, exc)
                    if exc.kind == "connect":
                        await asyncio.sleep(0.05)  # a refused connection must not become a busy loop
        finally:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(client() for _ in range(per_worker)))


def _share(total: int, index: int, count: int) -> int:
    return total // count + (1 if index < total % count else 0)


def schedule_offsets(spec: StepSpec) -> np.ndarray:
    """This worker's intended send times, in seconds from the step start.

    Poisson: each worker draws its own seeded exponential gaps at rate/W (merged streams of Poisson
    processes are Poisson). Constant: the W workers interleave on one global grid.
    """
    w, k = spec.worker_count, spec.worker_index
    if spec.rate <= 0:
        raise ValueError("open loop needs a positive rate")
    total = spec.requests if spec.requests else math.ceil(spec.rate * spec.duration_s)
    mine = _share(total, k, w)
    if spec.arrival == "constant":
        offsets = (np.arange(mine) * w + k) / spec.rate
    elif spec.arrival == "poisson":
        rng = np.random.default_rng([spec.seed, k])
        offsets = np.cumsum(rng.exponential(w / spec.rate, size=mine))
    else:
        raise ValueError(f"unknown arrival {spec.arrival!r}")
    if not spec.requests:
        offsets = offsets[offsets < spec.duration_s]
    return offsets


async def _open_loop(
    spec: StepSpec, bodies: BodySet, rec: _Recorder, grpc_client: GrpcClient | None, cancel: threading.Event | None
) -> None:
    seq = _body_sequence(spec, bodies)
    offsets = schedule_offsets(spec)
    rec.scheduled = len(offsets)
    cap = max(_share(spec.connections, spec.worker_index, spec.worker_count), 1)
    make = _http_factory(spec)
    idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
    created: list[HttpConnection] = []
    tasks: set[asyncio.Task[None]] = set()

    async def fire(i: int, intended: float) -> None:
        body_idx = int(seq[i % len(seq)])
        conn: HttpConnection | None = None
        if grpc_client is None:
            if idle.empty() and len(created) < cap:
                conn = make()
                created.append(conn)
            else:
                # Beyond the connection cap a request waits for a free connection; that wait is part
                # of its latency from the intended time (as in wrk2), not of its service time.
                conn = await idle.get()
        t0 = time.perf_counter()
        try:
            sent, classes = await _send(conn, grpc_client, bodies, body_idx)
            rec.record(body_idx, bodies, intended, sent, time.perf_counter(), classes, None)
        except RequestFailed as exc:
            rec.record(body_idx, bodies, intended, t0, time.perf_counter(), None, exc)
        finally:
            if conn is not None:
                idle.put_nowait(conn)

    number = spec.worker_index
    # Hopelessly behind (the generator, not the server, is the limit): stop instead of piling up
    # requests; the step is then invalid because it sent less than its schedule.
    abort_lag = max(1.0, 20 * spec.max_lag_ms / 1000.0)
    behind = 0
    for off in offsets:
        if cancel is not None and cancel.is_set():
            break
        intended = rec.start + float(off)
        delay = intended - time.perf_counter()
        if delay > 0:
            behind = 0
            await asyncio.sleep(delay)
        else:
            if -delay > abort_lag:
                rec.aborted = f"scheduling lag reached {-delay:.1f} s"
                break
            behind += 1
            if behind % 32 == 0:
                await asyncio.sleep(0)  # let answers be read even while catching up
        rec.lag_s.append(max(time.perf_counter() - intended, 0.0))
        rec.sent += 1
        task = asyncio.create_task(fire(number, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        number += spec.worker_count
    if tasks:
        # Late answers still count (their latency is the point); give up after the request timeout.
        _done, pending = await asyncio.wait(set(tasks), timeout=spec.timeout_s + 1.0)
        for task in pending:
            task.cancel()
    for conn in created:
        conn.close()


# ---------------------------------------------------------------------------------------------------
# Merging worker results and judging the generator.


def merge_results(parts: list[dict[str, Any]], spec: StepSpec) -> dict[str, Any]:
    """Combine workers' results: histograms added (lossless), counters summed, validity judged."""
    out: dict[str, Any] = {"target": spec.target.name, "loop": spec.loop, "workers": len(parts)}
    for key in ("ok", "sent", "scheduled", "images", "correct", "golden_checked", "golden_agree"):
        out[key] = sum(p[key] for p in parts)
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    out["errors"] = dict(errors)
    out["failed"] = sum(errors.values())
    out["error_samples"] = [s for p in parts for s in p["error_samples"]][:5]
    out["aborted"] = next((p["aborted"] for p in parts if p.get("aborted")), None)
    out["elapsed_s"] = max(p["elapsed_s"] for p in parts)
    for key in ("latency", "service", "lag"):
        out[key] = H.encode(H.merge(p[key] for p in parts))
    n_blocks = max(len(p["blocks"]) for p in parts)
    blocks = []
    for i in range(n_blocks):
        hists = [p["blocks"][i]["hist"] for p in parts if i < len(p["blocks"]) and p["blocks"][i]["hist"]]
        errs = sum(p["blocks"][i]["errors"] for p in parts if i < len(p["blocks"]))
        blocks.append({"index": i, "hist": H.encode(H.merge(hists)), "errors": errs})
    out["blocks"] = blocks
    preds: dict[str, list[int]] = {}
    for p in parts:
        preds.update(p["predictions"])
    out["predictions"] = preds
    out.update(judge(out, spec))
    return out


def judge(res: dict[str, Any], spec: StepSpec) -> dict[str, Any]:
    """Throughput, summaries, and whether the generator kept its schedule (open loop)."""
    lat = H.decode(res["latency"])
    svc = H.decode(res["service"])
    elapsed = max(res["elapsed_s"], 1e-9)
    # Measured over the step's planned duration when it ran to the end: answers that straggle in
    # after the schedule ended must not stretch (and so dilute) the rate.
    span = spec.duration_s if not spec.requests and res["elapsed_s"] >= spec.duration_s else elapsed
    info: dict[str, Any] = {
        "throughput_rps": res["ok"] / span,
        "latency_ms": H.summary_ms(lat),
        "service_ms": H.summary_ms(svc),
        "valid": True,
        "invalid_reasons": [],
    }
    if spec.loop == "open":
        lag = H.decode(res["lag"])
        lag_p99 = lag.get_value_at_percentile(99.0) / 1000.0 if lag.get_total_count() else 0.0
        info["lag_ms"] = {"p99": lag_p99, "max": lag.get_max_value() / 1000.0}
        info["offered_rps"] = spec.rate
        reasons = []
        if lag_p99 > spec.max_lag_ms:
            reasons.append(
                f"generator fell behind its schedule: scheduling lag p99 {lag_p99:.1f} ms > {spec.max_lag_ms} ms"
                " (use more workers or a lower rate)"
            )
        if res["scheduled"] and res["sent"] < spec.min_rate_fraction * res["scheduled"]:
            why = f" ({res['aborted']}, step stopped)" if res.get("aborted") else ""
            reasons.append(f"generator sent {res['sent']} of {res['scheduled']} scheduled requests{why}")
        if reasons:
            info["valid"] = False
            info["invalid_reasons"] = reasons
    return info


# ---------------------------------------------------------------------------------------------------
# Worker processes.


def _loop_factory(target: Target):
    # uvloop (installed with uvicorn[standard]) makes the REST client cheaper; grpc.aio keeps asyncio.
    if target.protocol == "rest":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop
    return None


def _worker_main(conn: Any, bodies: BodySet) -> None:
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        spec: StepSpec = msg[1]
        try:
            conn.send(("ok", run_step_blocking(spec, bodies)))
        except Exception as exc:  # reported to the parent, which fails the run with the message
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class StepCancelled(RuntimeError):
    pass


class WorkerPool:
    """Long-lived generator processes (spawned once per run, not once per step)."""

    def __init__(self, workers: int, bodies: BodySet):
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, bodies), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, spec: StepSpec, cancel: threading.Event | None = None, lead_s: float = 0.2) -> dict[str, Any]:
        start_at = time.perf_counter() + lead_s
        n = len(self.conns)
        for i, conn in enumerate(self.conns):
            conn.send(("step", spec.for_worker(i, n, start_at)))
        parts: list[dict[str, Any] | None] = [None] * n
        deadline = start_at + spec.duration_s + spec.timeout_s + 30.0
        while any(p is None for p in parts):
            if cancel is not None and cancel.is_set():
                self.close(kill=True)
                raise StepCancelled("cancelled")
            if time.perf_counter() > deadline:
                self.close(kill=True)
                raise RuntimeError("load generator workers did not finish in time")
            for i, conn in enumerate(self.conns):
                if parts[i] is None and conn.poll(0.05):
                    status, payload = conn.recv()
                    if status != "ok":
                        self.close(kill=True)
                        raise RuntimeError(f"load generator worker failed: {payload}")
                    parts[i] = payload
            for proc in self.procs:
                if not proc.is_alive() and proc.exitcode not in (0, None):
                    self.close(kill=True)
                    raise RuntimeError(f"load generator worker died (exit code {proc.exitcode})")
        return merge_results([p for p in parts if p is not None], spec)

    def close(self, kill: bool = False) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if kill:
                proc.kill()
            else:
                with contextlib.suppress(OSError, BrokenPipeError):
                    conn.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self.conns, self.procs = [], []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_step_inline(spec: StepSpec, bodies: BodySet, cancel: threading.Event | None = None) -> dict[str, Any]:
    """One step in this thread (tests, and runs with workers=0), merged as a one-worker run."""
    return merge_results([run_step_blocking(spec, bodies, cancel)], spec)


__all__ = [
    "StepCancelled",
    "StepSpec",
    "WorkerPool",
    "merge_results",
    "run_step",
    "run_step_blocking",
    "run_step_inline",
]
