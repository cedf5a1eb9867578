"""`python -m devstack {demo,up}`: the local stack without Docker (what `make demo` and `make up` run)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from pydantic import ValidationError

from devstack.demo import StepFailed, demo, say, up
from devstack.ensure_model import TrainingFailed
from devstack.process import ServiceFailed, free_port
from devstack.settings import PORT_FIELDS, StackSettings
from devstack.stack import StackError

EPILOG = """\
ports: the services' own variables set the defaults (GATEWAY_PORT, TORCH_SERVICE_PORT,
TF_SERVING_REST_PORT, TF_SERVING_GRPC_PORT); --ports overrides them:
  --ports auto                                   free ports chosen by the OS
  --ports gateway=18000,torch_service=18080      some or all of: gateway, torch_service, tf_rest, tf_grpc
"""


def parse_ports(spec: str | None, host: str = "127.0.0.1") -> dict[str, int]:
    """`--ports` as settings overrides: 'auto', or name=port pairs separated by commas."""
    if not spec:
        return {}
    if spec.strip() == "auto":
        return {attr: free_port(host) for attr in PORT_FIELDS.values()}
    overrides: dict[str, int] = {}
    for item in spec.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in PORT_FIELDS or not value.strip().isdigit():
            raise ValueError(f"--ports: {item.strip()!r} is not NAME=PORT with NAME one of {', '.join(PORT_FIELDS)}")
        overrides[PORT_FIELDS[name]] = int(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Run the system as local processes on loopback: torch_service, a TF-Serving-compatible "
        "server and the gateway (no Docker needed).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ports", help="'auto' or NAME=PORT,... (see below)")
    common.add_argument("--model-repository", help="default: $MODEL_REPOSITORY or ./model_repository")
    common.add_argument("--train", action="store_true", help="train a new version even if one exists")
    common.add_argument(
        "--trainer-args", default="", help="extra arguments for python -m trainer, one string (e.g. '--preset large')"
    )
    demo_p = sub.add_parser(
        "demo",
        parents=[common],
        help="train if needed, start, run the default comparison, write reports/, stop",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_p.add_argument("--report-dir", help="default: reports")
    demo_p.add_argument(
        "--loadtest-args", default="", help="extra arguments for python -m gateway.loadtest, one string"
    )
    sub.add_parser(
        "up",
        parents=[common],
        help="train if needed, start, keep running until Ctrl-C",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGINT, SIGTERM and SIGHUP all take Ctrl-C's path, so the `with Stack` blocks stop every process.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    try:
        overrides.update(parse_ports(args.ports))
        if args.model_repository:
            overrides["model_repository"] = args.model_repository
        if getattr(args, "report_dir", None):
            overrides["report_dir"] = args.report_dir
        settings = StackSettings(**overrides)
    except (ValueError, ValidationError) as exc:
        print(f"devstack: invalid settings: {exc}", file=sys.stderr)
        return 2
    # SIGINT explicitly: a job started in the background by a script inherits SIGINT ignored, and Python
    # then installs no Ctrl-C handler, so `kill -INT` would do nothing. A SIGHUP that was ignored on
    # purpose (nohup) stays ignored.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise_interrupt)
    trainer_args = args.trainer_args.split()
    try:
        if args.command == "demo":
            demo(settings, force_train=args.train, trainer_args=trainer_args, loadtest_args=args.loadtest_args.split())
        else:
            up(settings, force_train=args.train, trainer_args=trainer_args)
    except KeyboardInterrupt:
        say("interrupted; every process the stack started has been stopped")
        return 130
    except (StackError, ServiceFailed, TrainingFailed, StepFailed) as exc:
        print(f"[devstack] FAILED: {exc}", file=sys.stderr, flush=True)
        say("every process the stack started has been stopped")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
