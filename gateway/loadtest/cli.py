"""`python -m gateway.loadtest`: run a scenario, show progress, print the summary, write the report.

Exit codes: 0 valid run, no failed request, thresholds met; 1 a threshold failed (or requests failed);
2 the run is invalid (the generator could not keep its schedule); 3 bad configuration or a target
that does not answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.loadtest.data import DataError, load_images
from gateway.loadtest.report import run_folder, summary_table, write_report
from gateway.loadtest.runner import PreflightError, Progress, Runner
from gateway.loadtest.scenario import Scenario, builtin_names, load_builtin, load_file
from gateway.loadtest.targets import (
    ERR_WRONG_ANSWER,
    EXPLICIT_TF_GRPC,
    EXPLICIT_TF_REST,
    EXPLICIT_TORCH,
    Endpoints,
    TargetError,
)

EXIT_OK, EXIT_THRESHOLD, EXIT_INVALID, EXIT_CONFIG = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway.loadtest",
        description="Latency load tests comparing torch_service and TF Serving (closed/open loop, sweeps, "
        "SLO search). With no arguments: the default comparison against the local stack.",
    )
    p.add_argument(
        "--scenario",
        default="default",
        help=f"built-in scenario name or a YAML/JSON file (built-in: {', '.join(builtin_names())})",
    )
    p.add_argument("--list-scenarios", action="store_true", help="print the built-in scenarios and exit")
    p.add_argument("--report-dir", default="reports", help="reports go to <dir>/<timestamp>-<name>/")
    p.add_argument("--name", help="run name (folder suffix)")
    p.add_argument("--targets", help="comma-separated: torch, tf, tf-grpc, gateway-torch, gateway-tf")
    p.add_argument("--baseline", help="the target the others are compared with")
    p.add_argument("--via-gateway", metavar="URL", help="measure torch and tf through the gateway at URL")
    p.add_argument(
        "--api-key",
        help="bearer key for the gateway, when it has GATEWAY_API_KEYS (default: $LOADTEST_API_KEY; prefer the "
        "variable, a flag shows in the process list)",
    )
    p.add_argument("--torch-url", help="overrides GATEWAY_TORCH_URLS")
    p.add_argument("--tf-rest-url", help="overrides GATEWAY_TF_REST_URLS")
    p.add_argument("--tf-grpc-target", help="overrides GATEWAY_TF_GRPC_TARGETS")
    g = p.add_argument_group("load")
    g.add_argument("--loop", choices=["closed", "open"])
    g.add_argument("--concurrency", type=int, help="closed loop: concurrent clients")
    g.add_argument("--rate", type=float, help="open loop: requests per second")
    g.add_argument("--arrival", choices=["poisson", "constant"])
    g.add_argument("--connections", type=int, help="open loop: connection cap")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--timeout", type=float, help="per-request timeout (s)")
    g.add_argument("--duration", type=float, help="seconds per round")
    g.add_argument("--requests", type=int, help="requests per round (instead of a duration)")
    g.add_argument("--rounds", type=int)
    g.add_argument("--warmup", type=float, help="warm-up seconds per target")
    g.add_argument("--workers", type=int, help="generator processes")
    g.add_argument("--seed", type=int)
    g.add_argument("--sweep-concurrency", help="comma-separated concurrency levels (mode sweep)")
    g.add_argument("--sweep-rates", help="comma-separated rates (mode sweep, open loop)")
    g.add_argument("--slo-p99-ms", type=float, help="search the highest rate with p99 under this (mode slo_search)")
    g.add_argument("--slo-rates", help="LOW,HIGH rate range for the SLO search")
    g.add_argument("--slo-iterations", type=int, help="binary-search steps of the SLO search")
    g.add_argument("--resources", choices=["auto", "psutil", "docker", "none"])
    t = p.add_argument_group("gates (exit code 1 when they fail)")
    t.add_argument("--fail-p99-ms", type=float, help="fail when any target's p99 exceeds this")
    t.add_argument("--fail-error-rate", type=float, help="fail when any target's failed share exceeds this")
    p.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")
    return p


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    src = args.scenario
    data: dict[str, Any] = load_file(src) if Path(src).is_file() else load_builtin(src)
    load = dict(data.get("load") or {})
    for arg, key in (
        ("loop", "loop"),
        ("concurrency", "concurrency"),
        ("rate", "rate"),
        ("arrival", "arrival"),
        ("connections", "connections"),
        ("batch_size", "batch_size"),
        ("timeout", "timeout_s"),
    ):
        if getattr(args, arg) is not None:
            load[key] = getattr(args, arg)
    if args.rate is not None and args.loop is None:
        load["loop"] = "open"
    data["load"] = load
    for arg, key in (
        ("name", "name"),
        ("baseline", "baseline"),
        ("duration", "duration_s"),
        ("requests", "requests"),
        ("rounds", "rounds"),
        ("warmup", "warmup_s"),
        ("workers", "workers"),
        ("seed", "seed"),
        ("resources", "resources"),
    ):
        if getattr(args, arg) is not None:
            data[key] = getattr(args, arg)
    if args.targets:
        data["targets"] = [t.strip() for t in args.targets.split(",") if t.strip()]
        if args.baseline is None and data.get("baseline") not in data["targets"]:
            data["baseline"] = None  # the file's baseline, not among the new targets (one given here is checked)
    if args.via_gateway:
        via = {"torch": "gateway-torch", "tf": "gateway-tf"}
        mapped = [via.get(t, t) for t in data.get("targets", ["torch", "tf"])]
        # The gateway speaks REST to its clients; a direct gRPC series would not go through it.
        data["targets"] = [t for t in mapped if t != "tf-grpc"]
        if data.get("baseline"):
            data["baseline"] = {"torch": "gateway-torch", "tf": "gateway-tf"}.get(data["baseline"], data["baseline"])
            if data["baseline"] not in data["targets"]:
                data["baseline"] = None
    if args.sweep_concurrency or args.sweep_rates:
        data["mode"] = "sweep"
        data["sweep"] = (
            {"concurrency": _numbers(args.sweep_concurrency, int, "--sweep-concurrency")}
            if args.sweep_concurrency
            else {"rates": _numbers(args.sweep_rates, float, "--sweep-rates")}
        )
    if args.slo_p99_ms is not None or args.slo_rates:
        slo = dict(data.get("slo") or {})
        if args.slo_p99_ms is not None:
            data["mode"] = "slo_search"
            slo["p99_ms"] = args.slo_p99_ms
        elif data.get("mode") != "slo_search":
            raise ValueError("--slo-rates applies to an SLO search (--scenario slo-search, or --slo-p99-ms)")
        if args.slo_rates:
            rates = _numbers(args.slo_rates, float, "--slo-rates")
            if len(rates) != 2:
                raise ValueError(f"--slo-rates takes two rates, LOW,HIGH; got {args.slo_rates!r}")
            slo["rate_low"], slo["rate_high"] = rates
        data["slo"] = slo
    if data.get("mode") == "slo_search" and data.get("slo"):
        # In an SLO search each binary-search step is the measured unit: --duration sizes those steps.
        if args.duration is not None:
            data["slo"]["step_duration_s"] = args.duration
        if args.slo_iterations is not None:
            data["slo"]["iterations"] = args.slo_iterations
    th = dict(data.get("thresholds") or {})
    if args.fail_p99_ms is not None:
        th["p99_ms"] = args.fail_p99_ms
    if args.fail_error_rate is not None:
        th["error_rate"] = args.fail_error_rate
    data["thresholds"] = th
    return Scenario.model_validate(data)


def _numbers(text: str, kind: type, flag: str) -> list[Any]:
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated {kind.__name__}s, got {text!r}") from None


def _check_report_dir(path: Path) -> None:
    """Fail before the load, not after it: an unusable report folder would lose the results."""
    path.mkdir(parents=True, exist_ok=True)  # OSError (a file in the way, no permission) -> exit 3
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(f"report folder {path} is not writable")


def endpoints_from_args(args: argparse.Namespace) -> Endpoints:
    ep = Endpoints.from_env(args.via_gateway)
    if args.torch_url:
        ep = dataclasses.replace(
            ep,
            torch_urls=tuple(u.rstrip("/") for u in args.torch_url.split(",")),
            explicit=ep.explicit | {EXPLICIT_TORCH},
        )
    if args.tf_rest_url:
        ep = dataclasses.replace(
            ep,
            tf_rest_urls=tuple(u.rstrip("/") for u in args.tf_rest_url.split(",")),
            explicit=ep.explicit | {EXPLICIT_TF_REST},
        )
    if args.tf_grpc_target:
        ep = dataclasses.replace(
            ep, tf_grpc_targets=tuple(args.tf_grpc_target.split(",")), explicit=ep.explicit | {EXPLICIT_TF_GRPC}
        )
    if args.api_key:
        ep = dataclasses.replace(ep, gateway_api_key=args.api_key)
    return ep


def check_thresholds(result: dict[str, Any], scenario: Scenario) -> list[str]:
    """Reasons the run fails its gates (empty when it passes)."""
    failures = []
    th = scenario.thresholds
    for g in result.get("groups", []):
        for name, t in g["targets"].items():
            p99 = t["latency_ms"]["p99"]
            if th.p99_ms is not None and p99 is not None and p99 > th.p99_ms:
                failures.append(f"{name}: p99 {p99:.2f} ms > {th.p99_ms} ms")
            if th.error_rate is not None and t["error_rate"] > th.error_rate:
                kinds = ", ".join(f"{k}={v}" for k, v in sorted(t["errors"].items(), key=lambda kv: -kv[1]))
                why = ""
                if t["errors"].get(ERR_WRONG_ANSWER):
                    version = (t.get("golden_check") or {}).get("version")
                    why = f"; {ERR_WRONG_ANSWER}: answered, but classes differ from the golden predictions" + (
                        f" of version {version}" if version is not None else ""
                    )
                failures.append(f"{name}: error rate {t['error_rate']:.4f} > {th.error_rate} ({kinds}{why})")
    return failures


class _ProgressLine:
    """A single stderr line updated in place (or one line per finished step when stderr is not a TTY)."""

    def __init__(self, progress: Progress, enabled: bool):
        self.progress = progress
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last_step_id: int | None = None

    def __enter__(self) -> _ProgressLine:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self.enabled and self.tty:
            sys.stderr.write("\n")

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            d = self.progress.as_dict()
            last = d["last_step"]
            tail = ""
            if last:
                p50 = "n/a" if last["p50_ms"] is None else f"{last['p50_ms']:.2f}"
                p99 = "n/a" if last["p99_ms"] is None else f"{last['p99_ms']:.2f}"
                tail = (
                    f" | last {last['phase']} {last['target']}: {last['throughput_rps']} req/s "
                    f"p50 {p50} p99 {p99} ms failed {last['failed']}"
                )
            timing = f" {d['step_elapsed_s']:.0f}/{d['step_duration_s']:.0f}s" if d["step_duration_s"] else ""
            line = f"[{d['steps_done']}/{d['steps_total']}] {d['current'] or d['phase']}{timing}{tail}"
            if self.tty:
                sys.stderr.write("\r" + line[:160].ljust(160))
                sys.stderr.flush()
            elif last and id(last) != self._last_step_id:
                self._last_step_id = id(last)
                sys.stderr.write(line + "\n")
                sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_scenarios:
        for name in builtin_names():
            data = load_builtin(name)
            print(f"{name:12s} {data.get('description', '')}")
        return EXIT_OK
    try:
        scenario = scenario_from_args(args)
        endpoints = endpoints_from_args(args)
        progress = Progress()
        images = load_images()  # before any load, so a missing or broken golden file is said at once
        runner = Runner(scenario, endpoints, progress, images=images)
        _check_report_dir(Path(args.report_dir))
    except ValidationError as exc:  # one line per problem, not pydantic's multi-line dump
        for e in exc.errors():
            where = ".".join(str(x) for x in e["loc"]) or "scenario"
            print(f"error: {where}: {e['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return EXIT_CONFIG
    except (ValueError, TargetError, OSError, yaml.YAMLError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"scenario {scenario.name}: {scenario.mode}, targets {', '.join(scenario.targets)}, "
        f"about {scenario.planned_seconds():.0f} s of load; images: {images.source}",
        file=sys.stderr,
    )
    if images.warning:
        print(f"warning: {images.warning}", file=sys.stderr)
    t0 = time.time()
    try:
        with _ProgressLine(progress, not args.no_progress):
            result = runner.run()
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        runner.cancel.set()
        print("\ncancelled", file=sys.stderr)
        return 130
    failures = check_thresholds(result, scenario)
    result["threshold_failures"] = failures
    result["passed"] = result["valid"] and not failures
    folder = run_folder(args.report_dir, scenario.name)
    paths = write_report(result, folder)
    print(summary_table(result))
    print()
    for line in result["verdict"]:
        print("verdict: " + line)
    for line in result.get("warnings", []):
        print("warning: " + line)
    for line in result.get("dropped_targets", []):
        print("left out (optional): " + line)
    if not result["valid"]:
        print("INVALID RUN (generator limit): " + "; ".join(result["invalid_reasons"]))
    for f in failures:
        print("GATE FAILED: " + f)
    print(f"\nreport: {paths['html']}  ({time.time() - t0:.0f} s)")
    if not result["valid"]:
        return EXIT_INVALID
    if failures:
        return EXIT_THRESHOLD
    return EXIT_OK
