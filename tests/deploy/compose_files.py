"""Helpers for the deployment tests: load the compose files (with Compose's merge tags) and Dockerfiles."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"


@dataclass(frozen=True)
class Tagged:
    """A value carrying one of Compose's merge tags (`!reset`, `!override`)."""

    tag: str
    value: Any


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that keeps `!reset` / `!override` instead of failing on them."""


def _tagged(loader: ComposeLoader, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return Tagged(node.tag, value)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _tagged)


def load_yaml(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.load(f, Loader=ComposeLoader)  # a SafeLoader subclass


_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose-style `${VAR:-default}` with the defaults (or `env`)."""
    env = env or {}
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


def container_port(spec: str | dict[str, Any]) -> int:
    """The container side of a `ports:` entry ('[ip:]host:container' or long form)."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(interpolate(str(spec)).rsplit(":", 1)[-1].split("/")[0])


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts (relative host paths only)."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append((vol["source"], vol["target"]))
            continue
        source, target = vol.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


@dataclass
class Dockerfile:
    path: Path
    base_images: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    pip_packages: list[str] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    @property
    def copied_packages(self) -> list[str]:
        """Top-level Python packages copied (whole or in part) into the image."""
        tops = {src.strip("/").split("/")[0] for src, _ in self.copies}
        return sorted(t for t in tops if (ROOT / t / "__init__.py").is_file())

    @property
    def copied_python_files(self) -> list[Path]:
        """Every .py file the image receives (a copied folder brings all of its files)."""
        files: list[Path] = []
        for src, _ in self.copies:
            path = ROOT / src
            if path.is_dir():
                files.extend(sorted(path.rglob("*.py")))
            elif path.suffix == ".py":
                files.append(path)
        return files


def _logical_lines(text: str) -> list[str]:
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    if buf:
        lines.append(buf)
    return lines


def parse_dockerfile(path: Path) -> Dockerfile:
    df = Dockerfile(path)
    for line in _logical_lines(path.read_text()):
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            df.args[k.strip()] = v.strip()
        elif instr == "FROM":
            image = rest.split()[0]
            df.base_images.append(interpolate(image, df.args))
        elif instr == "USER":
            df.users.append(rest.strip())
        elif instr == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            for src in parts[:-1]:
                df.copies.append((src, parts[-1]))
        elif instr == "RUN":
            tokens = shlex.split(rest)
            commands: list[list[str]] = [[]]
            for tok in tokens:
                if tok in ("&&", ";", "||"):
                    commands.append([])
                else:
                    commands[-1].append(tok)
            for words in commands:
                if "pip" in words and "install" in words:
                    after = words[words.index("install") + 1 :]
                    skip_next = False
                    for w in after:
                        if skip_next:
                            skip_next = False
                            continue
                        if w in ("-c", "-r", "--constraint", "--requirement", "--index-url", "--extra-index-url"):
                            skip_next = True
                            continue
                        if w.startswith("-"):
                            continue
                        df.pip_packages.append(w)
    return df


def normalize(dist: str) -> str:
    """PEP 503 name, extras stripped: 'uvicorn[standard]' -> 'uvicorn'."""
    return re.sub(r"[-_.]+", "-", dist.split("[")[0].split("=")[0].strip()).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins
