"""The locustfile sends the same checked requests; a short headless Locust run against a local server."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _locust(url: str, out: Path, seconds: int = 5) -> dict[str, str]:
    """A headless Locust run of the locustfile against `url`; its `predict` stats row."""
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
            f"{seconds}s",
            "--host",
            url,
            "--csv",
            str(out),
            "--only-summary",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: the run had failures (checked by the caller)
    with Path(f"{out}_stats.csv").open() as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    return rows["predict"]


@pytest.mark.slow
def test_locust_headless_run(fake_server, synthetic_repo, tmp_path):
    predict = _locust(fake_server("--delay-ms", "2"), tmp_path / "run")
    assert int(predict["Request Count"]) > 20
    # The synthetic images' golden classes are what the fake server answers: no failures.
    assert int(predict["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()


@pytest.mark.slow
def test_locust_checks_golden_classes_only_for_their_version(fake_server, synthetic_repo, tmp_path):
    """Wrong classes from the golden file's version are failures; from another version they are not
    (a correct model of another version disagrees with them now and then)."""
    wrong = _locust(fake_server("--delay-ms", "2", "--shift", "1"), tmp_path / "wrong", seconds=3)
    assert int(wrong["Request Count"]) > 10
    assert int(wrong["Failure Count"]) == int(wrong["Request Count"])
    assert "differ from the golden" in (tmp_path / "wrong_failures.csv").read_text()
    other = _locust(fake_server("--delay-ms", "2", "--shift", "1", "--version", "2"), tmp_path / "other", seconds=3)
    assert int(other["Request Count"]) > 10
    assert int(other["Failure Count"]) == 0, (tmp_path / "other_failures.csv").read_text()
