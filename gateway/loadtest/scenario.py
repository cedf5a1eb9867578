"""Scenario files (YAML or JSON): what to measure, with what load, for how long, judged how."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.loadtest.targets import TARGET_NAMES


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Far above what any generator here can send (tens of thousands of requests/s per machine): a higher
# rate is a typo, and its schedule (one float per request) would not even fit in memory.
MAX_RATE = 1_000_000.0


class LoadSpec(_Model):
    loop: Literal["closed", "open"] = "closed"
    concurrency: int = Field(default=4, ge=1)  # closed loop: clients
    rate: float = Field(default=100.0, gt=0, le=MAX_RATE)  # open loop: requests/s
    arrival: Literal["poisson", "constant"] = "poisson"
    connections: int = Field(default=64, ge=1)  # open loop: connection cap
    batch_size: int = Field(default=1, ge=1, le=1024)
    timeout_s: float = Field(default=10.0, gt=0)


class SweepSpec(_Model):
    concurrency: list[Annotated[int, Field(ge=1)]] | None = None  # closed loop levels
    rates: list[Annotated[float, Field(gt=0, le=MAX_RATE)]] | None = None  # open loop levels

    @model_validator(mode="after")
    def _one(self) -> SweepSpec:
        if bool(self.concurrency) == bool(self.rates):
            raise ValueError("a sweep names exactly one of `concurrency` or `rates`")
        return self


class SloSpec(_Model):
    p99_ms: float = Field(gt=0)
    rate_low: float = Field(default=10.0, gt=0, le=MAX_RATE)
    rate_high: float = Field(default=1000.0, gt=0, le=MAX_RATE)
    iterations: int = Field(default=6, ge=1, le=20)
    step_duration_s: float = Field(default=5.0, gt=0)
    max_error_rate: float = Field(default=0.0, ge=0, le=1)
    # A step counts only when both halves agree on pass/fail; an unstable step is retried this often.
    retries: int = Field(default=1, ge=0, le=5)

    @model_validator(mode="after")
    def _range(self) -> SloSpec:
        if not self.rate_low < self.rate_high:
            raise ValueError(f"slo rate_low ({self.rate_low:g}) must be below rate_high ({self.rate_high:g})")
        return self


class Thresholds(_Model):
    p99_ms: float | None = Field(default=None, gt=0)  # fail when any target's p99 exceeds this
    error_rate: float | None = Field(default=0.0, ge=0, le=1)  # fail when any target's failed share exceeds this


class Scenario(_Model):
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    mode: Literal["compare", "sweep", "slo_search"] = "compare"
    targets: list[str] = Field(default_factory=lambda: ["torch", "tf"])
    baseline: str | None = None  # the target others are compared with (default: the first)
    # Targets dropped (with a note in the report) instead of failing the run when they do not answer.
    optional_targets: list[str] = Field(default_factory=list)
    load: LoadSpec = Field(default_factory=lambda: LoadSpec())
    warmup_s: float = Field(default=5.0, ge=0)
    duration_s: float = Field(default=8.0, gt=0)  # per round
    requests: int | None = Field(default=None, ge=1)  # per round instead of (or as well as) a duration
    rounds: int = Field(default=5, ge=1)
    workers: int = Field(default=1, ge=1, le=64)
    seed: int = 42
    block_s: float = Field(default=1.0, gt=0)
    max_lag_ms: float = Field(default=50.0, gt=0)
    bootstrap: int = Field(default=1000, ge=100, le=20000)
    pool_size: int = Field(default=256, ge=1, le=10000)  # distinct pre-encoded bodies
    sweep: SweepSpec | None = None
    slo: SloSpec | None = None
    thresholds: Thresholds = Field(default_factory=lambda: Thresholds())
    resources: Literal["auto", "psutil", "docker", "none"] = "auto"
    pids: dict[str, int] = Field(default_factory=dict)  # backend ("torch"/"tf") -> PID, for psutil
    containers: dict[str, str] = Field(default_factory=dict)  # backend -> container name, for docker

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if not self.targets:
            raise ValueError("a scenario needs at least one target")
        for t in self.targets:
            if t not in TARGET_NAMES:
                raise ValueError(f"unknown target {t!r}; known: {', '.join(TARGET_NAMES)}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("targets are listed twice")
        if self.baseline is not None and self.baseline not in self.targets:
            raise ValueError(f"baseline {self.baseline!r} is not among the targets")
        if self.mode == "sweep" and self.sweep is None:
            raise ValueError("mode sweep needs a `sweep` section")
        if self.mode == "slo_search" and self.slo is None:
            raise ValueError("mode slo_search needs an `slo` section")
        return self

    @property
    def baseline_target(self) -> str:
        return self.baseline or self.targets[0]

    def levels(self) -> list[dict[str, Any]]:
        """The load levels of the run: one for compare, one per sweep value."""
        if self.mode == "sweep" and self.sweep is not None:
            if self.sweep.concurrency:
                return [{"loop": "closed", "concurrency": c} for c in self.sweep.concurrency]
            return [{"loop": "open", "rate": r} for r in self.sweep.rates or []]
        if self.load.loop == "closed":
            return [{"loop": "closed", "concurrency": self.load.concurrency}]
        return [{"loop": "open", "rate": self.load.rate}]

    def planned_seconds(self) -> float:
        """Load time the run will take (warm-ups included), used for limits and progress."""
        n = len(self.targets)
        if self.mode == "slo_search" and self.slo is not None:
            per_target = self.warmup_s + self.slo.iterations * self.slo.step_duration_s * (1 + self.slo.retries)
            return n * per_target
        return n * self.warmup_s + len(self.levels()) * n * self.rounds * self.duration_s

    def max_rate(self) -> float:
        rates = [lv["rate"] for lv in self.levels() if lv["loop"] == "open"]
        if self.mode == "slo_search" and self.slo is not None:
            rates.append(self.slo.rate_high)
        return max(rates, default=0.0)

    def max_concurrency(self) -> int:
        conc = [lv["concurrency"] for lv in self.levels() if lv["loop"] == "closed"]
        return max([*conc, self.load.connections if self.load.loop == "open" else 0], default=0)


def load_file(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # the parser's message names a line, not the file
        raise ValueError(f"{path}: not a valid scenario file: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a scenario file holds a mapping")
    return data


def builtin_names() -> list[str]:
    return sorted(
        p.name.rsplit(".", 1)[0]
        for p in resources.files("gateway.loadtest.scenarios").iterdir()
        if p.name.endswith(".yaml")
    )


def load_builtin(name: str) -> dict[str, Any]:
    res = resources.files("gateway.loadtest.scenarios").joinpath(f"{name}.yaml")
    if not res.is_file():
        # The same flag takes a file: a name that looks like a path was most likely meant as one.
        looks_like_file = "/" in name or name.endswith((".yaml", ".yml"))
        what = (
            f"no scenario file {name!r} (and no built-in scenario of that name)"
            if looks_like_file
            else f"no built-in scenario {name!r} (and no file of that name)"
        )
        raise ValueError(f"{what}; built-in: {', '.join(builtin_names())}")
    return yaml.safe_load(res.read_text(encoding="utf-8"))
