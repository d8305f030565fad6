"""Train the class-conditional DDPM UNet on CIFAR-10 and export its EMA weights.

    python -m training.train_diffusion --epochs 50 --batch-size 128
    python -m training.train_diffusion --epochs 1 --max-minutes 2 --data ../shared/data/cifar10-jpeg.tar.gz
    python -m training.train_diffusion --resume runs/diffusion          # continue a run exactly
    python -m training.train_diffusion --resume models/diffusion        # warm start from shipped weights
    python -m training.continue_diffusion --max-minutes 120             # the standing run (make train-continue)

Each step: random flip (in the data loader), a noise level (t ~ U[0, T), or EDM's log-normal sigma),
the regression loss of the chosen prediction (eps, v or EDM-preconditioned, shared/diffusion/parameterization.py;
optionally min-SNR weighted), AdamW with linear warm-up, gradient clipping, and an EMA of the weights
(fixed decay, or EDM's half-life rule); the EMA weights are what ships. With --probe-every-minutes the
run scores its EMA weights on fixed seeds at intervals (training/quality.py), appends each score to
--history, and with --export-if-better exports only weights that beat the shipped ones.
Labels are dropped to the null label with probability --label-dropout so the same
weights sample unconditionally and with classifier-free guidance (Ho & Salimans 2022, Sec. 3.2).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import time
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
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion, NetworkFn
from shared.diffusion.unet import UNet, UNetConfig
from shared.images import grid_image, to_uint8
from shared.weights import count_parameters
from training.common import (
    REPO_ROOT,
    RUN_HELP,
    Budget,
    DivergenceError,
    RunConfig,
    StopSignalError,
    add_dataclass_arguments,
    all_finite,
    configure_logging,
    dataclass_from_args,
    epochs_of_batches,
    export_run,
    is_checkpoint,
    load_checkpoint,
    load_training_data,
    make_ema,
    rng_state,
    save_checkpoint,
    set_rng_state,
    steps_in_an_epoch,
    stop_on_signals,
    warmup_lambda,
)
from training.data import ImageDataset
from training.quality import Prober, ProbeSpec, hardware

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
    ema_halflife_ratio: float = 0.0
    ema_halflife_images: int = 500_000
    label_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    # process and network (ignored when resuming: the checkpoint or weights fix them)
    schedule: str = DiffusionConfig.schedule.value
    num_timesteps: int = DiffusionConfig.num_timesteps
    prediction: str = DiffusionConfig.prediction.value
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
    threads: int | None = None
    channels_last: bool = True
    compile: bool = False
    # bookkeeping
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0
    snapshot_minutes: tuple[int, ...] = ()
    max_core_minutes: float | None = None
    # quality probes (training/quality.py)
    probe_every_minutes: float | None = None
    probe_n: int = ProbeSpec.n
    probe_sampler: str = ProbeSpec.sampler
    probe_steps: int = ProbeSpec.steps
    probe_guidance: float = ProbeSpec.guidance_scale
    classifier: str = str(REPO_ROOT / "models" / "classifier")
    history: str | None = None
    run_name: str = ""
    export_if_better: bool = False
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
    "prediction": "what the network predicts: eps, v (Salimans & Ho 2022) or edm (Karras et al. 2022 preconditioning)",
    "ema_halflife_ratio": "EMA half-life as a share of the images seen (EDM: 0.05); 0 uses --ema-decay",
    "ema_halflife_images": "cap of the EMA half-life in images (EDM: 500k)",
    "threads": "torch CPU threads (default: torch's choice)",
    "checkpoint_minutes": "also checkpoint whenever this much wall time passed since the last one",
    "snapshot_minutes": "export the EMA weights to <out>/snapshots/min_NNN at these core-minutes since the run began",
    "max_core_minutes": "stop after this much training compute (CPU core-minutes, probes excluded)",
    "probe_every_minutes": "score the EMA weights on fixed seeds every this many core-minutes of training",
    "probe_n": "images per probe (seeds 0..N-1, label i %% 10)",
    "history": "JSON-lines file each probe is appended to (models/diffusion/history.jsonl for the standing run)",
    "run_name": "the run's name in the history file",
    "export_if_better": "export only EMA weights whose probe beats the shipped model's (same probe)",
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
    # training compute in CPU core-seconds (process time) since the run began, probes excluded
    core_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)  # this process's start, for the wall-time total

    @property
    def wall_minutes_total(self) -> float:
        """Wall minutes of every process of this run (and of the weights it warm-started from)."""
        return float(self.history.get("wall_minutes_before", 0)) + (time.monotonic() - self.started) / 60

    @property
    def images_seen(self) -> int:
        """Images this run has trained on, across resumes (older checkpoints: steps x batch size)."""
        return int(self.history.get("images_seen", self.step * int(self.history.get("batch_size", 0) or 0)))

    @property
    def images_seen_total(self) -> int:
        return self.images_seen + int(self.history.get("images_seen_before", 0))

    @property
    def core_minutes_total(self) -> float:
        """Training compute of this run and of the weights it warm-started from (core_seconds: this run's)."""
        return float(self.history.get("core_minutes_before", 0)) + self.core_seconds / 60


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
        diffusion_config = DiffusionConfig(
            schedule=cfg.schedule,  # type: ignore[arg-type]
            num_timesteps=cfg.num_timesteps,
            prediction=cfg.prediction,  # type: ignore[arg-type]
        )

    unet = UNet(unet_config)
    if warm is not None:
        unet.load_state_dict(warm.unet.state_dict())
    unet.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    halflife = (cfg.batch_size, cfg.ema_halflife_ratio, cfg.ema_halflife_images) if cfg.ema_halflife_ratio > 0 else None
    ema = make_ema(unet, cfg.ema_decay, halflife)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(cfg.warmup_steps))
    state = TrainState(unet, ema, optimizer, scheduler, GaussianDiffusion(diffusion_config).to(device))

    if checkpoint is not None:
        unet.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.step, state.history = checkpoint["step"], checkpoint["history"]
        state.core_seconds = float(state.history.get("core_seconds", 0.0))
        set_rng_state(checkpoint["rng"])
        logger.info("resumed %s at step %d", cfg.resume, state.step)
    elif warm is not None:
        ema.module.load_state_dict(warm.unet.state_dict())
        previous = warm.card.get("training", {})
        # Continue the average instead of restarting its warm-up: the shipped weights already are one.
        # (in steps of this run's batch size, which is what both EMA rules count in)
        ema.n_averaged.fill_(max(1, int(previous.get("images_seen_total", 0)) // cfg.batch_size))
        state.history = {
            "images_seen_before": previous.get("images_seen_total", 0),
            "wall_minutes_before": previous.get("wall_minutes_total", previous.get("wall_minutes_this_run", 0)),
            "core_minutes_before": previous.get("core_minutes", 0),
            "warm_started_from": warm.card.get("sha256", ""),
        }
        logger.info("warm start from %s (%s images seen before)", cfg.resume, state.history["images_seen_before"])
    state.history.setdefault("batch_size", cfg.batch_size)
    state.history["images_seen"] = state.images_seen  # counted per step from here on (the batch size may change)
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
        "history": {
            **state.history,
            "core_seconds": state.core_seconds,
            "wall_minutes_before": state.wall_minutes_total,
        },
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
    return {
        "steps": state.step,
        "epochs": round(state.images_seen / (steps_per_epoch * cfg.batch_size), 3),
        "images_seen": state.images_seen,
        "images_seen_total": state.images_seen_total,
        "warm_started_from": state.history.get("warm_started_from"),
        "final_loss_ema": round(loss, 5),
        "wall_minutes_this_run": round(seconds / 60, 2),
        "wall_minutes_total": round(state.wall_minutes_total, 2),
        "core_minutes": round(state.core_minutes_total, 2),
        "hardware": hardware(),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "prediction": state.diffusion.prediction.value,
        "min_snr_gamma": cfg.min_snr_gamma,
        "label_dropout": cfg.label_dropout,
        "ema_decay": cfg.ema_decay,
        "ema_halflife_ratio": cfg.ema_halflife_ratio,
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
    state: TrainState, network: NetworkFn, x0: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig
) -> float:
    """One optimiser step on one batch; returns the loss."""
    y = drop_labels(labels, state.unet.config.null_label, cfg.label_dropout)
    loss = state.diffusion.training_loss(network, x0, y, min_snr_gamma=cfg.min_snr_gamma or None)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(state.unet.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    state.ema.update_parameters(state.unet)
    state.step += 1
    state.history["images_seen"] = state.images_seen + x0.shape[0]
    return loss.item()


HISTORY_TITLE = "diffusion: every probe of every run (N = 500, DDIM 20, guidance 3, classifier space)"


def make_prober(cfg: TrainConfig) -> Prober:
    """Probes of the EMA weights every `probe_every_minutes` core-minutes (training/quality.py)."""
    spec = ProbeSpec(n=cfg.probe_n, sampler=cfg.probe_sampler, steps=cfg.probe_steps, guidance_scale=cfg.probe_guidance)
    return Prober.for_run(cfg, spec, functools.partial(DiffusionPipeline.from_pretrained, device="cpu"), HISTORY_TITLE)


def probe(prober: Prober, state: TrainState, cfg: TrainConfig, summary_now: dict[str, Any]) -> dict[str, Any]:
    """Score the EMA weights now; export them if they beat the shipped ones."""
    row = {
        "images_seen_total": summary_now["images_seen_total"],
        "core_minutes": round(state.core_minutes_total, 2),
        "wall_minutes_total": summary_now["wall_minutes_total"],
        "hardware": summary_now["hardware"],
        "step": state.step,
    }
    pipeline = DiffusionPipeline(state.ema.module, state.diffusion)  # type: ignore[arg-type]
    result = prober(
        pipeline, row, lambda quality: export(state, cfg, {**summary_now, "quality": quality}), state.core_seconds
    )
    state.unet.train()
    return result


def export(state: TrainState, cfg: TrainConfig, result: dict[str, Any], directory: str | Path | None = None) -> Path:
    """The EMA weights (fp16) and card to `directory` (default --export), with a DDIM sample grid."""
    pipeline = DiffusionPipeline(state.ema.module, state.diffusion)  # type: ignore[arg-type]
    target = Path(directory or cfg.export)
    sampling = (
        json.loads((target / "config.json").read_text()).get("sampling") if (target / "config.json").is_file() else None
    )
    out = pipeline.save_pretrained(target, training=result, sampling=sampling)  # keeps the recommended sampling
    sample_grid(state, cfg, out / "samples.png")
    state.unet.train()
    logger.info("exported EMA weights to %s", out)
    return out


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training loop; returns the summary written into the exported model card."""
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    dataset = load_training_data(cfg.data, cfg.data_cache, device)
    state = init_state(cfg, dataset, device)
    model: nn.Module = torch.compile(state.unet) if cfg.compile else state.unet
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    prober = make_prober(cfg) if cfg.probe_every_minutes else None
    if prober is not None:
        prober.last_at = state.core_seconds  # a resumed run probes one interval after it resumed

    steps_per_epoch = steps_in_an_epoch(dataset, cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    out = Path(cfg.out)
    logger.info(
        "training %d parameters (%s prediction) on %s (%s, %d threads), %d images, %d steps/epoch, up to step %d",
        count_parameters(state.unet),
        state.diffusion.prediction.value,
        device,
        precision.value,
        torch.get_num_threads(),
        len(dataset),
        steps_per_epoch,
        total_steps,
    )

    def network(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with autocast(device, precision):
            return model(x.contiguous(memory_format=memory_format), t, y)

    budget, loss_ema, reason = Budget(cfg.max_minutes), math.nan, "finished"
    snapshots = [m for m in sorted(cfg.snapshot_minutes) if 60 * m > state.core_seconds]
    last_checkpoint = budget.elapsed
    bar = tqdm(total=total_steps, initial=state.step, desc="diffusion", unit="step", dynamic_ncols=True)
    state.unet.train()
    interrupted = False
    try:
        with stop_on_signals():
            step_start = time.process_time()
            for x0, labels in epochs_of_batches(dataset, cfg.batch_size, cfg.seed, device, lambda: state.step):
                if state.step >= total_steps:
                    break
                value = train_step(state, network, x0, labels, cfg)
                state.core_seconds += time.process_time() - step_start
                if not math.isfinite(value):
                    raise DivergenceError(f"the loss is {value} at step {state.step}")
                loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{(bar.format_dict['rate'] or 0) * cfg.batch_size:.0f}")
                if (
                    state.step % cfg.checkpoint_every == 0
                    or budget.elapsed - last_checkpoint >= 60 * cfg.checkpoint_minutes
                ):
                    save_checkpoint(out, checkpoint_state(state, cfg))
                    last_checkpoint = budget.elapsed
                if state.step % cfg.sample_every == 0:
                    sample_grid(state, cfg, out / "samples" / f"step_{state.step:07d}.png")
                    state.unet.train()
                while snapshots and state.core_seconds >= 60 * snapshots[0]:
                    minute = snapshots.pop(0)
                    now = summary(state, cfg, steps_per_epoch, loss_ema, budget.elapsed)
                    export(state, cfg, {**now, "core_minutes": minute}, out / "snapshots" / f"min_{minute:03d}")
                if prober is not None and prober.due(state.core_seconds):
                    probe(prober, state, cfg, summary(state, cfg, steps_per_epoch, loss_ema, budget.elapsed))
                if budget.exhausted():
                    reason = f"time budget of {cfg.max_minutes} minutes reached"
                    break
                if cfg.max_core_minutes is not None and state.core_seconds >= 60 * cfg.max_core_minutes:
                    reason = f"compute budget of {cfg.max_core_minutes} core-minutes reached"
                    break
                step_start = time.process_time()
    except (KeyboardInterrupt, StopSignalError) as exc:
        reason, interrupted = f"interrupted ({exc or 'KeyboardInterrupt'})", True
    finally:
        bar.close()

    logger.info("stopping at step %d: %s", state.step, reason)
    if not all_finite(state.ema.module):
        raise DivergenceError(f"the EMA weights hold non-finite values at step {state.step}")
    save_checkpoint(out, checkpoint_state(state, cfg))
    result = summary(state, cfg, steps_per_epoch, loss_ema, budget.elapsed)
    if cfg.export_if_better:
        # Only a probe decides; a stop signal means "stop now", so it skips the final probe.
        due = prober is not None and not interrupted and state.core_seconds > prober.last_at
        if due and prober is not None:
            probe(prober, state, cfg, result)
        logger.info("checkpoint in %s; the shipped weights change only when a probe beats them", out)
        return {**result, "exported": bool(prober and prober.exports)}
    grid = sample_grid(state, cfg, out / "samples" / f"step_{state.step:07d}.png")
    pipeline = DiffusionPipeline(state.ema.module, state.diffusion)  # type: ignore[arg-type]
    return export_run(cfg, result, grid, lambda d: pipeline.save_pretrained(d, training=result), "EMA weights")


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
