"""Train the class-conditional DDPM UNet on CIFAR-10 and export its EMA weights.

    python -m training.train_diffusion --epochs 50 --batch-size 128
    python -m training.train_diffusion --epochs 1 --max-minutes 2 --data ../shared/data/cifar10-jpeg.tar.gz
    python -m training.train_diffusion --resume runs/diffusion          # continue a run exactly
    python -m training.train_diffusion --resume models/diffusion        # warm start from shipped weights

Each step: random flip (in the data loader), t ~ U[0, T), the eps-prediction loss (optionally min-SNR
weighted), AdamW with linear warm-up, gradient clipping, and an EMA of the weights; the EMA weights
are what ships. Labels are dropped to the null label with probability --label-dropout so the same
weights sample unconditionally and with classifier-free guidance (Ho & Salimans 2022, Sec. 3.2).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from shared.device import autocast, pick_device, resolve_precision
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.process import DiffusionConfig, EpsModel, GaussianDiffusion
from shared.diffusion.unet import UNet, UNetConfig
from shared.images import grid_image, to_uint8
from shared.weights import count_parameters
from training.common import (
    REPO_ROOT,
    RUN_HELP,
    Budget,
    DivergenceError,
    RunConfig,
    add_dataclass_arguments,
    all_finite,
    configure_logging,
    dataclass_from_args,
    epochs_of_batches,
    is_checkpoint,
    load_checkpoint,
    load_training_data,
    make_ema,
    replaces_better_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
    steps_in_an_epoch,
    warmup_lambda,
)
from training.data import ImageDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    out: str = "runs/diffusion"
    export: str = str(REPO_ROOT / "models" / "diffusion")
    epochs: int = 50
    batch_size: int = 128
    # optimisation
    lr: float = 2e-4
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    # process and network (ignored when resuming: the checkpoint or weights fix them)
    schedule: str = DiffusionConfig.schedule.value
    num_timesteps: int = DiffusionConfig.num_timesteps
    base_channels: int = UNetConfig.base_channels
    channel_mult: tuple[int, ...] = UNetConfig.channel_mult
    num_res_blocks: int = UNetConfig.num_res_blocks
    attention_resolutions: tuple[int, ...] = UNetConfig.attention_resolutions
    num_heads: int = UNetConfig.num_heads
    num_groups: int = UNetConfig.num_groups
    dropout: float = UNetConfig.dropout
    unconditional: bool = False
    # hardware
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    # bookkeeping
    checkpoint_every: int = 1000
    sample_every: int = 5000
    sample_images: int = 20
    sample_steps: int = 50


HELP = {
    **RUN_HELP,
    "min_snr_gamma": "min-SNR-gamma loss weighting (Hang et al. 2023); 0 for plain L_simple",
    "precision": "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16",
    "channel_mult": "width multiplier per resolution level",
    "attention_resolutions": "resolutions with self-attention",
    "sample_every": "steps between sample grids (DDIM, fixed seeds)",
}


@dataclass
class TrainState:
    unet: UNet
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    diffusion: GaussianDiffusion
    step: int = 0
    history: dict[str, Any] = field(default_factory=dict)  # totals carried across warm starts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, HELP)
    return parser


def network_config(cfg: TrainConfig, classes: Sequence[str], image_size: int) -> UNetConfig:
    return UNetConfig(
        image_size=image_size,
        base_channels=cfg.base_channels,
        channel_mult=cfg.channel_mult,
        num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=cfg.attention_resolutions,
        num_heads=cfg.num_heads,
        num_groups=cfg.num_groups,
        dropout=cfg.dropout,
        num_classes=None if cfg.unconditional else len(classes),
        class_names=() if cfg.unconditional else tuple(classes),
    )


def init_state(cfg: TrainConfig, dataset: ImageDataset, device: torch.device) -> TrainState:
    """A fresh run, an exact continuation of a checkpoint, or a warm start from shipped weights."""
    checkpoint = load_checkpoint(cfg.resume) if cfg.resume and is_checkpoint(cfg.resume) else None
    warm = DiffusionPipeline.from_pretrained(cfg.resume, device="cpu") if cfg.resume and not checkpoint else None
    if checkpoint is not None:
        unet_config = UNetConfig.from_dict(checkpoint["unet_config"])
        diffusion_config = DiffusionConfig.from_dict(checkpoint["diffusion_config"])
    elif warm is not None:
        unet_config, diffusion_config = warm.config, warm.diffusion.config
    else:
        unet_config = network_config(cfg, dataset.classes, dataset.images.shape[-1])
        diffusion_config = DiffusionConfig(schedule=cfg.schedule, num_timesteps=cfg.num_timesteps)  # type: ignore[arg-type]

    unet = UNet(unet_config)
    if warm is not None:
        unet.load_state_dict(warm.unet.state_dict())
    unet.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    ema = make_ema(unet, cfg.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(cfg.warmup_steps))
    state = TrainState(unet, ema, optimizer, scheduler, GaussianDiffusion(diffusion_config).to(device))

    if checkpoint is not None:
        unet.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.step, state.history = checkpoint["step"], checkpoint["history"]
        set_rng_state(checkpoint["rng"])
        logger.info("resumed %s at step %d", cfg.resume, state.step)
    elif warm is not None:
        ema.module.load_state_dict(warm.unet.state_dict())
        previous = warm.card.get("training", {})
        # Continue the average instead of restarting its warm-up: the shipped weights already are one.
        ema.n_averaged.fill_(max(1, int(previous.get("steps", 0))))
        state.history = {
            "images_seen_before": previous.get("images_seen_total", 0),
            "warm_started_from": warm.card.get("sha256", ""),
        }
        logger.info("warm start from %s (%s images seen before)", cfg.resume, state.history["images_seen_before"])
    if unet_config.num_classes is not None and len(dataset.classes) != unet_config.num_classes:
        raise ValueError(f"the data has {len(dataset.classes)} classes, the network {unet_config.num_classes}")
    if dataset.images.shape[-1] != unet_config.image_size:
        raise ValueError(f"the data is {dataset.images.shape[-1]} px wide, the network {unet_config.image_size}")
    return state


def checkpoint_state(state: TrainState, cfg: TrainConfig) -> dict[str, Any]:
    return {
        "model": state.unet.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "step": state.step,
        "history": state.history,
        "rng": rng_state(),
        "unet_config": state.unet.config.to_dict(),
        "diffusion_config": state.diffusion.config.to_dict(),
        "train_config": dataclasses.asdict(cfg),
    }


def sample_grid(state: TrainState, cfg: TrainConfig, path: Path) -> Path:
    """DDIM samples of the EMA weights with fixed seeds; one column per class when conditional."""
    pipeline = DiffusionPipeline(state.ema.module, state.diffusion)  # type: ignore[arg-type]
    num_classes = state.unet.config.num_classes
    labels = tuple(k % num_classes for k in range(cfg.sample_images)) if num_classes else None
    params = SampleParams(seeds=range(cfg.sample_images), sampler="ddim", steps=cfg.sample_steps, labels=labels)  # type: ignore[arg-type]
    images = to_uint8(pipeline.sample(params))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow=num_classes or None).save(path)
    return path


def summary(state: TrainState, cfg: TrainConfig, steps_per_epoch: int, loss: float, seconds: float) -> dict[str, Any]:
    images = state.step * cfg.batch_size
    return {
        "steps": state.step,
        "epochs": round(state.step / steps_per_epoch, 3),
        "images_seen": images,
        "images_seen_total": images + state.history.get("images_seen_before", 0),
        "warm_started_from": state.history.get("warm_started_from"),
        "final_loss_ema": round(loss, 5),
        "wall_minutes_this_run": round(seconds / 60, 2),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "min_snr_gamma": cfg.min_snr_gamma,
        "label_dropout": cfg.label_dropout,
        "ema_decay": cfg.ema_decay,
        "data": Path(cfg.data).name,
        "device": str(state.diffusion.betas.device),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def drop_labels(labels: torch.Tensor, null_label: int | None, p: float) -> torch.Tensor | None:
    """Replace each label by the null label with probability p (classifier-free guidance training)."""
    if null_label is None:
        return None
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def train_step(
    state: TrainState, eps_model: EpsModel, x0: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig
) -> float:
    """One optimiser step on one batch; returns the loss."""
    y = drop_labels(labels, state.unet.config.null_label, cfg.label_dropout)
    loss = state.diffusion.training_loss(eps_model, x0, y, min_snr_gamma=cfg.min_snr_gamma or None)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(state.unet.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    state.ema.update_parameters(state.unet)
    state.step += 1
    return loss.item()


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training loop; returns the summary written into the exported model card."""
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    dataset = load_training_data(cfg.data, cfg.data_cache, device)
    state = init_state(cfg, dataset, device)
    model: nn.Module = torch.compile(state.unet) if cfg.compile else state.unet
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    steps_per_epoch = steps_in_an_epoch(dataset, cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    out = Path(cfg.out)
    logger.info(
        "training %d parameters on %s (%s), %d images, %d steps/epoch, up to step %d",
        count_parameters(state.unet),
        device,
        precision.value,
        len(dataset),
        steps_per_epoch,
        total_steps,
    )

    def eps_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, precision):
            return model(x.contiguous(memory_format=memory_format), t, y)

    budget, loss_ema, reason = Budget(cfg.max_minutes), math.nan, "finished"
    bar = tqdm(total=total_steps, initial=state.step, desc="diffusion", unit="step", dynamic_ncols=True)
    state.unet.train()
    try:
        for x0, labels in epochs_of_batches(dataset, cfg.batch_size, cfg.seed, device, lambda: state.step):
            if state.step >= total_steps:
                break
            value = train_step(state, eps_model, x0, labels, cfg)
            if not math.isfinite(value):
                raise DivergenceError(f"the loss is {value} at step {state.step}")
            loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{(bar.format_dict['rate'] or 0) * cfg.batch_size:.0f}")
            if state.step % cfg.checkpoint_every == 0:
                save_checkpoint(out, checkpoint_state(state, cfg))
            if state.step % cfg.sample_every == 0:
                sample_grid(state, cfg, out / "samples" / f"step_{state.step:07d}.png")
                state.unet.train()
            if budget.exhausted():
                reason = f"time budget of {cfg.max_minutes} minutes reached"
                break
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        bar.close()

    logger.info("stopping at step %d: %s", state.step, reason)
    if not all_finite(state.ema.module):
        raise DivergenceError(f"the EMA weights hold non-finite values at step {state.step}")
    save_checkpoint(out, checkpoint_state(state, cfg))
    grid = sample_grid(state, cfg, out / "samples" / f"step_{state.step:07d}.png")
    result = summary(state, cfg, steps_per_epoch, loss_ema, budget.elapsed)
    if replaces_better_model(cfg.export, result["images_seen_total"]) and not cfg.overwrite_export:
        logger.warning(
            "%s holds a model trained on more images than this run (%d); kept it. The weights of this run "
            "are in %s; --overwrite-export replaces the shipped ones.", cfg.export, result["images_seen_total"], out,
        )  # fmt: skip
        return {**result, "exported": False}
    pipeline = DiffusionPipeline(state.ema.module, state.diffusion)  # type: ignore[arg-type]
    export = pipeline.save_pretrained(cfg.export, training=result)
    shutil.copyfile(grid, export / "samples.png")
    logger.info("exported EMA weights to %s (samples: %s)", export, grid)
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
