"""Describe the machine a figure was measured on (benchmarks and load-test reports quote it)."""

from __future__ import annotations

import contextlib
import platform


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or what `platform` knows elsewhere."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
