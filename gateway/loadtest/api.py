"""Load tests as a gateway resource: POST a scenario, watch its progress, read its report, cancel it.

`build_router(settings)` is included by the gateway's app factory. Runs execute on a thread of their
own whose load comes from separate worker processes, so the gateway's event loop never waits on them.
One run at a time; scenarios name targets (torch, tf, tf-grpc, gateway-torch, gateway-tf), never
addresses, and their size is capped by `GATEWAY_LOADTEST_*` limits. Results live in the reports
folder (one folder per run, status.json + report files), so the list survives a restart.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.loadtest.report import run_folder, summary_rows, write_report
from gateway.loadtest.runner import PreflightError, Progress, Runner
from gateway.loadtest.scenario import Scenario
from gateway.loadtest.targets import EXPLICIT_TF_GRPC, EXPLICIT_TF_REST, EXPLICIT_TORCH, Endpoints, TargetError
from serving_core.openapi import errors

RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9_.-]{1,70}$")


class LoadTestSettings(BaseSettings):
    """Limits on what an API caller may ask for (the CLI, run by an operator, has none)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_LOADTEST_", extra="ignore")

    reports_dir: Path = Path("reports")
    max_duration_s: float = Field(default=900.0, gt=0)  # planned load time of one run, warm-ups included
    max_rate: float = Field(default=5000.0, gt=0)
    max_concurrency: int = Field(default=256, ge=1)
    max_workers: int = Field(default=4, ge=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def endpoints_from_settings(settings: Any) -> Endpoints:
    host = getattr(settings, "host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    port = getattr(settings, "port", 8000)
    return Endpoints(
        torch_urls=tuple(getattr(settings, "torch_urls", ["http://127.0.0.1:8080"])),
        tf_rest_urls=tuple(getattr(settings, "tf_rest_urls", ["http://127.0.0.1:8501"])),
        tf_grpc_targets=tuple(getattr(settings, "tf_grpc_targets", ["127.0.0.1:8500"])),
        gateway_url=f"http://{host}:{port}",
        # Its own load tests through itself authenticate like any client (with the first key).
        gateway_api_key=(getattr(settings, "api_keys", None) or [None])[0],
        # The gateway's own configuration, not defaults: may stand in for what /v1/backends cannot say.
        explicit=frozenset(
            k
            for k, attr in (
                (EXPLICIT_TORCH, "torch_urls"),
                (EXPLICIT_TF_REST, "tf_rest_urls"),
                (EXPLICIT_TF_GRPC, "tf_grpc_targets"),
            )
            if getattr(settings, attr, None)
        ),
    )


class _Run:
    def __init__(self, run_id: str, folder: Path, scenario: Scenario):
        self.id = run_id
        self.folder = folder
        self.scenario = scenario
        self.progress = Progress()
        self.cancel = threading.Event()
        self.state = "running"
        self.error: str | None = None
        self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.thread: threading.Thread | None = None


class LoadTestManager:
    """Starts runs (one at a time) and answers for past ones from the reports folder."""

    def __init__(self, endpoints: Endpoints, limits: LoadTestSettings):
        self.endpoints = endpoints
        self.limits = limits
        self.reports_dir = Path(limits.reports_dir)
        self._lock = threading.Lock()
        self._active: _Run | None = None

    # -- validation ---------------------------------------------------------------------------------

    def validate(self, body: Any) -> Scenario:
        if not isinstance(body, dict):
            raise ApiError(422, "the body must be a JSON object (a scenario)")
        for forbidden in ("pids", "containers"):
            if body.get(forbidden):
                raise ApiError(400, f"`{forbidden}` cannot be set through the API")
        try:
            sc = Scenario.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "scenario"
            raise ApiError(422, f"invalid scenario: {where}: {first['msg']}") from None
        lim = self.limits
        if sc.planned_seconds() > lim.max_duration_s:
            raise ApiError(
                400,
                f"scenario runs {sc.planned_seconds():.0f} s of load; the limit is "
                f"{lim.max_duration_s:.0f} s (GATEWAY_LOADTEST_MAX_DURATION_S)",
            )
        if sc.max_rate() > lim.max_rate:
            raise ApiError(
                400, f"rate {sc.max_rate():g}/s exceeds the limit {lim.max_rate:g}/s (GATEWAY_LOADTEST_MAX_RATE)"
            )
        if sc.max_concurrency() > lim.max_concurrency:
            raise ApiError(
                400,
                f"concurrency/connections {sc.max_concurrency()} exceed the limit "
                f"{lim.max_concurrency} (GATEWAY_LOADTEST_MAX_CONCURRENCY)",
            )
        if sc.workers > lim.max_workers:
            raise ApiError(
                400, f"{sc.workers} workers exceed the limit {lim.max_workers} (GATEWAY_LOADTEST_MAX_WORKERS)"
            )
        try:
            Runner(sc, self.endpoints)  # resolves every target against the configuration
        except TargetError as exc:
            raise ApiError(400, str(exc)) from None
        return sc

    # -- runs ---------------------------------------------------------------------------------------

    def start(self, body: Any) -> dict[str, Any]:
        sc = self.validate(body)
        with self._lock:
            if self._active is not None and self._active.state == "running":
                raise ApiError(409, f"load test {self._active.id} is running; one at a time")
            try:
                folder = run_folder(self.reports_dir, sc.name)
                run = _Run(folder.name, folder, sc)
                self._write_status(run)
            except OSError as exc:
                # A deployment problem, not the caller's: say which folder and which setting.
                raise ApiError(
                    503,
                    f"load tests cannot write their results under {self.reports_dir}: "
                    f"{exc.strerror or exc}; set GATEWAY_LOADTEST_REPORTS_DIR to a folder the gateway can write",
                ) from None
            self._active = run
            run.thread = threading.Thread(target=self._execute, args=(run,), name=f"loadtest-{run.id}", daemon=True)
            run.thread.start()
        return self._status_of(run)

    def _execute(self, run: _Run) -> None:
        run.progress.listeners.append(lambda _p: self._maybe_write_status(run))
        try:
            runner = Runner(run.scenario, self.endpoints, run.progress, run.cancel)
            result = runner.run()
            from gateway.loadtest.cli import check_thresholds

            failures = check_thresholds(result, run.scenario)
            result["threshold_failures"] = failures
            result["passed"] = result["valid"] and not failures
            write_report(result, run.folder)
            run.state = "done"
        except PreflightError as exc:
            run.state, run.error = "failed", str(exc)
        except Exception as exc:  # the run ends; the reason is kept for GET
            if run.cancel.is_set():
                run.state, run.error = "cancelled", "cancelled by request"
            else:
                run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"
        self._write_status(run)

    _last_write = 0.0

    def _maybe_write_status(self, run: _Run) -> None:
        now = time.monotonic()
        if now - self._last_write > 1.0:
            self._last_write = now
            self._write_status(run)

    def _status_of(self, run: _Run) -> dict[str, Any]:
        return {
            "id": run.id,
            "name": run.scenario.name,
            "state": run.state,
            "created_at": run.created_at,
            "error": run.error,
            "progress": run.progress.as_dict(),
            "planned_seconds": run.scenario.planned_seconds(),
            "scenario": run.scenario.model_dump(mode="json"),
        }

    def _write_status(self, run: _Run) -> None:
        status = self._status_of(run)
        tmp = run.folder / "status.json.tmp"
        tmp.write_bytes(orjson.dumps(status))
        tmp.replace(run.folder / "status.json")

    def _folder(self, run_id: str) -> Path:
        if not RUN_ID.match(run_id):
            raise ApiError(404, f"no load test {run_id!r}")
        folder = self.reports_dir / run_id
        if not (folder / "status.json").is_file():
            raise ApiError(404, f"no load test {run_id!r}")
        return folder

    def get(self, run_id: str) -> dict[str, Any]:
        active = self._active
        if active is not None and active.id == run_id:
            status = self._status_of(active)
            folder = active.folder
        else:
            folder = self._folder(run_id)
            status = orjson.loads((folder / "status.json").read_bytes())
            if status.get("state") == "running":
                status["state"] = "interrupted"  # the process that ran it is gone (a restart)
        report = folder / "report.json"
        if status["state"] == "done" and report.is_file():
            result = orjson.loads(report.read_bytes())
            status["results"] = {
                "valid": result["valid"],
                "invalid_reasons": result["invalid_reasons"],
                "failed_requests": result["failed_requests"],
                "requests": result["requests"],
                "verdict": result["verdict"],
                "summary": summary_rows(result),
                "threshold_failures": result.get("threshold_failures", []),
                "passed": result.get("passed"),
                "slo": {k: {kk: vv for kk, vv in v.items() if kk != "steps"} for k, v in result["slo"].items()},
            }
            status["report_url"] = f"/v1/loadtests/{run_id}/report"
        return status

    def list(self) -> list[dict[str, Any]]:
        out = []
        if self.reports_dir.is_dir():
            for folder in sorted(self.reports_dir.iterdir(), reverse=True):
                if not (folder / "status.json").is_file() or not RUN_ID.match(folder.name):
                    continue
                try:
                    st = self.get(folder.name)
                except (ApiError, ValueError, OSError):
                    continue
                out.append({k: st.get(k) for k in ("id", "name", "state", "created_at", "error", "report_url")})
        return out

    def report(self, run_id: str) -> Path:
        folder = self._folder(run_id)
        path = folder / "report.html"
        if not path.is_file():
            active = self._active
            if active is not None and active.id == run_id and active.state == "running":
                # It exists and will have one: not a 404, which would tell a client to stop looking.
                raise ApiError(409, f"load test {run_id} is still running; its report is written when it ends")
            raise ApiError(404, f"load test {run_id} ended without a report (see GET /v1/loadtests/{run_id})")
        return path

    def cancel(self, run_id: str) -> dict[str, Any]:
        active = self._active
        if active is None or active.id != run_id:
            self._folder(run_id)
            raise ApiError(409, f"load test {run_id} is not running")
        if active.state == "running":
            active.cancel.set()
            if active.thread is not None:
                active.thread.join(timeout=15)
        return self._status_of(active)

    def shutdown(self) -> None:
        active = self._active
        if active is not None and active.state == "running":
            active.cancel.set()


def build_router(settings: Any, limits: LoadTestSettings | None = None) -> APIRouter:
    """The /v1/loadtests resource; targets come from the gateway's own settings."""
    manager = LoadTestManager(endpoints_from_settings(settings), limits or LoadTestSettings())
    router = APIRouter(prefix="/v1/loadtests", tags=["loadtests"])
    router.manager = manager  # type: ignore[attr-defined]  # for the app's shutdown hook and tests

    def fail(exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @router.post(
        "",
        status_code=202,
        summary="Start a load test",
        description="Body: a scenario (the same YAML/JSON the CLI reads, as JSON). One run at a time; its size "
        "is capped by GATEWAY_LOADTEST_* limits. Answers its status, with `Location` naming the run.",
        responses=errors(
            400,
            401,
            409,
            413,
            422,
            503,
            descriptions={
                400: "Body is not JSON, or the scenario exceeds a limit or names a target this gateway lacks.",
                409: "Another load test is running.",
                422: "Not a valid scenario: the message names the first wrong field.",
                503: "The gateway cannot write to its reports folder (GATEWAY_LOADTEST_REPORTS_DIR).",
            },
        ),
        openapi_extra={
            "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
        },
    )
    async def create(request: Request) -> Any:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            return JSONResponse({"error": f"body is not JSON: {exc}"}, status_code=400)
        try:
            status = manager.start(body)
        except ApiError as exc:
            return fail(exc)
        return JSONResponse(status, status_code=202, headers={"Location": f"/v1/loadtests/{status['id']}"})

    @router.get("", summary="Load tests, newest first", responses=errors(401))
    async def list_runs() -> Any:
        return {"loadtests": manager.list()}

    @router.get("/{run_id}", summary="A load test's status, and its results once done", responses=errors(401, 404))
    async def get_run(run_id: str) -> Any:
        try:
            return manager.get(run_id)
        except ApiError as exc:
            return fail(exc)

    @router.get(
        "/{run_id}/report",
        summary="A finished load test's HTML report",
        response_class=HTMLResponse,
        responses=errors(
            401,
            404,
            409,
            descriptions={
                404: "No such load test, or it ended without a report (failed or cancelled).",
                409: "Still running: the report is written when it ends.",
            },
        ),
    )
    async def get_report(run_id: str) -> Any:
        try:
            return FileResponse(manager.report(run_id), media_type="text/html")
        except ApiError as exc:
            return fail(exc)

    @router.delete(
        "/{run_id}",
        summary="Cancel a running load test",
        responses=errors(401, 404, 409, descriptions={409: "That load test is not running."}),
    )
    async def cancel_run(run_id: str) -> Any:
        import asyncio

        try:
            # Joining the run thread blocks; keep it off the event loop.
            return await asyncio.to_thread(manager.cancel, run_id)
        except ApiError as exc:
            return fail(exc)

    return router
