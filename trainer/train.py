"""The training loop: single process or DistributedDataParallel under torchrun, TensorBoard logs, tqdm."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from trainer.config import TrainConfig
from trainer.data import Splits
from trainer.errors import TrainerError
from trainer.model import CNN


@dataclass
class DistContext:
    """Where this process sits in a torchrun job (world_size 1 = plain `python -m trainer`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_context_from_env() -> DistContext:
    return DistContext(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def resolve_device(pref: str, ctx: DistContext) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise TrainerError("--device cuda requested but no CUDA device is available")
    if pref == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    import torch.distributed as dist

    if ctx.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # nccl is the GPU collective library; gloo is the CPU one.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


@dataclass
class TrainResult:
    model: CNN  # on CPU, eval mode
    val_accuracy: float
    test_accuracy: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed everything and use deterministic kernels while training: same seed, same machine, same
    weights. The global switches are restored afterwards, because tests train inside a pytest process
    that other components' tests share. (warn_only: an op without a deterministic GPU kernel still runs.)"""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch.set_num_threads(n) for the duration (0 = leave as is); restored afterwards."""
    prev = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each NCHW image by an integer offset in [-max_shift, max_shift] (zero fill)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen).to(x.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


def one_cycle(total_steps: int, warmup_fraction: float = 0.25) -> Callable[[int], float]:
    """LR factor per step: linear warm-up from 1/25 to 1 over the first quarter, then cosine to 0.
    (torch's OneCycleLR divides by zero when a smoke run has only a handful of steps.)"""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return 1 / 25 + (1 - 1 / 25) * step / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate(net: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, predicted classes) of `net` in eval mode."""
    was_training = net.training
    net.eval()
    losses, preds = [], []
    for i in range(0, len(y), 512):
        xb = to_nchw(x[i : i + 512]).to(device)
        yb = torch.from_numpy(y[i : i + 512]).to(device)
        logits = net(xb)
        losses.append(F.cross_entropy(logits, yb, reduction="sum").item())
        preds.append(logits.argmax(1).cpu().numpy())
    net.train(was_training)
    pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    return sum(losses) / max(1, len(y)), float((pred == y).mean()) if len(y) else 0.0, pred


def train(
    cfg: TrainConfig,
    splits: Splits,
    device: torch.device,
    ctx: DistContext,
    writer: Any = None,
    progress: bool = True,
    verbose: bool = True,
) -> TrainResult:
    """Train a CNN on splits.train with a fixed schedule (validation only reports), then measure val/test
    accuracy. Under torchrun every rank trains its shard; the returned model is rank 0's (identical on
    all ranks). `progress`: tqdm bars; `verbose`: one summary line per epoch (rank 0 only)."""
    with deterministic(cfg.seed), intra_op_threads(cfg.threads):
        return _train(cfg, splits, device, ctx, writer, progress, verbose)


def _train(
    cfg: TrainConfig,
    splits: Splits,
    device: torch.device,
    ctx: DistContext,
    writer: Any,
    progress: bool,
    verbose: bool,
) -> TrainResult:
    from tqdm import tqdm

    net = CNN(cfg.model).to(device)
    model: nn.Module = net
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = TensorDataset(to_nchw(splits.x_train), torch.from_numpy(splits.y_train))
    # The configured batch is global: each of N ranks takes 1/N of it, so results barely depend on N.
    per_rank_batch = max(1, cfg.batch_size // ctx.world_size)
    if ctx.distributed:
        sampler: Any = DistributedSampler(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed))
    loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, num_workers=0)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + ctx.rank + 1)

    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(cfg.epochs * len(loader)))

    history: list[dict[str, float]] = []
    step = 0
    start = time.perf_counter()
    val_acc = 0.0
    for epoch in range(1, cfg.epochs + 1):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not (progress and ctx.is_main), leave=True)
        for xb, yb in bar:
            xb = random_shift(xb, cfg.augment_shift, aug_gen).to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            with torch.no_grad():
                totals += torch.stack(
                    [
                        loss.detach().double() * len(yb),
                        (logits.argmax(1) == yb).sum().double(),
                        totals.new_tensor(len(yb)),
                    ]
                )
            if ctx.is_main:
                bar.set_postfix(
                    loss=f"{totals[0].item() / totals[2].item():.4f}",
                    acc=f"{(totals[1] / totals[2]).item():.4f}",
                    refresh=False,
                )
                if writer is not None:
                    writer.add_scalar("train/loss_step", loss.item(), step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        if ctx.distributed:
            import torch.distributed as dist

            dist.all_reduce(totals)
        train_loss = (totals[0] / totals[2]).item()
        train_acc = (totals[1] / totals[2]).item()
        record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc}
        if ctx.is_main:
            val_loss, val_acc, _ = evaluate(net, splits.x_val, splits.y_val, device)
            record.update(val_loss=val_loss, val_accuracy=val_acc)
            if verbose:
                tqdm.write(
                    f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                    f"val loss {val_loss:.4f} acc {val_acc:.4f}",
                    file=sys.stderr,
                )
            if writer is not None:
                writer.add_scalar("train/loss", train_loss, epoch)
                writer.add_scalar("train/accuracy", train_acc, epoch)
                writer.add_scalar("val/loss", val_loss, epoch)
                writer.add_scalar("val/accuracy", val_acc, epoch)
        history.append(record)
    train_seconds = time.perf_counter() - start

    test_acc = 0.0
    if ctx.is_main:
        _, test_acc, test_pred = evaluate(net, splits.x_test, splits.y_test, device)
        if writer is not None:
            _log_samples(writer, splits, test_pred, test_acc, step)
    final = copy.deepcopy(net).cpu().eval()
    return TrainResult(final, val_acc, test_acc, train_seconds, history)


def _log_samples(writer: Any, splits: Splits, pred: np.ndarray, test_acc: float, step: int) -> None:
    """A few test images with their predictions, so a run can be eyeballed in TensorBoard."""
    n = min(16, len(splits.y_test))
    writer.add_scalar("test/accuracy", test_acc, step)
    writer.add_images("test/samples", splits.x_test[:n], step, dataformats="NHWC")
    rows = ["| # | true | predicted |", "|---|---|---|"]
    rows += [
        f"| {i} | {int(splits.y_test[i])} | {int(pred[i])}{'' if pred[i] == splits.y_test[i] else ' ✗'} |"
        for i in range(n)
    ]
    writer.add_text("test/predictions", "\n".join(rows), step)
