"""Command line: `python -m trainer [options]` (also under `torchrun --nproc_per_node=N -m trainer`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.config import PRESETS
from trainer.errors import TrainerError


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m trainer",
        description=(
            "Train the CNN in PyTorch, export it as TorchScript and as a TensorFlow SavedModel, prove the "
            "two give the same outputs, and publish them as the next version of the model repository."
        ),
        epilog="Distributed: torchrun --nproc_per_node=N -m trainer [options] (only rank 0 publishes).",
    )
    p.add_argument("--preset", default="small", help=f"model preset: {', '.join(sorted(PRESETS))} (default small)")
    p.add_argument(
        "--data",
        metavar="PATH",
        help="MNIST as a directory of IDX files (train-images-idx3-ubyte[.gz], ...) or an mnist.npz "
        "(x_train, y_train, x_test, y_test); default: scikit-learn's bundled digits",
    )
    p.add_argument(
        "--model-repository",
        metavar="DIR",
        type=Path,
        default=None,
        help="where versions are published (default: $MODEL_REPOSITORY or ./model_repository)",
    )
    p.add_argument("--version", type=int, help="publish as this version (default: next after the highest)")
    p.add_argument(
        "--runs-dir", metavar="DIR", type=Path, default=Path("runs"), help="TensorBoard runs (default runs/)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default auto: CUDA if present")
    p.add_argument("--epochs", type=int, help="training epochs (preset default)")
    p.add_argument("--batch-size", type=int, help="global batch size (preset default)")
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (preset default)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    p.add_argument("--augment-shift", type=int, help="max random translation in pixels (0 = no augmentation)")
    p.add_argument("--seed", type=int, help="seed for split, init, batch order and augmentation (default 0)")
    p.add_argument("--max-train-samples", type=int, help="cap the training set (stratified), for smoke runs")
    p.add_argument("--threads", type=int, help="CPU threads for training (default 1; 0 = one per core)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Deterministic cuBLAS needs this before CUDA initialises.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from trainer.config import make_config
        from trainer.pipeline import run
        from trainer.publish import default_repository

        cfg = make_config(
            args.preset,
            data=args.data,
            device=args.device,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            augment_shift=args.augment_shift,
            seed=args.seed,
            max_train_samples=args.max_train_samples,
            threads=args.threads,
        )
        repo = args.model_repository or default_repository()
        published = run(cfg, repo, args.version, runs_dir=args.runs_dir, progress=not args.no_progress)
    except TrainerError as e:
        print(f"trainer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trainer: interrupted; nothing published", file=sys.stderr)
        return 130
    if published is not None:
        m = published.manifest
        print(
            f"published {m['model_name']} version {published.version}: "
            f"test_accuracy={m['metrics']['test_accuracy']:.4f} "
            f"parity max_abs_diff={m['parity']['max_abs_diff']:.2g} "
            f"train_time={m['metrics']['train_time_seconds']:.1f}s -> "
            f"{published.paths['torchscript']}, {published.paths['tensorflow']}"
        )
    return 0
