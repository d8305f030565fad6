"""Train the CIFAR-10 classifier whose features the evaluation uses, and export it.

    python -m training.train_classifier --max-minutes 55 --epochs 24 --threads 2   # what shipped (models/README.md)
    python -m training.train_classifier --epochs 20                        # a fixed number of epochs
    python -m training.train_classifier --resume runs/classifier           # continue a run exactly

Recipe (David Page's ResNet-9 / Keller Jordan's airbench, without whitening or lookahead): random
crop (reflect padding) + flip, label smoothing, SGD with Nesterov momentum and weight decay, and a
one-cycle learning rate (linear up over `warmup_fraction`, linear down to zero). The schedule runs on
progress = max(step / total steps, elapsed / --max-minutes), so with a time budget the learning rate
reaches zero exactly when the budget ends, whatever the machine's speed. Test accuracy is reported
with and without flip test-time augmentation and written into the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from shared.classifier import Classifier, ClassifierConfig, accuracy, save_classifier
from shared.device import autocast, pick_device, resolve_precision
from shared.weights import CARD_FILE, count_parameters
from training.common import (
    REPO_ROOT,
    RUN_HELP,
    Budget,
    DivergenceError,
    RunConfig,
    add_dataclass_arguments,
    configure_logging,
    dataclass_from_args,
    epochs_of_batches,
    load_checkpoint,
    load_training_data,
    rng_state,
    save_checkpoint,
    set_rng_state,
    steps_in_an_epoch,
)
from training.data import ImageDataset, load_image_dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    out: str = "runs/classifier"
    export: str = str(REPO_ROOT / "models" / "classifier")
    epochs: int = 20
    batch_size: int = 256
    # optimisation
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    warmup_fraction: float = 0.2
    crop_padding: int = 4
    # network (ignored when resuming)
    stem_channels: int = ClassifierConfig.stem_channels
    widths: tuple[int, ...] = ClassifierConfig.widths
    logit_scale: float = ClassifierConfig.logit_scale
    # hardware
    precision: str = "auto"
    threads: int | None = None
    checkpoint_every: int = 200


RECIPE_FIELDS = ("batch_size", "lr", "momentum", "weight_decay", "label_smoothing", "warmup_fraction", "crop_padding")

HELP = {
    **RUN_HELP,
    "max_minutes": "time budget: the learning rate reaches zero when it ends (checkpoint + export)",
    "warmup_fraction": "share of the run over which the learning rate rises linearly to --lr",
    "crop_padding": "random-crop augmentation: reflect-pad by this many pixels, crop back",
    "precision": "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16",
    "threads": "torch CPU threads (default: torch's choice)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, HELP)
    return parser


def one_cycle(progress: float, warmup_fraction: float) -> float:
    """Learning-rate factor at `progress` in [0, 1]: linear 0 -> 1 over the warm-up, then 1 -> 0."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup_fraction:
        return p / warmup_fraction
    return (1.0 - p) / max(1e-8, 1.0 - warmup_fraction)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image reflect-padded by `padding` and cropped back at a random offset (B, C, H, W)."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


@torch.no_grad()
def evaluate_accuracy(model: Classifier, dataset: ImageDataset, device: torch.device) -> dict[str, float]:
    """Test accuracy with and without flip test-time augmentation, in eval mode."""
    model.eval()
    x = dataset.images.float().div(127.5).sub(1.0).to(device)
    logits_plain = model.predict_logits(x, flip_tta=False)
    logits_tta = model.predict_logits(x, flip_tta=True)
    labels = dataset.labels.to(device)
    return {"test_accuracy": accuracy(logits_tta, labels), "test_accuracy_no_tta": accuracy(logits_plain, labels)}


def previous_accuracy(export_dir: str) -> float | None:
    card = Path(export_dir) / CARD_FILE
    try:
        return float(json.loads(card.read_text())["training"]["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training loop; returns the summary written into the exported model card."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    dataset = load_training_data(cfg.data, cfg.data_cache, device)
    test_set = load_image_dataset(cfg.data, "test", cache_dir=cfg.data_cache)

    checkpoint = load_checkpoint(cfg.resume) if cfg.resume else None
    net_config = (
        ClassifierConfig.from_dict(checkpoint["classifier_config"])
        if checkpoint
        else ClassifierConfig(
            stem_channels=cfg.stem_channels,
            widths=cfg.widths,
            logit_scale=cfg.logit_scale,
            num_classes=len(dataset.classes),
            class_names=tuple(dataset.classes),
        )
    )
    model = Classifier(net_config).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
    )
    step, elapsed_before = 0, 0.0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, elapsed_before = checkpoint["step"], checkpoint["elapsed_seconds"]
        set_rng_state(checkpoint["rng"])
        logger.info("resumed %s at step %d (%.1f min done)", cfg.resume, step, elapsed_before / 60)

    steps_per_epoch = steps_in_an_epoch(dataset, cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    budget = Budget(cfg.max_minutes)
    budget_seconds = budget.limit
    logger.info(
        "training %d parameters on %s (%s, %d threads), %d images, %d steps/epoch, up to step %d%s",
        count_parameters(model), device, precision.value, torch.get_num_threads(), len(dataset),
        steps_per_epoch, total_steps, f" or {cfg.max_minutes} minutes" if budget_seconds else "",
    )  # fmt: skip

    def progress() -> float:
        by_steps = step / total_steps
        if budget_seconds is None:
            return by_steps
        return max(by_steps, (elapsed_before + budget.elapsed) / budget_seconds)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed_seconds": elapsed_before + budget.elapsed,
            "rng": rng_state(),
            "classifier_config": net_config.to_dict(),
            "train_config": dataclasses.asdict(cfg),
        }

    out = Path(cfg.out)
    loss_ema, acc_ema, reason = math.nan, math.nan, "finished"
    bar = tqdm(total=total_steps, initial=step, desc="classifier", unit="step", dynamic_ncols=True, mininterval=10)
    model.train()
    try:
        for x, y in epochs_of_batches(dataset, cfg.batch_size, cfg.seed, device, lambda: step):  # noqa: B023 (reads the live step)
            p = progress()
            if p >= 1.0:
                reason = "schedule complete" if step >= total_steps else f"time budget of {cfg.max_minutes} min used"
                break
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * one_cycle(p, cfg.warmup_fraction)
            crop_generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            x = random_crop(x, cfg.crop_padding, crop_generator).contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise DivergenceError(f"the loss is {value} at step {step}")
            batch_acc = accuracy(logits.detach(), y)
            loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
            acc_ema = batch_acc if math.isnan(acc_ema) else 0.98 * acc_ema + 0.02 * batch_acc
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{acc_ema:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3f}")
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(out, checkpoint_state())
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        bar.close()

    logger.info("stopping at step %d (%.2f epochs): %s", step, step / steps_per_epoch, reason)
    save_checkpoint(out, checkpoint_state())
    scores = evaluate_accuracy(model, test_set, device)
    logger.info("test accuracy %.4f (flip TTA), %.4f (no TTA)", scores["test_accuracy"], scores["test_accuracy_no_tta"])
    result = {
        **scores,
        "steps": step,
        "epochs": round(step / steps_per_epoch, 3),
        "images_seen": step * cfg.batch_size,
        "final_train_loss_ema": round(loss_ema, 4),
        "final_train_batch_accuracy_ema": round(acc_ema, 4),
        "wall_minutes": round((elapsed_before + budget.elapsed) / 60, 2),
        "stopped": reason,
        "threads": torch.get_num_threads(),
        "precision": precision.value,
        "device": str(device),
        "data": Path(cfg.data).name,
        "recipe": {k: getattr(cfg, k) for k in RECIPE_FIELDS},
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    before = previous_accuracy(cfg.export)
    if before is not None and before > scores["test_accuracy"] and not cfg.overwrite_export:
        logger.warning(
            "%s holds a classifier with higher test accuracy (%.4f); kept it. This run's weights are in %s; "
            "--overwrite-export replaces them.", cfg.export, before, out,
        )  # fmt: skip
        return {**result, "exported": False}
    save_classifier(model, cfg.export, training=result)
    logger.info("exported to %s", cfg.export)
    return {**result, "exported": True}


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    cfg = dataclass_from_args(TrainConfig, build_parser().parse_args(argv))
    try:
        train(cfg)
    except DivergenceError as exc:
        logger.error("%s; nothing exported, the last good checkpoint is in %s", exc, cfg.out)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
