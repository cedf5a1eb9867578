"""Run a one-shot job (the trainer, the load test) in the foreground, and never leave it behind.

The job gets its own process group, so Ctrl-C or SIGTERM on devstack stops the job and every
process it forked (the load test's worker processes, a torchrun launch), not only its leader.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_job(argv: Sequence[str], env: Mapping[str, str], stdout: IO[bytes] | None = None, grace_s: float = 5.0) -> int:
    """Run `argv` to completion and return its exit code. Output goes to our console, or to `stdout`
    (stderr with it). On any exception while waiting (KeyboardInterrupt included) the whole group
    gets SIGTERM, then SIGKILL after `grace_s`, and the exception propagates."""
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
    )
    try:
        return proc.wait()
    except BaseException:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        # Workers the leader did not reap (it exited first) go with the group.
        _signal_group(proc.pid, signal.SIGKILL)
