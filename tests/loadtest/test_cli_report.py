"""The CLI end to end against two real local servers: report files, HTML with plots, exit codes."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from gateway.loadtest.cli import main
from gateway.loadtest.report import write_report


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag in ("script", "link"):
            raise AssertionError(f"report must be self-contained, found <{tag}>")

    def handle_data(self, data):
        self.text.append(data)


def _args(tmp_path: Path, torch: str, tf: str, *extra: str) -> list[str]:
    return [
        "--report-dir",
        str(tmp_path / "reports"),
        "--targets",
        "torch,tf",
        "--torch-url",
        torch,
        "--tf-rest-url",
        tf,
        "--duration",
        "1.5",
        "--rounds",
        "2",
        "--warmup",
        "0.5",
        "--no-progress",
        "--resources",
        "psutil",
        *extra,
    ]


@pytest.fixture
def two_servers(fake_server):
    return fake_server("--delay-ms", "3"), fake_server("--delay-ms", "12")


def test_default_comparison_writes_a_report(tmp_path, two_servers, synthetic_repo, capsys):
    torch, tf = two_servers
    # tf-grpc is optional in the default scenario: a closed gRPC port drops it, the run goes on.
    extra = ["--targets", "torch,tf,tf-grpc", "--tf-grpc-target", "127.0.0.1:9", "--name", "t1"]
    assert main(_args(tmp_path, torch, tf, *extra)) == 0
    out = capsys.readouterr().out
    assert "p99 95% CI" in out and "report:" in out
    folder = next((tmp_path / "reports").iterdir())
    assert folder.name.endswith("-t1")
    report = json.loads((folder / "report.json").read_text())
    assert report["valid"] and report["failed_requests"] == 0 and report["model"]["repository_version"] == 1
    group = report["groups"][0]
    assert set(group["targets"]) == {"torch", "tf"}
    assert len(report["dropped_targets"]) == 1 and "tf-grpc" in report["dropped_targets"][0]
    # 2 rounds x 1.5 s is too few blocks for trustworthy intervals, and the report says so.
    assert report["warnings"] and "fewer than 10" in report["warnings"][0]
    assert group["targets"]["torch"]["accuracy"] == 1.0
    assert group["agreement"]["torch vs tf"]["rate"] == 1.0
    assert group["targets"]["torch"]["server_mean_ms"] is not None  # fake server exposes torch's metric
    assert group["targets"]["tf"]["server_mean_ms"] is None  # ... but not TF Serving's: "n/a"
    assert group["targets"]["torch"]["resources"]["source"] == "psutil"
    # 12 ms vs 3 ms of server delay: the p50 difference is unmistakable and must be called significant.
    p50 = group["comparisons"][0]["metrics"]["p50"]
    assert p50["significant"] and p50["relative"] > 0.5
    assert "tf p50 is" in " ".join(report["verdict"])
    rows = list(csv.DictReader((folder / "summary.csv").open()))
    assert [r["target"] for r in rows] == ["torch", "tf"]
    parser = _Tags()
    parser.feed((folder / "report.html").read_text())
    assert parser.tags.get("svg", 0) >= 4 and parser.tags.get("polyline", 0) >= 4
    assert "Verdict" in "".join(parser.text)
    # The rounds were interleaved: both targets measured in each round, order recorded per step.
    assert sorted((s["round"], s["target"]) for s in report["steps"]) == [
        (0, "tf"),
        (0, "torch"),
        (1, "tf"),
        (1, "torch"),
    ]


def test_gates_and_errors_set_the_exit_code(tmp_path, two_servers, fake_server, synthetic_repo):
    torch, tf = two_servers
    assert main(_args(tmp_path, torch, tf, "--rounds", "1", "--fail-p99-ms", "0.5")) == 1
    # a target that does not answer fails before any load, with exit code 3
    assert main(_args(tmp_path, torch, "http://127.0.0.1:9", "--rounds", "1")) == 3
    # a target answering errors is a failed request -> exit 1 (the error-rate gate is 0 by default)
    bad = fake_server("--status", "500")
    assert main(_args(tmp_path, torch, bad, "--rounds", "1")) == 3  # preflight catches it first
    assert main(["--scenario", "nonexistent-scenario"]) == 3


def test_without_a_golden_file_the_stand_in_digits_are_said_at_once_and_in_the_report(
    tmp_path, fake_server, monkeypatch, capsys
):
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path / "empty"))
    torch = fake_server("--delay-ms", "1")
    args = _args(tmp_path, torch, torch, "--targets", "torch", "--rounds", "1", "--duration", "1", "--name", "fb")
    assert main(args) == 0
    err = capsys.readouterr().err
    head = err.splitlines()[:2]  # the start line and the warning, before any load
    assert "images: sklearn digits" in head[0]
    assert head[1].startswith("warning: no golden.npz under") and "not the model's test images" in head[1]
    report = json.loads((next((tmp_path / "reports").iterdir()) / "report.json").read_text())
    assert any("not the model's test images" in w for w in report["warnings"])
    assert report["data"]["source"].startswith("sklearn digits")


def test_a_broken_golden_file_is_one_error_line_before_any_load(tmp_path, fake_server, monkeypatch, capsys):
    d = tmp_path / "repo" / "torchscript" / "cnn" / "1"
    d.mkdir(parents=True)
    np.savez(d / "golden.npz", images=np.zeros((4, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path / "repo"))
    torch = fake_server("--delay-ms", "1")
    assert main(_args(tmp_path, torch, torch, "--targets", "torch")) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "expected [N,28,28,1]" in err[0]
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_open_loop_sweep_and_slo_search_reports(tmp_path, fake_server, synthetic_repo):
    url = fake_server("--delay-ms", "4")
    base = [
        "--report-dir",
        str(tmp_path / "r"),
        "--targets",
        "torch",
        "--torch-url",
        url,
        "--no-progress",
        "--warmup",
        "0.5",
        "--resources",
        "none",
    ]
    assert main([*base, "--sweep-rates", "20,60", "--duration", "1.5", "--rounds", "1", "--name", "sw"]) == 0
    slo_args = ["--slo-p99-ms", "30", "--slo-rates", "20,200", "--slo-iterations", "3", "--duration", "2"]
    assert main([*base, *slo_args, "--name", "slo", "--scenario", "slo-search"]) == 0
    reports = {p.name.split("-", 1)[1]: json.loads((p / "report.json").read_text()) for p in (tmp_path / "r").iterdir()}
    sweep = reports["sw"]
    assert [g["level"]["rate"] for g in sweep["groups"]] == [20.0, 60.0]
    assert "lag_ms" in sweep["steps"][0]
    slo = reports["slo"]["slo"]["torch"]
    assert slo["steps"] and slo["steps"][0]["rate"] == 20.0
    # 4 ms of server time is far under 30 ms at these rates
    assert slo["max_rate"] is not None and slo["max_rate"] >= 20.0


def test_report_renders_without_server_metrics_or_steps(tmp_path):
    result = {
        "name": "empty",
        "started_at": "x",
        "finished_at": "y",
        "duration_s": 0,
        "valid": True,
        "failed_requests": 0,
        "requests": 0,
        "invalid_reasons": [],
        "verdict": [],
        "groups": [],
        "slo": {},
        "steps": [],
        "targets": {},
        "model": {"repository_version": None, "served": {}},
        "data": {"source": "none", "count": 0},
        "machine": {"cpu_model": "?", "logical_cores": 1, "memory_gb": 1, "gpus": [], "load_average": [0, 0, 0]},
        "versions": {},
        "scenario": {
            "targets": ["torch"],
            "block_s": 1.0,
            "mode": "compare",
            "seed": 1,
            "description": "",
            "load": {"batch_size": 1},
        },
    }
    paths = write_report(result, tmp_path / "out")
    _Tags().feed(paths["html"].read_text())


def test_gateway_targets_carry_the_api_key_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.loadtest import rawhttp
    from gateway.loadtest.cli import build_parser, endpoints_from_args
    from gateway.loadtest.targets import resolve

    monkeypatch.setenv("LOADTEST_API_KEY", "from-env")
    args = build_parser().parse_args(["--via-gateway", "http://127.0.0.1:8000", "--torch-url", "http://h:1"])
    ep = endpoints_from_args(args)
    assert ep.torch_urls == ("http://h:1",) and ep.gateway_api_key == "from-env"  # kept through the overrides
    target = resolve("gateway-torch", ep)
    wire = rawhttp.encode_posts(target.addresses[0], target.path, [b"{}"], target.headers)[0]
    assert b"\r\nAuthorization: Bearer from-env\r\n" in wire and wire.endswith(b"\r\n\r\n{}")
    assert "from-env" not in repr(ep) and "from-env" not in repr(target)  # never printed by accident
    assert resolve("torch", ep).headers == ""  # the backends themselves take no key
    args = build_parser().parse_args(["--via-gateway", "http://127.0.0.1:8000", "--api-key", "from-flag"])
    assert resolve("gateway-tf", endpoints_from_args(args)).headers == "Authorization: Bearer from-flag\r\n"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--scenario", "{bad_yaml}"], "bad.yaml: not a valid scenario file"),  # was a traceback and exit 1
        (["--targets", "torch", "--torch-url", "localhost:8080"], "must be http:// URLs"),
        (["--fail-p99-ms", "-5"], "thresholds.p99_ms"),
        (["--fail-error-rate", "2"], "thresholds.error_rate"),
        (["--sweep-concurrency", "0,-1"], "sweep.concurrency"),
        (["--sweep-rates", "-5"], "sweep.rates"),
        (["--sweep-concurrency", "1,x"], "comma-separated ints"),
        (["--targets", "torch", "--baseline", "tf"], "baseline 'tf' is not among the targets"),
        (["--slo-p99-ms", "50", "--slo-rates", "100,20"], "must be below rate_high"),
        (["--slo-p99-ms", "50", "--slo-rates", "100"], "two rates"),
        (["--slo-rates", "20,100"], "applies to an SLO search"),
        # A schedule of a billion requests per second would not fit in memory (it used to end in a traceback).
        (["--rate", "1e9"], "load.rate: Input should be less than or equal to 1000000"),
        (["--scenario", "scenarios/mine.yaml"], "no scenario file 'scenarios/mine.yaml'"),  # a typo in a path
        (["--scenario", "sweeep"], "no built-in scenario 'sweeep' (and no file of that name)"),
        (["--sweep-rates", "100,2e6"], "less than or equal to 1000000"),
        (["--report-dir", "{a_file}"], "error:"),  # found before the load, not after it
    ],
)
def test_bad_arguments_exit_3_with_one_clear_line_before_any_load(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_yaml, a_file = tmp_path / "bad.yaml", tmp_path / "a-file"
    bad_yaml.write_text("name: x\nload: [unclosed\n")
    a_file.write_text("")
    argv = [a.format(bad_yaml=bad_yaml, a_file=a_file) for a in argv]
    # Port 9 (discard) on loopback: nothing may be contacted before the arguments are checked.
    assert (
        main(["--no-progress", "--torch-url", "http://127.0.0.1:9", "--tf-rest-url", "http://127.0.0.1:9", *argv]) == 3
    )
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_a_sweeps_verdicts_name_their_level(tmp_path, fake_server, synthetic_repo):
    url = fake_server("--delay-ms", "2")
    args = ["--report-dir", str(tmp_path / "r"), "--targets", "torch,tf", "--torch-url", url, "--tf-rest-url", url]
    args += ["--no-progress", "--warmup", "0.3", "--resources", "none", "--duration", "1", "--rounds", "1"]
    assert main([*args, "--sweep-concurrency", "1,2", "--name", "levels"]) in (0, 1)
    [report] = [json.loads((p / "report.json").read_text()) for p in (tmp_path / "r").iterdir()]
    verdict = report["verdict"]
    assert verdict, report
    assert {line.split(": ", 1)[0] for line in verdict} == {"c=1", "c=2"}, verdict
