"""The locustfile sends the same checked requests; a short headless Locust run against a local server."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_locust_headless_run(fake_server, synthetic_repo, tmp_path):
    url = fake_server("--delay-ms", "2")
    locustfile = ROOT / "gateway" / "loadtest" / "locustfile.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "5s",
            "--host",
            url,
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    predict = rows["predict"]
    assert int(predict["Request Count"]) > 20
    # The synthetic images' golden classes are what the fake server answers: no failures.
    assert int(predict["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
