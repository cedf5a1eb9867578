"""The local stack (`python -m devstack`): settings, model check, and real start/ready/stop cycles.

Unit tests run in-process. Integration tests start the real services on free loopback ports against
the shared `model_repository` fixture and check that every process is gone afterwards, also when a
service fails (whose log tail must be in the error) or when the CLI gets SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devstack.__main__ import main as devstack_main
from devstack.__main__ import parse_ports
from devstack.ensure_model import TrainingFailed, complete_versions, ensure_model, force_requested, latest_version
from devstack.process import ServiceFailed, pythonpath
from devstack.settings import PORT_FIELDS, StackSettings
from devstack.stack import PortInUse, Stack, port_in_use
from tests.deploy.compose_files import COMPOSE, ROOT, load_yaml

# --- unit --------------------------------------------------------------------------------------------


def _auto_settings(**kw: object) -> StackSettings:
    return StackSettings(**{**parse_ports("auto"), **kw})


def test_settings_default_to_design_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GATEWAY_PORT", "TORCH_SERVICE_PORT", "TF_SERVING_REST_PORT", "TF_SERVING_GRPC_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert StackSettings().ports() == {"gateway": 8000, "torch_service": 8080, "tf_rest": 8501, "tf_grpc": 8500}


def test_settings_read_the_services_own_port_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_SERVICE_PORT", "9080")
    monkeypatch.setenv("MODEL_REPOSITORY", "/srv/models")
    s = StackSettings()
    assert s.torch_port == 9080 and s.model_repository == Path("/srv/models")
    # The command line (init kwargs) wins over the environment.
    assert StackSettings(torch_port=9181).torch_port == 9181


def test_settings_reject_clashing_ports() -> None:
    with pytest.raises(ValueError, match="both set to port 9000"):
        StackSettings(gateway_port=9000, torch_port=9000)


def test_child_pythonpath_keeps_what_this_process_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GPU image's dependencies live on PYTHONPATH: a child given only the repo could not import them.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/deps", "", "/repo"]))
    assert pythonpath(Path("/repo")) == os.pathsep.join(["/repo", "/deps"])
    monkeypatch.delenv("PYTHONPATH")
    assert pythonpath("/repo", "/other") == os.pathsep.join(["/repo", "/other"])


def test_sigterm_stops_the_services_a_script_started(tmp_path: Path) -> None:
    # What `timeout` does to a benchmark script: its services live in sessions of their own, so only the
    # script's handler can stop them; without it they outlive it and load the next measurement.
    script = tmp_path / "bench.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from devstack.process import ManagedProcess, stop_started_on_sigterm\n"
        "stop_started_on_sigterm()\n"
        "p = ManagedProcess('sleeper', [sys.executable, '-c', 'import time; time.sleep(120)'], None,\n"
        f"                   Path({str(tmp_path)!r}) / 'sleeper.log').start()\n"
        "print(p.proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)}, text=True
    )
    assert proc.stdout is not None
    child = psutil.Process(int(proc.stdout.readline()))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_parse_ports() -> None:
    assert parse_ports("gateway=18000, tf_grpc=18500") == {"gateway_port": 18000, "tf_grpc_port": 18500}
    auto = parse_ports("auto")
    assert len(set(auto.values())) == 4
    for bad in ("gateway", "gw=1", "gateway=x"):
        with pytest.raises(ValueError, match="NAME=PORT"):
            parse_ports(bad)


def test_cli_reports_bad_settings_without_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert devstack_main(["demo", "--ports", "gateway=70000"]) == 2
    assert "outside 1-65535" in capsys.readouterr().err


def test_port_in_use_is_detected_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        settings = _auto_settings(gateway_port=port, model_repository=tmp_path)
        stack = Stack(settings, tmp_path / "logs")
        with pytest.raises(PortInUse, match=rf"gateway {port}.*--ports auto"):
            stack.start()
        assert stack.processes == {}, "nothing may start when a port is taken"
    assert not port_in_use("127.0.0.1", port)


def _fake_version(repo: Path, version: int, *, tf: bool = True, torch: bool = True) -> None:
    if tf:
        d = repo / "tensorflow" / "cnn" / str(version)
        d.mkdir(parents=True)
        (d / "saved_model.pb").write_bytes(b"x")
    if torch:
        d = repo / "torchscript" / "cnn" / str(version)
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"x")


def test_complete_versions_need_both_trees(tmp_path: Path) -> None:
    assert latest_version(tmp_path / "missing") is None
    _fake_version(tmp_path, 1)
    _fake_version(tmp_path, 2, torch=False)  # half published: not servable by torch_service
    _fake_version(tmp_path, 3)
    (tmp_path / "tensorflow" / "cnn" / ".staging-abc").mkdir()
    assert complete_versions(tmp_path) == [1, 3]
    assert latest_version(tmp_path) == 3


def test_ensure_model_skips_training_when_a_version_exists(tmp_path: Path) -> None:
    _fake_version(tmp_path, 4)
    # A trainer argument that would fail proves the trainer never ran.
    assert ensure_model(tmp_path, trainer_args=["--no-such-flag"]) == (4, False)


def test_force_variable() -> None:
    assert force_requested({"TRAINER_FORCE": "1"}) and force_requested({"TRAINER_FORCE": "true"})
    assert not force_requested({}) and not force_requested({"TRAINER_FORCE": "0"})


@pytest.mark.integration
def test_failed_training_raises_with_the_trainer_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "trainer.log"
    with pytest.raises(TrainingFailed, match="no-such-flag") as info:
        ensure_model(tmp_path / "repo", force=True, trainer_args=["--no-such-flag"], log_path=log)
    assert str(log) in str(info.value)


# --- integration: real services ----------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _assert_all_gone(procs: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(procs, timeout=15)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running after stop: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_stack_starts_answers_and_stops_everything(model_repository: Path, tmp_path: Path) -> None:
    import httpx

    settings = _auto_settings(model_repository=model_repository)
    procs: list[psutil.Process] = []
    with Stack(settings, tmp_path / "logs") as stack:
        stack.start()
        for managed in stack.processes.values():
            assert managed.proc is not None
            procs += _tree(managed.proc.pid)
        gateway = settings.url(settings.gateway_port)
        assert httpx.get(f"{gateway}/readyz", timeout=10).status_code == 200
        # One prediction per backend through the gateway, on the real model.
        body = {"instances": [[[[0.5] for _ in range(28)] for _ in range(28)]]}
        for backend in ("torch", "tf"):
            resp = httpx.post(f"{gateway}/v1/models/cnn:predict", params={"backend": backend}, json=body, timeout=30)
            assert resp.status_code == 200, resp.text
            assert len(resp.json()["predictions"]) == 1
        # The compose healthcheck of tf_serving (bash /dev/tcp) works against the compat server too.
        test = load_yaml(COMPOSE)["services"]["tf_serving"]["healthcheck"]["test"]
        script = test[3].replace("127.0.0.1/8501", f"127.0.0.1/{settings.tf_rest_port}")
        assert subprocess.run(["bash", "-c", script], timeout=30).returncode == 0
        for name in ("torch_service", "tf_serving", "gateway"):
            assert (tmp_path / "logs" / f"{name}.log").is_file()
    assert procs
    _assert_all_gone(procs)
    assert not any(port_in_use(settings.host, p) for p in settings.ports().values())


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_failing_service_is_reported_with_its_log_tail(
    model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An invalid setting makes torch_service exit at start-up with a message naming the variable.
    monkeypatch.setenv("TORCH_SERVICE_DEVICE", "quantum")
    settings = _auto_settings(model_repository=model_repository)
    procs: list[psutil.Process] = []
    with pytest.raises(ServiceFailed) as info, Stack(settings, tmp_path / "logs") as stack:
        try:
            stack.start()
        finally:
            for managed in stack.processes.values():
                if managed.proc is not None:
                    procs += _tree(managed.proc.pid)
    message = str(info.value)
    assert "torch_service exited" in message
    assert "TORCH_SERVICE_DEVICE" in message and "quantum" in message, message
    # tf_serving was starting side by side; it must be stopped too.
    assert procs
    _assert_all_gone(procs)


def _start_cli(
    args: list[str], env: dict[str, str], log: Path, *, ignore_sigint: bool = False
) -> subprocess.Popen[bytes]:
    def background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a non-interactive shell does for `cmd &`

    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "devstack", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=background_job if ignore_sigint else None,
        )


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"devstack exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"{text!r} not printed after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def cli_env(model_repository: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "MODEL_REPOSITORY": str(model_repository),
        "DEVSTACK_LOG_DIR": str(tmp_path / "logs"),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.mark.integration
@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "signals",
    [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM), ("background", signal.SIGINT)],
    ids=["ctrl-c", "sigterm", "second-signal-while-draining", "sigint-to-a-background-job"],
)
def test_make_up_stops_every_process_on_a_signal(
    cli_env: dict[str, str], tmp_path: Path, signals: tuple[int | str, ...]
) -> None:
    """One signal stops everything gracefully. An impatient second one while the services drain ends
    their grace period; it must not abandon the cleanup half-way (it did: the services not yet
    stopped were left running). Started as a script's background job (SIGINT inherited as ignored),
    `kill -INT` must still stop it (it did nothing)."""
    background = signals[0] == "background"
    signals = signals[1:] if background else signals
    log = tmp_path / "up.log"
    proc = _start_cli(["up", "--ports", "auto"], cli_env, log, ignore_sigint=background)
    try:
        _wait_for_line(proc, log, "Ctrl-C stops everything", timeout=300)
        tree = _tree(proc.pid)
        assert len(tree) >= 4, "devstack plus three services"
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.3)  # the gateway is draining now; the backends have not been signalled yet
            proc.send_signal(int(sig))
        assert proc.wait(timeout=60) == 130
        _assert_all_gone(tree)
        text = log.read_text()
        assert "gateway" in text and "curl" in text
        assert "every process the stack started has been stopped" in text
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_writes_the_report_and_stops_everything(cli_env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("gateway.loadtest.cli", reason="the load test CLI (gateway/loadtest/cli.py) is not written yet")
    reports = tmp_path / "reports"
    log = tmp_path / "demo.log"
    ports = parse_ports("auto")
    spec = ",".join(f"{name}={ports[attr]}" for name, attr in PORT_FIELDS.items())
    proc = _start_cli(["demo", "--ports", spec, "--report-dir", str(reports)], cli_env, log)
    try:
        code = proc.wait(timeout=840)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0, text[-4000:]
    runs = [p.parent for p in reports.glob("*/report.json")]
    assert len(runs) == 1, text[-2000:]
    run = runs[0]
    for name in ("report.html", "report.json", "summary.csv"):
        assert (run / name).is_file(), name
    for name in ("torch_service", "tf_serving", "gateway"):
        assert (run / "logs" / f"{name}.log").is_file(), name
    assert str(run / "report.html") in text
    assert not any(port_in_use("127.0.0.1", p) for p in ports.values()), "a service still holds its port"


def test_run_job_returns_the_exit_code_and_writes_the_output(tmp_path: Path) -> None:
    from devstack.jobs import run_job

    out = tmp_path / "out.log"
    with open(out, "wb") as f:
        code = run_job([sys.executable, "-c", "import sys; print('hello'); sys.exit(3)"], os.environ, stdout=f)
    assert code == 3 and out.read_text().strip() == "hello"


def test_run_job_kills_the_whole_group_when_interrupted(tmp_path: Path) -> None:
    import threading

    from devstack.jobs import run_job

    pid_file = tmp_path / "grandchild.pid"
    # The job forks a grandchild that would outlive a plain kill of the job's leader.
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(300)"
    )

    def interrupt_when_started() -> None:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a shell ignores
    # it for background jobs (`make test &`): put the default handler in place for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            run_job([sys.executable, "-c", script], os.environ, grace_s=1.0)
    finally:
        signal.signal(signal.SIGINT, previous)
    grandchild = int(pid_file.read_text())
    _assert_all_gone([p for p in [_proc_or_none(grandchild)] if p is not None])


def _proc_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
