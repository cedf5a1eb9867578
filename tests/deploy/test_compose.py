"""The compose files, Dockerfiles and monitoring config checked without a Docker engine.

Every assertion here is a mistake that would otherwise surface only on a GPU host: a service that
starts before its model exists, a healthcheck using a binary the image lacks, a mount of a file
that is not in the repository, an image that misses a module its code imports.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.compose_files import (
    COMPOSE,
    COMPOSE_CPU,
    ROOT,
    Tagged,
    bind_mounts,
    container_port,
    interpolate,
    load_yaml,
    lock_pins,
    normalize,
    parse_dockerfile,
)

LONG_RUNNING = ("tf_serving", "torch_service", "gateway", "prometheus", "grafana")
GPU_SERVICES = ("tf_serving", "torch_service")
# DESIGN.md "Ports and names".
DESIGN_PORTS = {"gateway": {8000}, "torch_service": {8080}, "tf_serving": {8500, 8501}, "trainer": set()}
DOCKERFILES = {
    "torch_service": ROOT / "torch_service" / "Dockerfile",
    "gateway": ROOT / "gateway" / "Dockerfile",
    "trainer": ROOT / "trainer" / "Dockerfile",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_every_service_is_defined(services: dict[str, Any]) -> None:
    assert set(services) == {"trainer", "tf_serving", "torch_service", "gateway", "loadtest", "prometheus", "grafana"}
    assert services["loadtest"]["profiles"] == ["loadtest"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    # The main services run without any profile.
    for name in ("trainer", "tf_serving", "torch_service", "gateway"):
        assert "profiles" not in services[name], name


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_backends_reserve_a_gpu(services: dict[str, Any], name: str) -> None:
    devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_healthchecks_and_restart(services: dict[str, Any], name: str) -> None:
    svc = services[name]
    test = svc["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    assert svc["restart"] == "unless-stopped"


def test_one_shot_jobs_never_restart(services: dict[str, Any]) -> None:
    assert services["trainer"]["restart"] == "no"
    assert services["loadtest"]["restart"] == "no"


def test_start_order_uses_conditions(services: dict[str, Any]) -> None:
    for backend in GPU_SERVICES:
        assert services[backend]["depends_on"] == {"trainer": {"condition": "service_completed_successfully"}}
    assert services["gateway"]["depends_on"] == {
        "torch_service": {"condition": "service_healthy"},
        "tf_serving": {"condition": "service_healthy"},
    }
    assert services["loadtest"]["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with a condition"
        for dep, spec in deps.items():
            assert spec.get("condition") in ("service_healthy", "service_completed_successfully"), (name, dep)


def test_no_sleeps_anywhere() -> None:
    text = COMPOSE.read_text() + COMPOSE_CPU.read_text()
    assert not re.search(r"\bsleep\b", text)


def test_ports_follow_design(services: dict[str, Any]) -> None:
    for name, expected in DESIGN_PORTS.items():
        got = {container_port(p) for p in services[name].get("ports", [])}
        assert got == expected, name
    # Published host ports are overridable (tests and busy hosts) and default to the same numbers.
    for name in ("gateway", "torch_service", "tf_serving"):
        for spec in services[name]["ports"]:
            assert "${" in spec, f"{name}: host port {spec} is not overridable"
            host = interpolate(spec).split(":")[-2]
            assert host == str(container_port(spec))


def test_service_environment_wires_backends_by_compose_name(services: dict[str, Any]) -> None:
    for name in ("gateway", "loadtest"):
        env = services[name]["environment"]
        assert env["GATEWAY_TORCH_URLS"] == "http://torch_service:8080"
        assert env["GATEWAY_TF_REST_URLS"] == "http://tf_serving:8501"
        assert env["GATEWAY_TF_GRPC_TARGETS"] == "tf_serving:8500"
    assert services["gateway"]["environment"]["GATEWAY_HOST"] == "0.0.0.0"
    torch_env = services["torch_service"]["environment"]
    assert torch_env["TORCH_SERVICE_HOST"] == "0.0.0.0" and str(torch_env["TORCH_SERVICE_PORT"]) == "8080"
    # torch_service reads the very batching file tf_serving reads (one policy for both backends).
    batching = torch_env["TORCH_SERVICE_BATCHING_PARAMETERS_FILE"]
    assert ("./tf_serving/batching.config", batching) in bind_mounts(services["torch_service"])
    assert f"--batching_parameters_file={batching}" in services["tf_serving"]["command"]


def test_model_repository_is_the_models_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    assert "models" in compose["volumes"]
    assert "models:/models" in services["trainer"]["volumes"]
    assert services["trainer"]["environment"]["MODEL_REPOSITORY"] == "/models"
    for name in ("tf_serving", "torch_service", "loadtest"):
        assert "models:/models:ro" in services[name]["volumes"], name


def test_gateway_load_tests_write_where_its_user_may(compose: dict[str, Any], services: dict[str, Any]) -> None:
    # /v1/loadtests writes one folder per run under GATEWAY_LOADTEST_REPORTS_DIR. The image runs as a
    # non-root uid that owns only the folder its Dockerfile creates; a host bind mount there would belong
    # to the host user (answered 503), so it must be a named volume, which Docker creates with the
    # image folder's owner.
    gw = services["gateway"]
    reports = gw["environment"]["GATEWAY_LOADTEST_REPORTS_DIR"]
    named = {v.split(":")[0]: v.split(":")[1] for v in gw["volumes"] if not v.startswith((".", "/"))}
    assert reports in named.values() and next(k for k, t in named.items() if t == reports) in compose["volumes"]
    df = parse_dockerfile(DOCKERFILES["gateway"])
    text = DOCKERFILES["gateway"].read_text()
    assert re.search(rf"mkdir -p {re.escape(reports)} && chown {re.escape(df.users[-1])} {re.escape(reports)}", text)
    assert f"GATEWAY_LOADTEST_REPORTS_DIR={reports}" in text  # also for a plain `docker run`
    # Its bodies come from the published model's golden set, as the loadtest service's do.
    assert "models:/models:ro" in gw["volumes"] and gw["environment"]["MODEL_REPOSITORY"] == "/models"


def test_every_bind_mount_and_build_path_exists(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for source, _ in bind_mounts(svc):
            if source == "./reports":  # created by the first load test run
                continue
            assert (ROOT / source).exists(), f"{name}: mounted {source} does not exist"
        build = svc.get("build")
        if build:
            assert (ROOT / build["context"]).is_dir(), name
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_tf_serving_runs_the_official_image_with_the_documented_flags(services: dict[str, Any]) -> None:
    svc = services["tf_serving"]
    image = svc["image"]
    assert image.startswith("${TF_SERVING_IMAGE:-"), "the TF Serving image must be overridable"
    default = interpolate(image)
    repo, _, tag = default.partition(":")
    assert repo == "tensorflow/serving" and tag.endswith("-gpu") and re.match(r"\d+\.\d+\.\d+-gpu$", tag)
    assert "build" not in svc, "TF Serving runs unmodified"
    assert svc["entrypoint"] == ["tensorflow_model_server"]
    flags_file = [
        line.strip()
        for line in (ROOT / "tf_serving" / "server_flags.txt").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert svc["command"] == flags_file, "compose and tf_serving/server_flags.txt disagree"


def test_tf_serving_flag_paths_point_at_mounted_files(services: dict[str, Any]) -> None:
    svc = services["tf_serving"]
    mounts = dict((target, source) for source, target in bind_mounts(svc))
    checked = 0
    for flag in svc["command"]:
        name, _, value = flag.partition("=")
        if not value.startswith("/"):
            continue
        # Resolve the container path through the bind mounts to a file in this repository.
        for target, source in mounts.items():
            if value == target or value.startswith(target.rstrip("/") + "/"):
                host = ROOT / source / value[len(target) :].lstrip("/")
                assert host.is_file(), f"{name}={value} -> {host} does not exist"
                checked += 1
                break
        else:
            pytest.fail(f"{name}={value} is not under any bind mount of tf_serving")
    assert checked >= 3  # models, batching, monitoring


def test_models_config_base_path_is_inside_the_models_volume() -> None:
    text = (ROOT / "tf_serving" / "models.config").read_text()
    base_paths = re.findall(r'base_path:\s*"([^"]+)"', text)
    assert base_paths == ["/models/tensorflow/cnn"]


def test_healthchecks_use_binaries_present_in_their_images(services: dict[str, Any]) -> None:
    # tensorflow/serving has bash, coreutils and grep, but no curl, wget or python.
    tf_test = " ".join(services["tf_serving"]["healthcheck"]["test"])
    assert "bash" in tf_test and "/dev/tcp/127.0.0.1/8501" in tf_test and '"AVAILABLE"' in tf_test
    assert not re.search(r"\b(curl|wget|python)\b", tf_test)
    # The Python images have python but no curl.
    for name, path in (("torch_service", "/v2/health/ready"), ("gateway", "/readyz")):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and path in test[3], name


def test_image_tags_are_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = interpolate(svc["image"])
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: {image}"


# --- CPU override ----------------------------------------------------------------------------------


def test_cpu_override_removes_gpu_reservations_and_uses_the_cpu_image() -> None:
    override = load_yaml(COMPOSE_CPU)["services"]
    assert set(override) == set(GPU_SERVICES)
    for name in GPU_SERVICES:
        deploy = override[name]["deploy"]
        assert isinstance(deploy, Tagged) and deploy.tag == "!reset", name
    image = interpolate(override["tf_serving"]["image"])
    assert image.startswith("tensorflow/serving:") and not image.endswith("-gpu")
    # Same release as the GPU image: the comparison must not change TF Serving versions with the host.
    gpu_image = interpolate(load_yaml(COMPOSE)["services"]["tf_serving"]["image"])
    assert gpu_image == image + "-gpu"


# --- Dockerfiles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_small_pinned_and_non_root(name: str) -> None:
    df = parse_dockerfile(DOCKERFILES[name])
    assert df.base_images, "no FROM"
    for image in df.base_images:
        assert ":" in image and not image.endswith(":latest"), image
    assert df.users and df.users[-1] not in ("root", "0"), "the image must end on a non-root USER"
    pins = lock_pins()
    for pkg in df.pip_packages:
        assert "==" not in pkg, f"{pkg}: versions come from requirements.lock (-c), not the Dockerfile"
        assert normalize(pkg) in pins, f"{pkg} is not pinned in requirements.lock"
    text = DOCKERFILES[name].read_text()
    assert "-c /tmp/requirements.lock" in text
    # The dependency layer comes before the code, so code edits keep the cached pip layer.
    first_code = re.search(r"(?m)^COPY [a-z_]+/ ", text)
    assert first_code is not None and text.index("pip install") < first_code.start()
    assert not re.search(r"(?i)(password|secret|token)\s*=", text)


@pytest.mark.parametrize("name", ["torch_service", "trainer"])
def test_cuda_images_keep_the_base_images_torch(name: str) -> None:
    df = parse_dockerfile(DOCKERFILES[name])
    assert df.base_images[0].startswith("pytorch/pytorch:") and "cuda" in df.base_images[0]
    torch_pin = lock_pins()["torch"]
    assert df.base_images[0].split(":")[1].startswith(torch_pin + "-"), "base image torch != requirements.lock"
    assert "torch" not in {normalize(p) for p in df.pip_packages}, "pip would replace the CUDA torch"


def test_gateway_image_has_no_torch() -> None:
    df = parse_dockerfile(DOCKERFILES["gateway"])
    assert "torch" not in {normalize(p) for p in df.pip_packages}
    assert df.base_images[0].startswith("python:3.11")


def _dockerignore_includes(path: str) -> bool:
    """Whether the root .dockerignore (deny-all, then `!dir/` re-includes) lets `path` into the context."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "**", "the .dockerignore is written as an allow-list"
    top = path.strip("/").split("/")[0]
    return any(rule.startswith("!") and rule[1:].strip("/").split("/")[0] == top for rule in rules)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_copies_exist_and_are_in_the_build_context(name: str) -> None:
    df = parse_dockerfile(DOCKERFILES[name])
    for src, _ in df.copies:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert _dockerignore_includes(src), f"COPY {src}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (".venv", "model_repository", "reports", ".git", "runs"):
        assert not _dockerignore_includes(path), path


