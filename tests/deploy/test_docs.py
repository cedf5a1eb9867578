"""The README's configuration table stays complete: every setting of every service and every
variable the compose files interpolate is documented (a new setting without a row fails here)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.compose_files import COMPOSE, COMPOSE_CPU, ROOT


def _section(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", text, re.S)
    assert match, f"README has no {name} section"
    return match.group(1)


def _env_names(module: str, cls: str, prefix: str) -> list[str]:
    mod = pytest.importorskip(module)
    settings = getattr(mod, cls)
    names = []
    for field, info in settings.model_fields.items():
        alias = info.validation_alias
        choices = [a for a in getattr(alias, "choices", []) if isinstance(a, str) and a.isupper()]
        names.append(choices[0] if choices else prefix + field.upper())
    return names


@pytest.mark.parametrize(
    ("module", "cls", "prefix"),
    [
        ("torch_service.settings", "Settings", "TORCH_SERVICE_"),
        ("tf_serving.compat.settings", "Settings", "TF_SERVING_"),
        ("gateway.settings", "Settings", "GATEWAY_"),
        ("devstack.settings", "StackSettings", "DEVSTACK_"),
    ],
)
def test_every_setting_is_in_the_configuration_table(module: str, cls: str, prefix: str) -> None:
    table = _section("configuration")
    missing = [name for name in _env_names(module, cls, prefix) if name not in table]
    assert not missing, f"README configuration section lacks {missing}"


def test_every_compose_variable_is_documented() -> None:
    table = _section("configuration")
    variables = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text() + COMPOSE_CPU.read_text()))
    assert variables
    missing = sorted(v for v in variables if v not in table)
    assert not missing, f"README configuration section lacks compose variables {missing}"
