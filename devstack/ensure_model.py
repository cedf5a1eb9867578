"""Train only when needed: publish a model version unless the repository already holds a complete one.

Used by `make demo`/`make up` and as the compose `trainer` service's command
(`python -m devstack.ensure_model`), so restarting the stack never retrains by accident.
`--force` or `TRAINER_FORCE=1` trains anyway; arguments after `--` go to `python -m trainer`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack.jobs import run_job

MODEL_NAME = "cnn"
# The files that make a version servable by each backend (DESIGN.md, model repository layout).
REQUIRED_FILES = {
    "tensorflow": ("saved_model.pb",),
    "torchscript": ("model.pt",),
}
TRUTHY = {"1", "true", "yes", "on"}


class TrainingFailed(RuntimeError):
    """`python -m trainer` exited non-zero; the message carries the end of its output."""


def _versions(tree: Path) -> set[int]:
    if not tree.is_dir():
        return set()
    # Positive integers only: anything else (a temp dir being renamed into place, a stray file)
    # is not a published version.
    return {int(p.name) for p in tree.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}


def complete_versions(
    repo: Path, model: str = MODEL_NAME, frameworks: tuple[str, ...] = tuple(REQUIRED_FILES)
) -> list[int]:
    """Versions present in every tree of `frameworks` (both by default) with their key artifact, ascending."""
    found: set[int] | None = None
    for framework in frameworks:
        files = REQUIRED_FILES[framework]
        tree = Path(repo) / framework / model
        ok = {v for v in _versions(tree) if all((tree / str(v) / f).is_file() for f in files)}
        found = ok if found is None else found & ok
    return sorted(found or ())


def latest_version(repo: Path, model: str = MODEL_NAME) -> int | None:
    versions = complete_versions(repo, model)
    return versions[-1] if versions else None


def force_requested(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("TRAINER_FORCE", "").strip().lower() in TRUTHY


def train(repo: Path, trainer_args: Sequence[str] = (), log_path: Path | None = None) -> None:
    """Run `python -m trainer` with MODEL_REPOSITORY=repo. Output goes to the console, or to
    `log_path` when given (the local stack keeps the console for its own progress lines)."""
    env = {**os.environ, "MODEL_REPOSITORY": str(repo), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "trainer", *trainer_args]
    if log_path is None:
        code = run_job(argv, env)
        if code != 0:
            raise TrainingFailed(f"`{' '.join(argv[1:])}` exited with code {code} (its output is above)")
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        code = run_job(argv, env, stdout=log)
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise TrainingFailed(f"`{' '.join(argv[1:])}` exited with code {code}; last lines of {log_path}:\n{tail}")


def ensure_model(
    repo: Path, *, force: bool = False, trainer_args: Sequence[str] = (), log_path: Path | None = None
) -> tuple[int, bool]:
    """Make sure `repo` holds a complete version. Returns (version, trained_now)."""
    existing = latest_version(repo)
    if existing is not None and not force:
        return existing, False
    train(repo, trainer_args, log_path)
    version = latest_version(repo)
    if version is None:
        raise TrainingFailed(
            f"the trainer exited 0 but {repo} holds no complete version "
            f"(expected {{tensorflow,torchscript}}/{MODEL_NAME}/<N>/ with saved_model.pb and model.pt)"
        )
    return version, True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.ensure_model",
        description="Train and publish a model version unless MODEL_REPOSITORY already holds one.",
    )
    parser.add_argument("--force", action="store_true", help="train even if a version exists (or TRAINER_FORCE=1)")
    parser.add_argument(
        "--model-repository", type=Path, default=None, help="default: $MODEL_REPOSITORY or ./model_repository"
    )
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after `--`: arguments for python -m trainer")
    args = parser.parse_args(argv)
    repo = args.model_repository or Path(os.environ.get("MODEL_REPOSITORY", "model_repository"))
    trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
    force = args.force or force_requested()
    try:
        version, trained = ensure_model(repo, force=force, trainer_args=trainer_args)
    except TrainingFailed as exc:
        print(f"ensure_model: {exc}", file=sys.stderr)
        return 1
    verb = "trained and published" if trained else "found existing"
    print(f"ensure_model: {verb} version {version} in {repo}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