# Which images hold which code: a module imported by code in an image must come from a
# distribution that image installs (or from its base image).
BASE_IMAGE_DISTS = {"torch_service": {"torch"}, "trainer": {"torch"}, "gateway": set()}


# Imports that may stay unresolved in an image, each with the one file allowed to make it.
OPTIONAL_IMPORTS = {
    # An alternative load generator, run with a separately installed `locust`, never in a container.
    "locust": ROOT / "gateway" / "loadtest" / "locustfile.py",
}


def _imports(files: list[Path]) -> set[str]:
    """Top-level names of every absolute import in `files`, including imports inside functions."""
    names: set[str] = set()
    for py in files:
        tree = ast.parse(py.read_text(), filename=str(py))
        exempt = {module for module, path in OPTIONAL_IMPORTS.items() if path == py}
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
        names |= found - exempt
    return names


def _closure(dists: set[str]) -> set[str]:
    """The distributions installed by `pip install dists`, resolved with this venv's metadata."""
    seen: set[str] = set()
    todo = list(dists)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for req in requires:
            # Extras-only requirements are skipped unless the Dockerfile asked for the extra.
            if "extra ==" in req and not ("uvicorn" in name and "standard" in req):
                continue
            dep = normalize(re.split(r"[ ;<>=!~(\[]", req, maxsplit=1)[0])
            todo.append(dep)
    return seen


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_install_every_module_their_code_imports(name: str) -> None:
    df = parse_dockerfile(DOCKERFILES[name])
    packages = df.copied_packages
    assert packages, "the image copies no Python package"
    imported = _imports(df.copied_python_files)
    first_party = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    missing_packages = sorted(p for p in first_party & imported if p not in packages)
    assert not missing_packages, f"code in the image imports {missing_packages}, which the image does not copy"
    installed = _closure({normalize(p) for p in df.pip_packages} | BASE_IMAGE_DISTS[name])
    module_dists = md.packages_distributions()
    missing = []
    for module in sorted(imported - first_party - set(sys.stdlib_module_names)):
        dists = {normalize(d) for d in module_dists.get(module, [])}
        if not dists:
            missing.append(f"{module} (not installed in this venv either)")
        elif not dists & installed:
            missing.append(f"{module} (from {', '.join(sorted(dists))})")
    assert not missing, f"{DOCKERFILES[name].relative_to(ROOT)} misses: {missing}"


