"""`make demo` and `make up`: train if needed, start the stack, run the comparison (demo) or wait (up).

Every step prints one line when it starts and one when it ends, so a newcomer sees where the
minutes go; every failure names the step and the failing service's log tail.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from devstack.ensure_model import ensure_model
from devstack.jobs import run_job
from devstack.settings import StackSettings
from devstack.stack import Stack


class StepFailed(RuntimeError):
    """A demo step (other than a service start, which raises ServiceFailed) failed."""


def say(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def new_log_dir(settings: StackSettings) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = settings.log_dir / stamp
    n = 1
    while path.exists():  # two starts in the same second (tests) get separate folders
        n += 1
        path = settings.log_dir / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def prepare_model(settings: StackSettings, log_dir: Path, *, force: bool, trainer_args: Sequence[str]) -> int:
    t0 = time.monotonic()
    when = "trains a new version" if force else "trains if it holds no version"
    say(f"model repository: {settings.model_repository} ({when}; log {log_dir}/trainer.log)")
    # Progress bars only clutter a log file.
    args = ["--no-progress", *trainer_args]
    version, trained = ensure_model(
        settings.model_repository, force=force, trainer_args=args, log_path=log_dir / "trainer.log"
    )
    if trained:
        say(f"trained and published version {version} in {time.monotonic() - t0:.0f}s")
    else:
        say(f"using existing version {version} (TRAINER_FORCE=1 or --train to retrain)")
    return version


def start_stack(stack: Stack) -> None:
    t0 = time.monotonic()
    say(f"starting torch_service, tf_serving (TF-Serving-compatible server), gateway; logs in {stack.log_dir}")
    stack.start()
    say(f"all services ready in {time.monotonic() - t0:.0f}s")


def loadtest_env(settings: StackSettings) -> dict[str, str]:
    """The load test finds the backends through the gateway's own variables (gateway/loadtest/targets.py)."""
    s = settings
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MODEL_REPOSITORY": str(Path(s.model_repository).resolve()),
        "GATEWAY_TORCH_URLS": s.url(s.torch_port),
        "GATEWAY_TF_REST_URLS": s.url(s.tf_rest_port),
        "GATEWAY_TF_GRPC_TARGETS": f"{s.host}:{s.tf_grpc_port}",
        "GATEWAY_URL": s.url(s.gateway_port),
    }


def loadtest_argv(settings: StackSettings, extra: Sequence[str]) -> list[str]:
    # The default comparison measures the backends directly (torch REST, TF REST, TF gRPC), found
    # through loadtest_env; `--loadtest-args '--via-gateway URL'` measures them through the gateway.
    return [sys.executable, "-m", "gateway.loadtest", "--report-dir", str(settings.report_dir), *extra]


def find_new_run(report_dir: Path, since: float) -> Path | None:
    """The run folder the load test just wrote: the newest `report.json` created after `since`."""
    if not report_dir.is_dir():
        return None
    candidates = [p.parent for p in report_dir.glob("*/report.json") if p.stat().st_mtime >= since]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def run_loadtest(stack: Stack, extra: Sequence[str]) -> Path | None:
    settings = stack.settings
    argv = loadtest_argv(settings, extra)
    say("running the default comparison: " + " ".join(["python", *argv[1:]]))
    started = time.time() - 1  # mtime granularity
    t0 = time.monotonic()
    code = run_job(argv, loadtest_env(settings))
    if code != 0:
        # A service that died under load is the likelier cause, and its log says why.
        stack.check_alive()
        raise StepFailed(
            f"the load test exited with code {code} (its output is above; service logs in {stack.log_dir})"
        )
    say(f"comparison finished in {time.monotonic() - t0:.0f}s")
    return find_new_run(settings.report_dir, started)


def keep_logs(log_dir: Path, run_dir: Path | None) -> Path:
    """Move the service logs into the report's folder so one folder tells the whole story."""
    if run_dir is None:
        return log_dir
    target = run_dir / "logs"
    if target.exists():
        return log_dir
    shutil.move(str(log_dir), str(target))
    return target


def demo(
    settings: StackSettings,
    *,
    force_train: bool = False,
    trainer_args: Sequence[str] = (),
    loadtest_args: Sequence[str] = (),
) -> Path | None:
    """The whole demo; returns the report folder. Everything started is stopped before returning."""
    t0 = time.monotonic()
    log_dir = new_log_dir(settings)
    prepare_model(settings, log_dir, force=force_train, trainer_args=trainer_args)
    with Stack(settings, log_dir) as stack:
        start_stack(stack)
        run_dir = run_loadtest(stack, loadtest_args)
    say("all services stopped")
    logs = keep_logs(log_dir, run_dir)
    if run_dir is not None:
        say(f"report: {run_dir / 'report.html'}  (also report.json, summary.csv; service logs in {logs})")
    else:
        say(f"the load test wrote no report.json under {settings.report_dir}; service logs in {logs}")
    say(f"demo finished in {time.monotonic() - t0:.0f}s")
    return run_dir


def curl_examples(settings: StackSettings) -> str:
    g = settings.url(settings.gateway_port)
    repo = Path(settings.model_repository).resolve()
    make_body = (
        f'{sys.executable} -c "import json, glob, numpy as np; '
        f"z = np.load(sorted(glob.glob('{repo}/torchscript/cnn/*/golden.npz'))[-1]); "
        f"print(json.dumps({{'instances': z['images'][:2].tolist()}}))\" > /tmp/body.json"
    )
    return "\n".join(
        [
            f"  curl {g}/readyz",
            f"  curl {g}/v1/backends",
            f"  curl {settings.url(settings.torch_port)}/v1/models/cnn",
            f"  curl {settings.url(settings.tf_rest_port)}/v1/models/cnn/metadata",
            "  # two test images from the model's golden set, then one prediction per backend:",
            f"  {make_body}",
            f"  curl -X POST '{g}/v1/models/cnn:predict?backend=torch' -d @/tmp/body.json",
            f"  curl -X POST '{g}/v1/models/cnn:predict?backend=tf' -d @/tmp/body.json",
        ]
    )


def up(settings: StackSettings, *, force_train: bool = False, trainer_args: Sequence[str] = ()) -> None:
    """Start the stack and keep it running until Ctrl-C (or a service dies)."""
    log_dir = new_log_dir(settings)
    prepare_model(settings, log_dir, force=force_train, trainer_args=trainer_args)
    with Stack(settings, log_dir) as stack:
        start_stack(stack)
        say("the stack is up:")
        for name, url in stack.urls().items():
            print(f"  {name:<18} {url}", flush=True)
        print("try:\n" + curl_examples(settings), flush=True)
        say("Ctrl-C stops everything")
        while True:
            stack.check_alive()
            time.sleep(1.0)
