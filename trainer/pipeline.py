"""Train -> export both artifacts -> reload and prove parity -> publish one version atomically.

`train_and_publish` is the Python API (tests, benchmarks); the CLI calls `run`, which also handles
torchrun (only rank 0 validates the repository, exports and publishes).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from trainer.config import MODEL_NAME, TrainConfig, validate
from trainer.data import Splits, load_splits
from trainer.errors import TrainerError
from trainer.model import count_params, flops_per_image
from trainer.publish import (
    choose_version,
    commit_version,
    ensure_writable,
    staging_area,
    write_manifest,
)
from trainer.train import (
    DistContext,
    TrainResult,
    dist_context_from_env,
    init_process_group,
    resolve_device,
    train,
)

GOLDEN_MAX = 256
FORMATS = {"torchscript": "torchscript", "tensorflow": "tensorflow_savedmodel"}

T = TypeVar("T")


@dataclass
class Published:
    """One published version: its number, its two version directories, and their manifests."""

    version: int
    paths: dict[str, Path]  # {"torchscript": <repo>/torchscript/cnn/<v>, "tensorflow": <repo>/tensorflow/cnn/<v>}
    manifest: dict[str, Any]  # the TorchScript tree's manifest (the TF one differs only in format/files/bytes)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_dir: Path | None = None


def train_and_publish(
    config: TrainConfig,
    model_repository: Path,
    version: int | None = None,
    *,
    runs_dir: Path | None = None,
    progress: bool = False,
) -> Published:
    """Single-process train + export + parity + publish. Raises TrainerError for bad input (before any
    training where it can be known) and ParityError if the exports disagree; publishes nothing then."""
    published = run(
        config,
        Path(model_repository),
        version,
        runs_dir=runs_dir,
        progress=progress,
        verbose=progress,
        ctx=DistContext(),
    )
    assert published is not None  # rank 0 of a one-process job always publishes
    return published


def run(
    config: TrainConfig,
    model_repository: Path,
    version: int | None = None,
    *,
    runs_dir: Path | None = None,
    progress: bool = True,
    verbose: bool = True,
    ctx: DistContext | None = None,
) -> Published | None:
    """Like train_and_publish, but torchrun-aware (ctx from the environment by default). Returns None
    on ranks other than 0."""
    ctx = ctx or dist_context_from_env()
    validate(config)
    device = resolve_device(config.device, ctx)
    init_process_group(ctx, device)
    try:
        # Cheap checks first, so bad input never costs a training run.
        chosen = _on_rank0(ctx, lambda: _preflight(model_repository, version, runs_dir))
        splits = load_splits(config)
        run_dir = None
        writer = None
        if ctx.is_main and runs_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = Path(runs_dir) / f"{stamp}-{config.preset}-v{chosen}"
            writer = SummaryWriter(log_dir=str(run_dir))
            writer.add_text("config", "```\n" + json.dumps(config.to_dict(), indent=2) + "\n```")
        try:
            result = train(config, splits, device, ctx, writer=writer, progress=progress, verbose=verbose)
        finally:
            if writer is not None:
                writer.close()
        if not ctx.is_main:
            return None
        return export_and_publish(config, model_repository, chosen, splits, result, device, ctx, run_dir)
    finally:
        if ctx.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _preflight(repo: Path, version: int | None, runs_dir: Path | None) -> int:
    ensure_writable(repo, "model repository")
    if runs_dir is not None:
        ensure_writable(Path(runs_dir), "runs directory")
    return choose_version(repo, version)


def _on_rank0(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run fn on rank 0 and share its result (or its TrainerError) with every rank."""
    if not ctx.distributed:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except TrainerError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise TrainerError(value)
    return value


def export_and_publish(
    config: TrainConfig,
    repo: Path,
    version: int,
    splits: Splits,
    result: TrainResult,
    device: torch.device,
    ctx: DistContext,
    run_dir: Path | None = None,
) -> Published:
    from trainer.export_tf import export_saved_model, import_tf
    from trainer.export_torch import export_torchscript
    from trainer.parity import check_parity

    net = result.model
    with staging_area(repo) as staging:
        dirs = {tree: staging / tree for tree in FORMATS}
        dirs["torchscript"].mkdir()
        export_torchscript(net, dirs["torchscript"] / "model.pt")
        export_saved_model(net, dirs["tensorflow"], warmup_images=splits.x_test[:32])
        parity = check_parity(dirs["torchscript"] / "model.pt", dirs["tensorflow"], splits.x_test, seed=config.seed)

        n = min(GOLDEN_MAX, len(splits.y_test))
        golden: dict[str, np.ndarray] = {
            "images": splits.x_test[:n].astype(np.float32),
            "labels": splits.y_test[:n].astype(np.int64),
            "probabilities": parity.reference_probabilities[:n].astype(np.float32),
            "classes": parity.reference_classes[:n].astype(np.int64),
        }
        common = {
            "model_name": MODEL_NAME,
            "version": version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "dataset": dict(splits.info),
            "sizes": {"params": count_params(net), "flops_per_image": flops_per_image(net)},
            "metrics": {
                "test_accuracy": result.test_accuracy,
                "val_accuracy": result.val_accuracy,
                "train_time_seconds": round(result.train_seconds, 3),
                "golden_accuracy": float(np.mean(golden["classes"] == golden["labels"])),
            },
            "parity": parity.to_dict(),
            "training": {
                "device": str(device),
                "world_size": ctx.world_size,
                "tensorboard_run": str(run_dir) if run_dir is not None else None,
            },
            "golden": {"n": n, "source": f"first {n} images of the test split"},
            "frameworks": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "tensorflow": import_tf().__version__,
                "numpy": np.__version__,
            },
        }
        manifests = {}
        for tree, d in dirs.items():
            np.savez(
                d / "golden.npz",
                images=golden["images"],
                labels=golden["labels"],
                probabilities=golden["probabilities"],
                classes=golden["classes"],
            )
            (d / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
            manifests[tree] = write_manifest(d, {**common, "format": FORMATS[tree]})
        targets = commit_version(staging, repo, version)
    return Published(
        version=version, paths=targets, manifest=manifests["torchscript"], manifests=manifests, run_dir=run_dir
    )


def load_golden(version_dir: Path) -> dict[str, np.ndarray]:
    """golden.npz of a published version as a plain dict of arrays."""
    with np.load(Path(version_dir) / "golden.npz") as z:
        return {k: z[k] for k in z.files}