def test_gateway_image_installs_no_tensorflow() -> None:
    """The gateway declares TF Serving's messages itself (gateway/upstreams/tfs_protos.py); pulling in
    tensorflow-serving-api would bring all of TensorFlow back into its image (~2 GB installed)."""
    df = parse_dockerfile(DOCKERFILES["gateway"])
    installed = _closure({normalize(p) for p in df.pip_packages} | BASE_IMAGE_DISTS["gateway"])
    assert "protobuf" in installed and "grpcio" in installed
    assert not {d for d in installed if d.startswith(("tensorflow", "keras"))}, sorted(installed)


# --- monitoring ------------------------------------------------------------------------------------


def test_prometheus_scrapes_all_three_services(services: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {
        "torch_service": ("/metrics", "torch_service:8080"),
        "tf_serving": ("/monitoring/prometheus/metrics", "tf_serving:8501"),
        "gateway": ("/metrics", "gateway:8000"),
    }
    for job, (path, target) in expected.items():
        assert jobs[job]["metrics_path"] == path
        targets = [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]
        assert targets == [target]
        host, port = target.split(":")
        assert host in services and int(port) in {container_port(p) for p in services[host]["ports"]}
    monitoring = (ROOT / "tf_serving" / "monitoring.config").read_text()
    assert 'path: "/monitoring/prometheus/metrics"' in monitoring and "enable: true" in monitoring


def test_grafana_is_provisioned_as_code() -> None:
    import json

    grafana = ROOT / "monitoring" / "grafana"
    ds = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "cnn-serving.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((grafana / "dashboards" / "cnn-serving.json").read_text())
    assert dashboard["panels"], "the dashboard has no panels"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["expr"].strip(), panel["title"]
