"""Replica bookkeeping and the choice of replica per call (least outstanding requests or round robin).

Passive health lives here too: a replica whose call fails at the transport level is ejected for a
cool-down and returns once an active probe (health.py) has answered after it, or at once when a call
sent to it while it was out (every replica out: panic mode) is answered.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Policy = Literal["least_outstanding", "round_robin"]
# Ejections in a row double the cool-down up to this factor, so a flapping replica stays out longer.
MAX_BACKOFF_FACTOR = 8


@dataclass(eq=False)
class Replica:
    backend: str
    address: str
    outstanding: int = 0
    # None until the first probe answers: unknown replicas take traffic, so start-up needs no probe.
    healthy: bool | None = None
    ejected: bool = False
    ejected_until: float = 0.0
    consecutive_failures: int = 0
    # Ejections with no answered call between them: what doubles the cool-down. Failures of calls made
    # while it is already out do not count again (with one replica every call in an outage would, and it
    # stayed out 40 s after coming back).
    ejections_in_row: int = 0
    ejection: int = 0  # numbers the ejections, so a call can tell whether it was sent during this one
    loaded_version: int | None = None
    last_error: str | None = None
    requests: int = 0
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    # The tasks with a call on this replica now, and those of them being moved to another (pool._move_off).
    inflight: dict[asyncio.Task[Any], int] = field(default_factory=dict)  # task -> tries it has left
    moved: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def available(self) -> bool:
        return not self.ejected and self.healthy is not False

    def record_success(self, latency_ms: float, sent_during: int = -1) -> None:
        """An answered call; `sent_during` is `ejection` as it was when the call was sent."""
        self.requests += 1
        self.consecutive_failures = 0
        self.latencies_ms.append(latency_ms)
        if not self.ejected:
            self.ejections_in_row = 0
        elif sent_during == self.ejection:
            # Sent while it was out and answered: it is back, whatever the cool-down says. (A call sent
            # before the ejection proves nothing about the failure that caused it, so it changes nothing.)
            self.ejected = False
            self.ejections_in_row = 0

    def record_failure(self, reason: str, cooldown_s: float, now: float | None = None) -> None:
        """Transport-level failure: out of rotation for the cool-down, back after a good probe."""
        now = time.monotonic() if now is None else now
        self.requests += 1
        self.errors += 1
        self.consecutive_failures += 1
        self.last_error = reason
        factor = min(2**self.ejections_in_row, MAX_BACKOFF_FACTOR)  # this ejection's, if it is a new one
        if not self.ejected:
            self.ejected = True
            self.ejection += 1
            self.ejections_in_row += 1
            # A new ejection's own cool-down, not what is left of an earlier one that ended early.
            self.ejected_until = now + cooldown_s * factor
        else:
            factor = min(2 ** (self.ejections_in_row - 1), MAX_BACKOFF_FACTOR)
            self.ejected_until = max(self.ejected_until, now + cooldown_s * factor)

    def record_probe(self, ok: bool, version: int | None, error: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.healthy = ok
        if ok:
            self.loaded_version = version
            if self.ejected and now >= self.ejected_until:
                self.ejected = False
        else:
            self.last_error = error

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        recent: dict[str, Any] = {"count": len(lat)}
        if lat:
            recent |= {
                "p50_ms": round(statistics.median(lat), 3),
                "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3),
                "mean_ms": round(sum(lat) / len(lat), 3),
            }
        return {
            "address": self.address,
            "healthy": self.healthy,
            "ejected": self.ejected,
            "in_rotation": self.available,
            "loaded_version": self.loaded_version,
            "outstanding": self.outstanding,
            "requests": self.requests,
            "errors": self.errors,
            "last_error": self.last_error,
            "recent_latency": recent,
        }


class Balancer:
    """Picks a replica among those in rotation; if none is, tries the others anyway (panic mode,
    as Envoy does) so a wrong health verdict can never take a whole backend down by itself."""

    def __init__(self, replicas: Sequence[Replica], policy: Policy = "least_outstanding") -> None:
        if not replicas:
            raise ValueError("a balancer needs at least one replica")
        self.replicas = list(replicas)
        self.policy = policy
        self._next = 0
        self._pick: Callable[[list[Replica]], Replica] = (
            self._least_outstanding if policy == "least_outstanding" else self._round_robin
        )

    def pick(self, exclude: Sequence[Replica] = ()) -> Replica | None:
        """The replica for the next call, or None when every replica is in `exclude`."""
        if len(self.replicas) == 1 and not exclude:
            return self.replicas[0]  # the common single-replica case, without list building
        candidates = [r for r in self.replicas if r.available and r not in exclude]
        if not candidates:
            candidates = [r for r in self.replicas if r not in exclude]
            if not candidates:
                return None
        return self._pick(candidates)

    def _round_robin(self, candidates: list[Replica]) -> Replica:
        self._next += 1
        return candidates[self._next % len(candidates)]

    def _least_outstanding(self, candidates: list[Replica]) -> Replica:
        # Start the scan at a rotating offset so ties (e.g. all idle) spread evenly across replicas.
        self._next += 1
        n = len(candidates)
        best = candidates[self._next % n]
        for i in range(1, n):
            r = candidates[(self._next + i) % n]
            if r.outstanding < best.outstanding:
                best = r
        return best
