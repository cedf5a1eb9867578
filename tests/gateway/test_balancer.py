"""Replica choice, passive ejection with cool-down, re-admission by probe, retry rules."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.upstreams.balancer import Balancer, Replica
from gateway.upstreams.pool import BackendPool, PredictResult, ReplicaDown
from gateway.validation import from_images


def replicas(n: int) -> list[Replica]:
    return [Replica("torch", f"r{i}") for i in range(n)]


def test_round_robin_cycles_evenly() -> None:
    rs = replicas(3)
    b = Balancer(rs, "round_robin")
    picks = Counter(b.pick().address for _ in range(300))  # type: ignore[union-attr]
    assert picks == {"r0": 100, "r1": 100, "r2": 100}


def test_least_outstanding_prefers_idle_replica_and_spreads_ties() -> None:
    rs = replicas(3)
    rs[0].outstanding, rs[1].outstanding, rs[2].outstanding = 5, 0, 2
    b = Balancer(rs)
    assert all(b.pick() is rs[1] for _ in range(10))
    for r in rs:
        r.outstanding = 0
    assert {b.pick().address for _ in range(6)} == {"r0", "r1", "r2"}  # type: ignore[union-attr]


def test_ejected_replica_gets_no_traffic_until_probe_after_cooldown() -> None:
    rs = replicas(2)
    b = Balancer(rs)
    rs[0].record_failure("refused", cooldown_s=5.0, now=100.0)
    assert rs[0].ejected and not rs[0].available
    assert all(b.pick() is rs[1] for _ in range(10))
    rs[0].record_probe(True, 3, None, now=102.0)  # healthy, but still cooling down
    assert rs[0].ejected
    rs[0].record_probe(True, 3, None, now=105.1)
    assert not rs[0].ejected and rs[0].available and rs[0].loaded_version == 3


def test_cooldown_doubles_for_ejections_in_a_row_and_is_capped() -> None:
    r = Replica("tf", "a")
    now = 0.0
    for expected in (1.0, 2.0, 4.0, 8.0, 8.0):
        r.record_failure("x", cooldown_s=1.0, now=now)
        assert r.ejected and r.ejected_until == now + expected
        now += expected
        r.record_probe(True, 1, None, now=now)  # back in rotation; it fails again at once
        assert not r.ejected
    r.record_success(1.0)
    r.record_failure("x", cooldown_s=1.0, now=now)
    assert r.ejected_until == now + 1.0


def test_failures_while_already_out_extend_the_cooldown_but_do_not_double_it() -> None:
    # One replica, down for a while: every call in the outage fails (panic mode still sends them). Each
    # used to double the cool-down, and the replica stayed out 40 s after it came back.
    r = Replica("tf", "a")
    for t in (0.0, 0.5, 1.0, 1.5):
        r.record_failure("refused", cooldown_s=5.0, now=t)
    assert r.ejected_until == 6.5 and r.ejections_in_row == 1
    r.record_probe(True, 1, None, now=6.6)
    assert not r.ejected


def test_a_call_sent_while_out_and_answered_brings_the_replica_back() -> None:
    r = Replica("tf", "a")
    before = r.ejection
    r.record_failure("refused", cooldown_s=5.0, now=0.0)
    # A call that was already in flight when it was ejected proves nothing about the failure.
    r.record_success(1.0, sent_during=before)
    assert r.ejected
    # One sent during the ejection (panic mode) and answered does.
    r.record_success(1.0, sent_during=r.ejection)
    assert not r.ejected and r.available


def test_a_new_ejection_gets_its_own_cooldown_not_what_is_left_of_an_earlier_one() -> None:
    r = Replica("tf", "a")
    now = 0.0
    for _ in range(4):  # out for 8x the cool-down by now, each time back through a probe
        r.record_failure("refused", cooldown_s=5.0, now=now)
        now = r.ejected_until
        r.record_probe(True, 1, None, now=now)
    r.record_failure("refused", cooldown_s=5.0, now=now)
    assert r.ejected_until == now + 40.0
    r.record_success(1.0, sent_during=r.ejection)  # back at once, 39 s early
    r.record_failure("refused", cooldown_s=5.0, now=now + 1.0)  # a fresh ejection: 5 s, not the old 39
    assert r.ejected_until == now + 6.0


def test_calls_sent_before_an_ejection_do_not_reset_its_backoff() -> None:
    # Under concurrency, calls already in flight when a replica fails still come back answered; they
    # say nothing about the failure and must not undo the doubling.
    r = Replica("tf", "a")
    r.record_failure("refused", cooldown_s=1.0, now=0.0)
    r.record_success(1.0, sent_during=r.ejection - 1)
    r.record_probe(True, 1, None, now=1.0)
    r.record_failure("refused", cooldown_s=1.0, now=1.0)
    assert r.ejected_until == 3.0  # doubled: the second ejection in a row


def test_failed_probe_takes_replica_out_and_panic_mode_still_answers() -> None:
    rs = replicas(2)
    b = Balancer(rs)
    rs[0].record_probe(False, None, "down")
    rs[1].record_probe(False, None, "down")
    # Every replica looks bad: try them anyway rather than refuse (the verdict may be stale).
    assert b.pick() in rs
    assert b.pick(exclude=rs) is None


class FakeTransport:
    """In-process transport: the BackendPool logic under test is real; the network is not needed here."""

    protocol = "rest"

    def __init__(self, behaviour: dict[str, str]) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []

    async def predict(self, replica, model, version, inp, raw_body):  # type: ignore[no-untyped-def]
        self.calls.append(replica.address)
        kind = self.behaviour.get(replica.address, "ok")
        if kind == "down":
            raise ReplicaDown("connection refused")
        if kind == "timeout":
            raise UpstreamTimeout("timed out")
        # hang: a frozen replica, as far as this call can tell; slow: a busy one that answers
        await asyncio.sleep({"hang": 5.0, "slow": 0.3}.get(kind, 0))
        return PredictResult(b"{}", None, 0.0, replica.address, inp.format)

    async def probe(self, replica, model):  # type: ignore[no-untyped-def]
        if self.behaviour.get(replica.address) in ("hang", "probe_fails"):
            raise TimeoutError("probe timed out")
        return 7


def pool(rs: list[Replica], behaviour: dict[str, str], retry: bool = True) -> tuple[BackendPool, FakeTransport]:
    t = FakeTransport(behaviour)
    return BackendPool("torch", t, rs, Balancer(rs), eject_cooldown_s=5.0, retry=retry), t  # type: ignore[arg-type]


REQ = from_images(np.zeros((1, 28, 28, 1), np.float32))


async def test_connection_error_retried_once_on_another_replica_and_ejected() -> None:
    rs = replicas(2)
    rs[0].loaded_version = rs[1].loaded_version = 7
    p, t = pool(rs, {"r0": "down"})
    results = [await p.predict("cnn", None, REQ, None) for _ in range(4)]
    assert all(r.replica == "r1" for r in results)
    assert all(r.version == "7" for r in results)  # from the probe when the answer names none
    assert rs[0].ejected and rs[0].errors == 1
    assert t.calls.count("r0") == 1  # ejected after the first failure: no further traffic


async def test_all_replicas_down_is_503_after_one_retry() -> None:
    rs = replicas(3)
    p, t = pool(rs, {"r0": "down", "r1": "down", "r2": "down"})
    with pytest.raises(UpstreamUnavailable, match="torch backend unavailable"):
        await p.predict("cnn", None, REQ, None)
    assert len(t.calls) == 2


async def test_timeout_is_not_retried() -> None:
    rs = replicas(2)
    p, t = pool(rs, {"r0": "timeout", "r1": "timeout"})
    with pytest.raises(UpstreamTimeout):
        await p.predict("cnn", None, REQ, None)
    assert len(t.calls) == 1


async def test_retry_disabled_by_setting() -> None:
    rs = replicas(2)
    p, t = pool(rs, {"r0": "down", "r1": "down"}, retry=False)
    with pytest.raises(UpstreamUnavailable):
        await p.predict("cnn", None, REQ, None)
    assert len(t.calls) == 1


async def test_outstanding_counts_return_to_zero() -> None:
    rs = replicas(2)
    p, _ = pool(rs, {"r0": "timeout"})
    await asyncio.gather(*(p.predict("cnn", None, REQ, None) for _ in range(20)), return_exceptions=True)
    assert [r.outstanding for r in rs] == [0, 0]


async def test_calls_held_by_a_replica_that_fails_its_probe_move_to_another() -> None:
    rs = replicas(2)
    p, t = pool(rs, {"r0": "hang"})
    p.balancer._next = -1  # the first pick is r0
    call = asyncio.create_task(p.predict("cnn", None, REQ, None))
    await asyncio.sleep(0.01)
    assert call in rs[0].inflight and not call.done()
    await p._probe(rs[0], "cnn")  # r0 stops answering its probe while r1 is in rotation
    result = await asyncio.wait_for(call, 1.0)  # not the 5 s r0 would have held it
    assert result.replica == "r1" and t.calls == ["r0", "r1"]
    assert not rs[0].inflight and not rs[0].moved and rs[0].outstanding == 0


async def test_a_call_on_its_last_try_is_not_moved() -> None:
    # r0 refuses (first try), r1 is slow but answering: a probe r1 misses must not turn the call into an
    # immediate 503 (a move would use up its last try), so it stays and is answered.
    rs = replicas(2)
    p, t = pool(rs, {"r0": "down", "r1": "slow"})
    p.balancer._next = -1
    call = asyncio.create_task(p.predict("cnn", None, REQ, None))
    await asyncio.sleep(0.01)
    assert call in rs[1].inflight and rs[1].inflight[call] == 0
    t.behaviour = {"r1": "probe_fails"}  # r0 back; r1 misses one probe while its call runs
    await p._probe(rs[0], "cnn")
    await p._probe(rs[1], "cnn")
    assert not call.cancelled() and call not in rs[1].moved
    assert (await asyncio.wait_for(call, 6.0)).replica == "r1"


async def test_without_another_replica_in_rotation_nothing_moves() -> None:
    rs = replicas(1)
    p, _ = pool(rs, {"r0": "hang"})
    call = asyncio.create_task(p.predict("cnn", None, REQ, None))
    await asyncio.sleep(0.01)
    await p._probe(rs[0], "cnn")
    await asyncio.sleep(0.01)
    assert not call.done() and not rs[0].moved  # it may yet answer; its own time limit decides
    call.cancel()
