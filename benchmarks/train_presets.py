"""Train each model preset once with its default settings and print what it costs and what it reaches.

    .venv/bin/python benchmarks/train_presets.py                 # both presets, full pipeline, CPU
    python benchmarks/train_presets.py --device cuda --train-only  # GPU box without TensorFlow

Full pipeline = train + TorchScript + SavedModel export + parity reload + publish into a temporary
model repository (deleted afterwards). --train-only skips everything after training (no TensorFlow).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch

from devstack.machine import cpu_model
from trainer.config import PRESETS, make_config
from trainer.data import load_splits
from trainer.model import CNN, count_params, flops_per_image
from trainer.train import DistContext, resolve_device, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=sorted(PRESETS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, help="CPU training threads (default: the config's, 1; 0 = one per core)")
    ap.add_argument("--train-only", action="store_true", help="skip export/parity/publish (no TensorFlow)")
    args = ap.parse_args()

    device = resolve_device(args.device, DistContext())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    print(
        f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC | nproc {os.cpu_count()} | CPU {cpu_model()} | "
        f"torch {torch.__version__} | device {device} {gpu} | "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    columns = ["preset", "params", "FLOPs/image", "epochs", "threads", "train s", "pipeline s"]
    columns += ["test acc", "val acc", "parity max abs diff"]
    header = "| " + " | ".join(columns) + " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for preset in args.presets:
        cfg = make_config(preset, device=args.device, threads=args.threads)
        net = CNN(cfg.model)
        params, flops = count_params(net), flops_per_image(net)
        t0 = time.perf_counter()
        if args.train_only:
            res = train(cfg, load_splits(cfg), device, DistContext(), progress=False, verbose=False)
            train_s, test_acc, val_acc, parity = res.train_seconds, res.test_accuracy, res.val_accuracy, "-"
        else:
            from trainer.pipeline import train_and_publish

            with tempfile.TemporaryDirectory() as repo:
                m = train_and_publish(cfg, Path(repo)).manifest
            train_s = m["metrics"]["train_time_seconds"]
            test_acc, val_acc = m["metrics"]["test_accuracy"], m["metrics"]["val_accuracy"]
            parity = f"{m['parity']['max_abs_diff']:.2g} (n={m['parity']['n_samples']})"
        total = time.perf_counter() - t0
        threads = cfg.threads or os.cpu_count()
        row = [preset, f"{params:,}", f"{flops / 1e6:.2f} M", cfg.epochs, threads, f"{train_s:.1f}", f"{total:.1f}"]
        row += [f"{test_acc:.4f}", f"{val_acc:.4f}", parity]
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    # Other processes on a shared machine inflate the times; the load average says how much was going on.
    print(f"# done, load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
