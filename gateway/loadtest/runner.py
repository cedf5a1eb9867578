"""Runs a scenario: preflight, warm-up, randomized interleaved rounds (or a sweep, or an SLO search),
server metrics and resource use around every step, then the statistics that go into the report.
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import orjson

from gateway.loadtest import histograms as H
from gateway.loadtest import resources, server_metrics, stats
from gateway.loadtest.data import BodySet, ImageSet, build_bodies, describe, load_images
from gateway.loadtest.discovery import attribute_gateway_targets
from gateway.loadtest.engine import StepSpec, WorkerPool, run_step_inline
from gateway.loadtest.scenario import Scenario
from gateway.loadtest.targets import ANSWERED_ERRORS, ERR_WRONG_ANSWER, Endpoints, Target, resolve

MIN_BLOCKS = 10  # below this many blocks per target, bootstrap intervals are flagged as unreliable


class PreflightError(RuntimeError):
    """A target does not answer a predict call correctly before the run starts."""


class RunCancelled(RuntimeError):
    pass


@dataclass
class Progress:
    """Where a run stands; the CLI prints it, the API returns it."""

    phase: str = "starting"
    steps_done: int = 0
    steps_total: int = 0
    current: str = ""
    step_started: float = 0.0
    step_duration: float = 0.0
    started: float = field(default_factory=time.time)
    last_step: dict[str, Any] | None = None
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)

    def update(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)
        for cb in self.listeners:
            cb(self)

    def as_dict(self) -> dict[str, Any]:
        in_step = time.perf_counter() - self.step_started if self.step_started else 0.0
        return {
            "phase": self.phase,
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "current": self.current,
            "step_elapsed_s": round(min(in_step, self.step_duration or in_step), 1),
            "step_duration_s": self.step_duration,
            "elapsed_s": round(time.time() - self.started, 1),
            "last_step": self.last_step,
        }


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pkg in (
        "cnn-serving",
        "torch",
        "tensorflow",
        "tensorflow-serving-api",
        "grpcio",
        "fastapi",
        "uvicorn",
        "httpx",
        "hdrhistogram",
        "numpy",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["git_commit"] = (
            subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
            or None
        )
    return out


def _version(v: Any) -> Any:
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def _status(url: str) -> tuple[list[Any], list[Any]] | None:
    """(AVAILABLE versions, all versions) from TF Serving's model status API; None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            doc = orjson.loads(resp.read())
        states = doc.get("model_version_status", [])
        return (
            [_version(s.get("version")) for s in states if s.get("state") == "AVAILABLE"],
            [_version(s.get("version")) for s in states],
        )
    except (OSError, ValueError, AttributeError, http.client.HTTPException):  # refused, or no HTTP at all
        return None


def served_versions(target: Target) -> tuple[Any, list[int | None]]:
    """(what the report shows as served, per replica the version an unversioned predict gets).

    An unversioned predict is served by the highest AVAILABLE version (TF Serving's rule, which
    torch_service and the gateway's probe follow). A gateway target's replicas are the gateway's own,
    with the versions its probes saw (their status API is asked when a probe has not seen one yet);
    other targets ask each replica's status API.
    """
    reported = target.replica_versions
    if reported is not None and (all(v is not None for v in reported) or not target.status_urls):
        known = sorted({v for v in reported if v is not None})
        return known or None, list(reported)
    shown: list[Any] = []
    defaults: list[int | None] = []
    for url in target.status_urls:
        st = _status(url)
        avail = [v for v in st[0] if isinstance(v, int)] if st else []
        defaults.append(max(avail) if avail else None)
        for v in (st[0] or st[1]) if st else []:
            if v not in shown:
                shown.append(v)
    return shown or None, defaults


