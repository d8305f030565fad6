"""Train the energy-based model by contrastive divergence with a replay buffer; export its weights.

    python -m training.train_ebm --epochs 30 --batch-size 64     # the served recipe: recovery likelihood
    python -m training.train_ebm --recipe persistent --epochs 1 --max-minutes 15   # this file's classic recipe
    python -m training.train_ebm --recipe persistent --resume runs/ebm             # continue a run

`--recipe recovery` (the default) runs training/train_ebm_recovery.py with the other flags: the recipe
the service serves, because its chains from noise are the chains it was trained with. This file is the
classic recipe (persistent chains, Du & Mordatch 2019; the theory notebook's), kept for comparison:
its short serving chains from uniform noise collapse to one colour per class (models/README.md).

Each step: data x+ (random flips, plus Gaussian noise of --data-noise), negatives x- from short
Langevin chains started in the replay buffer (--buffer-reinit of them from fresh noise), the CD loss
E(x+) - E(x-) + alpha (E(x+)^2 + E(x-)^2) (plus JEM's cross-entropy when the network has classes),
Adam with beta1 = 0, gradient clipping. Langevin updates only the images: the network's parameters
are frozen inside the chains (see shared/ebm/langevin.py).

EBM training can diverge (energies run away, NaNs). Each step is checked; on divergence the last
good checkpoint is restored and the learning rate halved, up to --max-restores times, after which
the run stops without exporting.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from shared.device import pick_device
from shared.ebm.energy import EnergyConfig, EnergyNet
from shared.ebm.langevin import LangevinParams, sample_model
from shared.ebm.objective import CDTerms, contrastive_divergence_loss
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
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
    export_run,
    is_checkpoint,
    load_checkpoint,
    load_training_data,
    rng_state,
    save_checkpoint,
    set_rng_state,
    steps_in_an_epoch,
)
from training.data import ImageDataset
from training.replay_buffer import ReplayBuffer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    out: str = "runs/ebm"
    export: str = str(REPO_ROOT / "models" / "ebm")
    epochs: int = 30
    batch_size: int = 64
    # objective and optimisation
    lr: float = 1e-4
    alpha: float = 1.0
    ce_weight: float = 1.0
    data_noise: float = 0.03
    grad_clip: float = 1.0
    # negatives: persistent Langevin chains
    buffer_size: int = 10_000
    buffer_reinit: float = 0.05
    langevin_steps: int = 20
    langevin_step_size: float = 2.0
    langevin_noise: float = 0.01
    langevin_grad_clip: float = 0.03
    # serving defaults written into the model card (chains from uniform noise need more steps)
    serve_steps: int = 200
    serve_step_size: float | None = None
    # network (ignored when resuming)
    base_channels: int = EnergyConfig.base_channels
    channel_mult: tuple[int, ...] = EnergyConfig.channel_mult
    num_res_blocks: int = EnergyConfig.num_res_blocks
    spectral_norm: bool = EnergyConfig.spectral_norm
    unconditional: bool = False
    # divergence handling
    divergence_threshold: float = 100.0
    max_restores: int = 3
    # bookkeeping
    checkpoint_every: int = 200
    sample_every: int = 1000
    sample_images: int = 20


HELP = {
    **RUN_HELP,
    "alpha": "weight of the energy regulariser E(x+)^2 + E(x-)^2",
    "ce_weight": "weight of JEM's cross-entropy term (class-conditional networks)",
    "data_noise": "std of the Gaussian noise added to data images",
    "buffer_reinit": "fraction of chains restarted from uniform noise each batch",
    "divergence_threshold": "mean |energy| above which a step counts as diverged",
    "max_restores": "how often a diverged run is restored from its last checkpoint before it stops",
    "serve_steps": "Langevin steps of the serving chain (from uniform noise) written into the model card",
    "serve_step_size": "step size of the serving chain in the card (default --langevin-step-size); chains "
    "from noise may want a larger one than the short training chains (models/README.md has a sweep)",
}


@dataclass
class TrainState:
    net: EnergyNet
    optimizer: torch.optim.Optimizer
    buffer: ReplayBuffer
    step: int = 0
    restores: int = 0
    history: dict[str, Any] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("recovery", "persistent"), default="recovery", help="see above")
    add_dataclass_arguments(parser, TrainConfig, HELP)
    return parser


def chain_params(cfg: TrainConfig, steps: int | None = None) -> LangevinParams:
    return LangevinParams(
        steps=cfg.langevin_steps if steps is None else steps,
        step_size=cfg.langevin_step_size,
        noise_scale=cfg.langevin_noise,
        grad_clip=cfg.langevin_grad_clip,
    )


def serving_chain(cfg: TrainConfig) -> LangevinParams:
    """The chain written into the model card (and drawn in sample grids): from noise, --serve-steps long."""
    chain = chain_params(cfg, cfg.serve_steps)
    return dataclasses.replace(chain, step_size=cfg.serve_step_size or chain.step_size)


def network_config(cfg: TrainConfig, dataset: ImageDataset) -> EnergyConfig:
    return EnergyConfig(
        image_size=dataset.images.shape[-1],
        base_channels=cfg.base_channels,
        channel_mult=cfg.channel_mult,
        num_res_blocks=cfg.num_res_blocks,
        spectral_norm=cfg.spectral_norm,
        num_classes=None if cfg.unconditional else len(dataset.classes),
        class_names=() if cfg.unconditional else dataset.classes,
    )


def init_state(cfg: TrainConfig, dataset: ImageDataset, device: torch.device) -> TrainState:
    """A fresh run, a continuation of a checkpoint, or a warm start from exported weights."""
    checkpoint = load_checkpoint(cfg.resume) if cfg.resume and is_checkpoint(cfg.resume) else None
    warm = EBMPipeline.from_pretrained(cfg.resume, device="cpu") if cfg.resume and not checkpoint else None
    if checkpoint is not None:
        net = EnergyNet(EnergyConfig.from_dict(checkpoint["energy_config"]))
    elif warm is not None:
        net = warm.net
    else:
        net = EnergyNet(network_config(cfg, dataset))
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.0, 0.999))  # beta1 = 0 (Du & Mordatch)
    shape = (net.config.in_channels, net.config.image_size, net.config.image_size)
    state = TrainState(
        net, optimizer, ReplayBuffer(cfg.buffer_size, shape, reinit_prob=cfg.buffer_reinit, device=device)
    )
    if checkpoint is not None:
        restore(state, checkpoint)
        logger.info("resumed %s at step %d", cfg.resume, state.step)
    elif warm is not None:
        state.history = {
            "images_seen_before": warm.card.get("training", {}).get("images_seen_total", 0),
            "warm_started_from": warm.card.get("sha256", ""),
        }
    if net.config.image_size != dataset.images.shape[-1]:
        raise ValueError(f"the data is {dataset.images.shape[-1]} px wide, the network {net.config.image_size}")
    return state


def checkpoint_state(state: TrainState, cfg: TrainConfig) -> dict[str, Any]:
    return {
        "model": state.net.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "buffer": state.buffer.state_dict(),
        "step": state.step,
        "restores": state.restores,
        "history": state.history,
        "rng": rng_state(),
        "energy_config": state.net.config.to_dict(),
        "train_config": dataclasses.asdict(cfg),
    }


def restore(state: TrainState, checkpoint: dict[str, Any]) -> None:
    state.net.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.buffer.load_state_dict(checkpoint["buffer"])
    state.step, state.history = checkpoint["step"], checkpoint["history"]
    state.restores = checkpoint.get("restores", 0)
    set_rng_state(checkpoint["rng"])


def train_step(state: TrainState, x: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> CDTerms:
    """One CD step: refresh negatives in the buffer, then one optimiser step on the network."""
    index, x_init = state.buffer.sample(x.shape[0])
    x_neg = sample_model(state.net, x_init, chain_params(cfg))  # parameters untouched in here
    state.buffer.update(index, x_neg)
    x_pos = (x + cfg.data_noise * torch.randn_like(x)).clamp(-1, 1)
    terms = contrastive_divergence_loss(
        state.net, x_pos, x_neg, labels=labels, alpha=cfg.alpha, ce_weight=cfg.ce_weight
    )  # fmt: skip
    state.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    nn.utils.clip_grad_norm_(state.net.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.step += 1
    return terms


def diverged(terms: CDTerms, threshold: float) -> str | None:
    """Why this step counts as diverged, or None."""
    values = {"loss": terms.loss.item(), "E(x+)": terms.energy_pos, "E(x-)": terms.energy_neg}
    for name, value in values.items():
        if not math.isfinite(value):
            return f"{name} is {value}"
    for name in ("E(x+)", "E(x-)"):
        if abs(values[name]) > threshold:
            return f"|{name}| = {abs(values[name]):.3g} exceeds {threshold}"
    return None


def recover(state: TrainState, cfg: TrainConfig, reason: str) -> None:
    """Restore the last good checkpoint and halve the learning rate, or give up."""
    if state.restores >= cfg.max_restores:
        raise DivergenceError(f"training diverged at step {state.step} ({reason}) after {state.restores} restores")
    restores = state.restores + 1
    restore(state, load_checkpoint(cfg.out))
    state.restores = restores
    for group in state.optimizer.param_groups:
        group["lr"] = group["lr"] * 0.5
    lr = state.optimizer.param_groups[0]["lr"]
    logger.warning(
        "divergence (%s): restored the checkpoint of step %d, learning rate now %.2e (restore %d of %d)",
        reason, state.step, lr, restores, cfg.max_restores,
    )  # fmt: skip


def sample_grid(state: TrainState, cfg: TrainConfig, path: Path) -> Path:
    """Serving-style samples (uniform noise, serve_steps Langevin steps, fixed seeds); a column per class."""
    pipeline = EBMPipeline(state.net)
    num_classes = state.net.config.num_classes
    labels = tuple(k % num_classes for k in range(cfg.sample_images)) if num_classes else None
    params = EBMSampleParams(seeds=tuple(range(cfg.sample_images)), langevin=serving_chain(cfg), labels=labels)
    images = to_uint8(pipeline.sample(params))
    state.net.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow=num_classes or None).save(path)
    return path


def summary(state: TrainState, cfg: TrainConfig, terms: CDTerms | None, seconds: float) -> dict[str, Any]:
    images = state.step * cfg.batch_size
    return {
        "steps": state.step,
        "images_seen": images,
        "images_seen_total": images + state.history.get("images_seen_before", 0),
        "warm_started_from": state.history.get("warm_started_from"),
        "energy_pos": terms.energy_pos if terms else None,
        "energy_neg": terms.energy_neg if terms else None,
        "cross_entropy": terms.cross_entropy if terms else None,
        "restores": state.restores,
        "wall_minutes_this_run": round(seconds / 60, 2),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "langevin_train": dataclasses.asdict(chain_params(cfg)),
        "data": Path(cfg.data).name,
        "device": str(next(state.net.parameters()).device),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_steps(
    state: TrainState,
    dataset: ImageDataset,
    cfg: TrainConfig,
    device: torch.device,
    total_steps: int,
    budget: Budget,
    bar: tqdm,
) -> tuple[CDTerms | None, str]:
    """Train until total_steps or the budget; a diverged step rolls back and restarts the data stream."""
    terms: CDTerms | None = None
    while state.step < total_steps:
        batches = epochs_of_batches(dataset, cfg.batch_size, cfg.seed, device, lambda: state.step)
        for x, labels in batches:
            if state.step >= total_steps:
                break
            step_terms = train_step(state, x, labels if state.net.config.num_classes else None, cfg)  # type: ignore[arg-type]
            problem = diverged(step_terms, cfg.divergence_threshold) or (
                None if all_finite(state.net) else "the weights hold non-finite values"
            )
            if problem:
                recover(state, cfg, problem)
                bar.n = state.step
                bar.refresh()
                break  # a fresh data stream from the restored step
            terms = step_terms
            bar.update(1)
            bar.set_postfix(
                e_pos=f"{terms.energy_pos:.3f}", e_neg=f"{terms.energy_neg:.3f}", loss=f"{terms.loss.item():.4f}"
            )
            if state.step % cfg.checkpoint_every == 0:
                save_checkpoint(Path(cfg.out), checkpoint_state(state, cfg))
            if state.step % cfg.sample_every == 0:
                sample_grid(state, cfg, Path(cfg.out) / "samples" / f"step_{state.step:07d}.png")
            if budget.exhausted():
                return terms, f"time budget of {cfg.max_minutes} minutes reached"
    return terms, "finished"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training loop; returns the summary written into the exported model card."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    dataset = load_training_data(cfg.data, cfg.data_cache, device)
    state = init_state(cfg, dataset, device)
    steps_per_epoch = steps_in_an_epoch(dataset, cfg.batch_size)
    total_steps = (
        cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    )
    out = Path(cfg.out)
    save_checkpoint(out, checkpoint_state(state, cfg))  # a good state to fall back to from the start
    logger.info(
        "training %d parameters on %s, %d images, %d steps/epoch, up to step %d",
        count_parameters(state.net), device, len(dataset), steps_per_epoch, total_steps,
    )  # fmt: skip

    budget = Budget(cfg.max_minutes)
    bar = tqdm(total=total_steps, initial=state.step, desc="ebm", unit="step", dynamic_ncols=True)
    try:
        terms, reason = run_steps(state, dataset, cfg, device, total_steps, budget, bar)
    except KeyboardInterrupt:
        terms, reason = None, "interrupted"
    finally:
        bar.close()

    logger.info("stopping at step %d: %s", state.step, reason)
    if not all_finite(state.net):
        raise DivergenceError(f"the weights hold non-finite values at step {state.step}")
    save_checkpoint(out, checkpoint_state(state, cfg))
    grid = sample_grid(state, cfg, out / "samples" / f"step_{state.step:07d}.png")
    result = summary(state, cfg, terms, budget.elapsed)
    pipeline = EBMPipeline(state.net)
    return export_run(
        cfg, result, grid, lambda d: pipeline.save_pretrained(d, training=result, sampling=serving_chain(cfg))
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`--recipe recovery` (the default: the served recipe) hands over to training/train_ebm_recovery.py."""
    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument("--recipe", choices=("recovery", "persistent"), default="recovery")
    known, rest = recipe.parse_known_args(argv)
    if known.recipe == "recovery":
        from training import train_ebm_recovery

        return train_ebm_recovery.main(rest)
    configure_logging()
    cfg = dataclass_from_args(TrainConfig, build_parser().parse_args(rest))
    try:
        train(cfg)
    except DivergenceError as exc:
        logger.error("%s; nothing exported, the last good checkpoint is in %s", exc, cfg.out)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