def golden_rule(images: ImageSet, defaults: list[int | None]) -> dict[str, Any]:
    """Whether a target's answers that disagree with the golden predictions count as errors.

    Only when the golden predictions are those of the version every replica serves: against another
    version's predictions a correct model disagrees now and then, and that is no failure.
    """
    gv = images.model_version
    if images.golden_classes is None:
        reason = "no golden predictions (no golden.npz with `classes`): wrong answers cannot be told"
    elif gv is None:
        reason = "the golden predictions' model version is unknown"
    elif not defaults or any(v is None for v in defaults):
        reason = f"the served version is not known, so the golden predictions of version {gv} may not apply"
    elif set(defaults) != {gv}:
        served = ", ".join(str(v) for v in sorted(set(defaults), key=str))
        reason = f"it serves version {served}, the golden predictions are version {gv}'s"
    else:
        return {
            "counted": True,
            "version": gv,
            "reason": f"answers disagreeing with version {gv}'s golden predictions are {ERR_WRONG_ANSWER} errors",
        }
    return {"counted": False, "version": gv, "reason": reason}


class Runner:
    def __init__(
        self,
        scenario: Scenario,
        endpoints: Endpoints,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        images: ImageSet | None = None,
    ):
        self.sc = scenario
        self.endpoints = endpoints
        self.progress = progress or Progress()
        self.cancel = cancel or threading.Event()
        self.targets = {name: resolve(name, endpoints) for name in scenario.targets}
        self.images = images
        self.golden: dict[str, dict[str, Any]] = {}  # per target: golden_rule()
        self.attribution_warnings: list[str] = []
        self.bodies: BodySet | None = None
        self.steps: list[dict[str, Any]] = []
        self.dropped: list[str] = []
        self.t0 = 0.0
        self.pool: WorkerPool | None = None

    # -- the parts of a step ------------------------------------------------------------------------

    def _spec(
        self, target: Target, level: dict[str, Any], duration: float, seed: int, requests: int | None = None
    ) -> StepSpec:
        ld = self.sc.load
        return StepSpec(
            target=target,
            loop=level["loop"],
            concurrency=level.get("concurrency", ld.concurrency),
            rate=level.get("rate", ld.rate),
            arrival=ld.arrival,
            connections=ld.connections,
            duration_s=duration,
            requests=requests,
            timeout_s=ld.timeout_s,
            seed=seed,
            block_s=self.sc.block_s
            if level["loop"] == "closed" or self.sc.mode != "slo_search"
            # SLO steps are short and judged by their halves: at least four blocks each.
            else min(self.sc.block_s, duration / 4),
            max_lag_ms=self.sc.max_lag_ms,
            check_golden=self.golden.get(target.name, {}).get("counted", False),
        )

    def _run_spec(self, spec: StepSpec) -> dict[str, Any]:
        assert self.bodies is not None
        if self.pool is not None:
            return self.pool.run(spec, self.cancel)
        return run_step_inline(spec, self.bodies)

    def measure(
        self,
        target: Target,
        level: dict[str, Any],
        duration: float,
        seed: int,
        phase: str,
        round_index: int | None = None,
        requests: int | None = None,
    ) -> dict[str, Any]:
        if self.cancel.is_set():
            raise RunCancelled("cancelled")
        spec = self._spec(target, level, duration, seed, requests)
        label = f"{phase} {target.name} " + (
            f"c={level['concurrency']}" if level["loop"] == "closed" else f"rate={level['rate']:g}/s"
        )
        if round_index is not None:
            label += f" round {round_index + 1}"
        self.progress.update(current=label, step_started=time.perf_counter(), step_duration=duration, phase=phase)
        source = resources.make_source(
            self.sc.resources,
            target.backend,
            target.ports,
            self.sc.pids.get(target.backend),
            self.sc.containers.get(target.backend),
            docker_ok=target.docker_ok,
        )
        before = server_metrics.scrape_all(target.metrics_urls, target.metrics_kind, target.metrics_entrypoint)
        t_start = time.perf_counter() - self.t0
        with resources.Sampler(source) as sampler:
            res = self._run_spec(spec)
        after = server_metrics.scrape_all(target.metrics_urls, target.metrics_kind, target.metrics_entrypoint)
        # Requests the backend itself answered (wrong answers too): its counter must have seen them.
        answered = res["ok"] + sum(res["errors"].get(k, 0) for k in ANSWERED_ERRORS)
        sent = max(res.get("sent", 0), res["ok"] + res["failed"])
        server, unattributable = server_metrics.step_server(before, after, answered, sent)
        res.update(
            phase=phase,
            level=level,
            round=round_index,
            t_start=t_start,
            seed=seed,
            server=server,
            server_unattributable=unattributable,
            resources=sampler.summary(),
        )
        if phase != "warmup":
            self.steps.append(res)
            self.progress.update(steps_done=self.progress.steps_done + 1)
        self.progress.update(last_step=_brief(res))
        return res

    # -- the run ------------------------------------------------------------------------------------

    def preflight(self) -> dict[str, Any]:
        """One real predict per target: a wrong address fails now with a clear message, not as errors.

        Then what each target serves, and so whether its answers are checked against the golden
        predictions (golden_rule)."""
        assert self.bodies is not None and self.images is not None
        served = {}
        for name, target in list(self.targets.items()):
            spec = self._spec(target, {"loop": "closed", "concurrency": 1}, 10.0, self.sc.seed, requests=2)
            # Reachability only: whether answers are right is measured (and counted) by the rounds.
            spec = StepSpec(**{**spec.__dict__, "timeout_s": min(spec.timeout_s, 10.0), "check_golden": False})
            res = run_step_inline(spec, self.bodies)
            if res["failed"] or not res["ok"]:
                detail = "; ".join(res["error_samples"]) or "no answer"
                message = f"target {name} ({', '.join(target.addresses)}) does not answer predict: {detail}"
                if name in self.sc.optional_targets and name != self.sc.baseline_target:
                    # An extra series (e.g. gRPC where only REST is up) is dropped, and the report says so.
                    self.dropped.append(message)
                    del self.targets[name]
                    self.sc = self.sc.model_copy(update={"targets": [t for t in self.sc.targets if t != name]})
                    continue
                raise PreflightError(message)
            served[name], defaults = served_versions(target)
            self.golden[name] = golden_rule(self.images, defaults)
        return served

    def run(self) -> dict[str, Any]:
        sc = self.sc
        started = time.time()
        self.progress.update(phase="preparing")
        if self.images is None:
            self.images = load_images()
        need_grpc = any(t.protocol == "grpc" for t in self.targets.values())
        self.bodies = build_bodies(self.images, sc.load.batch_size, sc.seed, sc.pool_size, grpc=need_grpc)
        # gateway-* targets: their backends' metrics, processes and versions, as the gateway says.
        self.targets, self.attribution_warnings = attribute_gateway_targets(self.targets, self.endpoints)
        served = self.preflight()
        sc = self.sc  # without the optional targets that did not answer
        levels = sc.levels()
        total = 0 if sc.mode == "slo_search" else len(levels) * len(sc.targets) * sc.rounds
        self.progress.update(steps_total=total, phase="warmup")
        self.t0 = time.perf_counter()
        slo_results: dict[str, Any] = {}
        pool = WorkerPool(sc.workers, self.bodies)
        self.pool = pool
        try:
            if sc.mode == "slo_search":
                for name in sc.targets:
                    slo_results[name] = self._slo_search(self.targets[name])
            else:
                self._rounds(levels)
        finally:
            self.pool = None
            pool.close(kill=self.cancel.is_set())
        result = self._assemble(served, started, slo_results)
        self.progress.update(phase="done")
        return result

    def _rounds(self, levels: list[dict[str, Any]]) -> None:
        sc = self.sc
        rng = np.random.default_rng(sc.seed)
        for li, level in enumerate(levels):
            warm = sc.warmup_s if li == 0 else min(sc.warmup_s, 2.0)
            if warm > 0:
                for name in sc.targets:
                    self.measure(self.targets[name], level, warm, sc.seed + 10_000, "warmup")
            for r in range(sc.rounds):
                # A fresh random order each round (A B, B A, ...): drift in the machine over the run
                # lands on both backends alike. Same seed per round -> same requests for every target.
                for idx in rng.permutation(len(sc.targets)):
                    name = sc.targets[int(idx)]
                    self.measure(
                        self.targets[name], level, sc.duration_s, sc.seed + r, "measure", r, requests=sc.requests
                    )

    def _slo_search(self, target: Target) -> dict[str, Any]:
        sc = self.sc
        slo = sc.slo
        assert slo is not None
        if sc.warmup_s > 0:
            self.measure(target, {"loop": "open", "rate": slo.rate_low}, sc.warmup_s, sc.seed + 10_000, "warmup")
        lo, hi = slo.rate_low, slo.rate_high
        best: float | None = None
        history: list[dict[str, Any]] = []
        limited_by_generator = None
        for it in range(slo.iterations):
            # Geometric midpoint: the range spans orders of magnitude, and a relative step is what matters.
            rate = float(np.sqrt(lo * hi)) if it else lo
            verdict = None
            for attempt in range(slo.retries + 1):
                res = self.measure(target, {"loop": "open", "rate": rate}, slo.step_duration_s, sc.seed + it, "slo", it)
                verdict = _slo_verdict(res, slo.p99_ms, slo.max_error_rate, sc.block_s)
                history.append({"rate": rate, "attempt": attempt, **verdict})
                if verdict["stable"] or not verdict["generator_ok"]:
                    break
            assert verdict is not None
            if not verdict["generator_ok"]:
                limited_by_generator = rate
                break
            if verdict["passed"] and verdict["stable"]:
                best = rate
                if it == 0:
                    lo = rate
                    continue
                lo = rate
            else:
                if it == 0:
                    break  # even the lowest rate misses the SLO
                hi = rate
        return {
            "slo_p99_ms": slo.p99_ms,
            "max_rate": best,
            "steps": history,
            "limited_by_generator_at": limited_by_generator,
        }

    # -- statistics ---------------------------------------------------------------------------------

    def _golden_warnings(self) -> list[str]:
        """Where a wrong answer would NOT fail the run, say so (the error-rate gate cannot see it)."""
        assert self.images is not None
        names = [n for n in self.sc.targets if n in self.golden and not self.golden[n]["counted"]]
        if not names:
            return []
        if self.images.golden_classes is None:
            return [
                "no golden predictions (golden.npz with `classes`): answers with wrong classes are not counted as "
                "failed requests, only as lower accuracy"
            ]
        return [
            f"{n}: answers disagreeing with the golden predictions are not counted as failed requests "
            f"({self.golden[n]['reason']}); see golden agreement"
            for n in names
        ]

    def _assemble(self, served: dict[str, Any], started: float, slo_results: dict[str, Any]) -> dict[str, Any]:
        sc = self.sc
        assert self.images is not None
        groups = []
        for li, level in enumerate(sc.levels() if sc.mode != "slo_search" else []):
            steps_by_target = {
                n: [s for s in self.steps if s["target"] == n and s["level"] == level] for n in sc.targets
            }
            groups.append(self._group(level, steps_by_target, seed=sc.seed + li))
        invalid = [
            f"{s['target']} {s['phase']} round {s['round']}: {reason}"
            for s in self.steps
            for reason in s.get("invalid_reasons", [])
        ]
        failed = sum(s["failed"] for s in self.steps)
        total = sum(s["failed"] + s["ok"] for s in self.steps)
        out = {
            "schema": 1,
            "name": sc.name,
            "scenario": sc.model_dump(mode="json"),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_s": round(time.time() - started, 1),
            "versions": versions(),
            "machine": resources.machine(),
            "model": {
                "repository_version": self.images.model_version,
                "served": served,
                # Per target: whether answers that disagree with the golden predictions are errors, and why.
                "golden": {n: self.golden[n] for n in sc.targets if n in self.golden},
            },
            "data": describe(self.images),
            "targets": {
                n: {
                    "protocol": t.protocol,
                    "addresses": list(t.addresses),
                    "backend": t.backend,
                    # Where the server-side latency, resource use and served version come from.
                    "server_side": {
                        "source": t.server_source,
                        "metrics_urls": list(t.metrics_urls),
                        "ports": list(t.ports),
                        "note": t.server_note,
                    },
                }
                for n, t in self.targets.items()
            },
            "groups": groups,
            "slo": slo_results,
            "steps": [_strip(s) for s in self.steps],
            "requests": total,
            "failed_requests": failed,
            "valid": not invalid,
            "invalid_reasons": invalid,
            "dropped_targets": self.dropped,
        }
        # A block bootstrap over a handful of blocks underestimates the spread: say so next to the numbers.
        few = sorted({t["blocks"] for g in groups for t in g["targets"].values() if t["blocks"] < MIN_BLOCKS})
        out["warnings"] = (
            [
                f"only {few[0]} measured blocks for some target (fewer than {MIN_BLOCKS}): confidence intervals are "
                "too narrow to trust; use more rounds or longer rounds"
            ]
            if few
            else []
        )
        if self.images is not None and self.images.warning:
            out["warnings"].append(self.images.warning)
        out["warnings"] += self.attribution_warnings
        out["warnings"] += self._golden_warnings()
        for g in groups:
            for name, t in g["targets"].items():
                k = t["server_unattributable_steps"]
                if k:
                    out["warnings"].append(
                        f"{name} {_level_label(g['level'])}: server-side latency not attributable in {k} of "
                        f"{t['rounds']} rounds ({t['server_unattributable_reason']}); "
                        + ("reported as n/a" if t["server_mean_ms"] is None else "those rounds are left out of it")
                    )
        # A sweep compares at every level: each line names its level (alone, the levels' lines were indistinguishable).
        out["verdict"] = [
            (f"{_level_label(g['level'])}: " if len(groups) > 1 else "") + c["metrics"][m]["text"]
            for g in groups
            for c in g["comparisons"]
            for m in ("p50", "p99", "throughput")
            if m in c["metrics"]
        ]
        for name, r in slo_results.items():
            rate = r["max_rate"]
            out["verdict"].append(
                f"{name}: highest rate with p99 <= {r['slo_p99_ms']:g} ms is "
                + (f"{rate:.0f}/s" if rate else "below the lowest rate tried")
                + (
                    f" (generator limit reached at {r['limited_by_generator_at']:.0f}/s)"
                    if r["limited_by_generator_at"]
                    else ""
                )
            )
        return out

    def _group(
        self, level: dict[str, Any], steps_by_target: dict[str, list[dict[str, Any]]], seed: int
    ) -> dict[str, Any]:
        sc = self.sc
        per: dict[str, Any] = {}
        boots: dict[str, dict[str, np.ndarray]] = {}
        for name, steps in steps_by_target.items():
            lat = H.merge(s["latency"] for s in steps)
            svc = H.merge(s["service"] for s in steps)
            blocks = stats.Blocks.from_steps(steps, sc.block_s)
            boot = stats.bootstrap(blocks, sc.bootstrap, seed)
            boots[name] = boot
            ok = sum(s["ok"] for s in steps)
            failed = sum(s["failed"] for s in steps)
            elapsed = sum(s["elapsed_s"] for s in steps)
            span = sum(
                sc.duration_s if not sc.requests and s["elapsed_s"] >= sc.duration_s else s["elapsed_s"] for s in steps
            )
            errors: dict[str, int] = {}
            for s in steps:
                for k, v in s["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            images = sum(s["images"] for s in steps)
            gchk = sum(s["golden_checked"] for s in steps)
            # Steps whose server counted far fewer (or far more) requests than this target's: not its figures.
            unattributable = [s["server_unattributable"] for s in steps if s.get("server_unattributable")]
            server = [s["server"] for s in steps if s.get("server")]
            srv_mean = (
                sum(x["mean_ms"] * x["requests"] for x in server) / sum(x["requests"] for x in server)
                if server
                else None
            )
            summ = H.summary_ms(lat)
            res_cpu = [
                s["resources"]["cpu_percent_mean"] for s in steps if s["resources"].get("cpu_percent_mean") is not None
            ]
            res_mem = [
                s["resources"]["memory_mb_max"] for s in steps if s["resources"].get("memory_mb_max") is not None
            ]
            gpu = [
                s["resources"]["gpu_util_percent_mean"]
                for s in steps
                if s["resources"].get("gpu_util_percent_mean") is not None
            ]
            per[name] = {
                "requests": ok + failed,
                "ok": ok,
                "failed": failed,
                "errors": errors,
                "error_rate": failed / (ok + failed) if ok + failed else 0.0,
                "throughput_rps": ok / span if span else 0.0,
                "elapsed_s": elapsed,
                "latency_ms": summ,
                "service_ms": H.summary_ms(svc),
                "ci95": stats.confidence_intervals(boot) if boot else {},
                "blocks": len(blocks.hists),
                "rounds": len(steps),
                "accuracy": sum(s["correct"] for s in steps) / images if images else None,
                "golden_agreement": sum(s["golden_agree"] for s in steps) / gchk if gchk else None,
                "wrong_answers": errors.get(ERR_WRONG_ANSWER, 0),
                "golden_check": self.golden.get(name, {"counted": False, "reason": "not checked"}),
                "server_mean_ms": srv_mean,
                "server_unattributable_steps": len(unattributable),
                "server_unattributable_reason": unattributable[0] if unattributable else None,
                "other_mean_ms": (summ["mean"] - srv_mean) if srv_mean is not None and summ["mean"] else None,
                "resources": {
                    "source": steps[0]["resources"]["source"] if steps else "none",
                    "cpu_percent_mean": sum(res_cpu) / len(res_cpu) if res_cpu else None,
                    "memory_mb_max": max(res_mem) if res_mem else None,
                    "gpu_util_percent_mean": sum(gpu) / len(gpu) if gpu else None,
                },
                "histogram": H.encode(lat),
                "service_histogram": H.encode(svc),
                "valid": all(s["valid"] for s in steps),
            }
        base = sc.baseline_target
        comparisons = []
        for name in sc.targets:
            if name == base or not boots.get(name) or not boots.get(base):
                continue
            pb = {
                **{k: per[base]["latency_ms"][k] for k in stats.METRICS if k in per[base]["latency_ms"]},
                "throughput": per[base]["throughput_rps"],
            }
            po = {
                **{k: per[name]["latency_ms"][k] for k in stats.METRICS if k in per[name]["latency_ms"]},
                "throughput": per[name]["throughput_rps"],
            }
            comparisons.append(
                {"base": base, "other": name, "metrics": stats.compare(boots[base], boots[name], base, name, pb, po)}
            )
        preds: dict[str, dict[str, list[int]]] = {n: {} for n in sc.targets}
        for n, steps in steps_by_target.items():
            for s in steps:
                for k, v in s.get("predictions", {}).items():
                    preds[n].setdefault(k, v)
        agreement = {
            f"{a} vs {b}": stats.agreement(preds[a], preds[b])
            for i, a in enumerate(sc.targets)
            for b in sc.targets[i + 1 :]
        }
        return {"level": level, "targets": per, "comparisons": comparisons, "agreement": agreement}


def _level_label(level: dict[str, Any]) -> str:
    return f"c={level['concurrency']}" if level["loop"] == "closed" else f"rate={level['rate']:g}/s"


def _slo_verdict(res: dict[str, Any], p99_ms: float, max_error_rate: float, block_s: float) -> dict[str, Any]:
    lat = res["latency_ms"]
    total = res["ok"] + res["failed"]
    err = res["failed"] / total if total else 1.0
    # Open loop: every scheduled request is answered or counted as an error (timeouts included), so a
    # server that cannot keep the rate shows as growing latency and errors, both judged here.
    passed = lat["p99"] is not None and lat["p99"] <= p99_ms and err <= max_error_rate
    blocks = [b for b in res["blocks"] if b["hist"]]
    half = len(blocks) // 2
    halves = [H.merge(b["hist"] for b in part) for part in (blocks[:half], blocks[half:])]
    p99s = [h.get_value_at_percentile(99.0) / 1000.0 if h.get_total_count() else None for h in halves]
    stable = all(p is not None for p in p99s) and len({(p is not None and p <= p99_ms) for p in p99s}) == 1
    return {
        "p99_ms": lat["p99"],
        "p99_halves_ms": p99s,
        "error_rate": err,
        "throughput_rps": res["throughput_rps"],
        "passed": bool(passed),
        "stable": bool(stable),
        "generator_ok": bool(res["valid"]),
        "invalid_reasons": res.get("invalid_reasons", []),
    }


def _strip(step: dict[str, Any]) -> dict[str, Any]:
    # Per-body predictions were only needed for cross-backend agreement; they would bloat the JSON.
    return {k: v for k, v in step.items() if k != "predictions"}


def _brief(res: dict[str, Any]) -> dict[str, Any]:
    lat = res["latency_ms"]
    return {
        "target": res["target"],
        "phase": res.get("phase"),
        "throughput_rps": round(res["throughput_rps"], 1),
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "failed": res["failed"],
        "valid": res["valid"],
    }
