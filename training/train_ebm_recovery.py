"""Train the energy-based model by diffusion recovery likelihood (Gao et al. 2021); export its weights.

    python -m training.train_ebm_recovery --max-minutes 90                       # a budgeted CPU run
    python -m training.train_ebm_recovery --resume runs/ebm-recovery --max-minutes 60   # continue it
    python -m training.train_ebm_recovery --resume models/ebm --max-minutes 5 --device cuda   # warm start
    python -m training.train_ebm --epochs 30 --batch-size 64           # the same trainer (the served recipe)

Each step (Gao et al. 2021, arXiv:2012.08125, Algorithm 1): data x (random flips), a level t per
image uniform in [0, T-1], the pair (x_t, x_{t+1}) of the forward process, negatives y- from the
conditional Langevin chain started at x_{t+1} (K steps, the network frozen inside it), the loss
mean_i w_t (E(y+, t) - E(y-, t)) with y+ = a_{t+1} x_t, Adam. Serving runs the same chains level by
level from Gaussian noise (shared/ebm/recovery_sampling.py), so the model is trained on the chain
it serves - the point of Nijkamp et al. 2019/2020 that the persistent trainer (training/train_ebm.py)
misses. Class-conditional: E(y, t, c) = -f(y, t)[c], with --uncond-prob of the images trained on the
marginal -logsumexp_c f (JEM Eq. 5) so that unlabelled requests work too, plus --ce-weight times the
cross-entropy of the energy's own classifier softmax_c f(y+, t) on the data's classes (JEM Eq. 8),
which is what class conditioning and guidance read (the contrastive term alone leaves it at chance).
The export's card serves the chain with --serve-guidance: E(y) + w (E(y, c) - E(y)) for labelled images.

Checkpoints (weights, EMA, optimizer, data position, RNG) go to --out every --checkpoint-minutes and
on SIGTERM/SIGINT; a non-finite step restores the last checkpoint and halves the learning rate.

With --probe-every-minutes the served chain is scored every that many core-minutes of training
(training/quality.py: N fixed seeds, FID, class agreement, worst-class diversity), each probe appended
to --history; with --export-if-better only weights that beat the shipped ones on all three are
exported (the standing run, `make train-ebm-continue`), else the run exports when it stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
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

from shared.device import pick_device
from shared.ebm.energy import EnergyConfig, EnergyNet
from shared.ebm.langevin import LangevinParams
from shared.ebm.objective import RecoveryTerms, recovery_likelihood_loss
from shared.ebm.pipeline import EBMPipeline
from shared.ebm.recovery import RecoverySchedule
from shared.ebm.recovery_sampling import recovery_chain
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
from training.train_ebm import diverged

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    out: str = "runs/ebm-recovery"
    export: str = str(REPO_ROOT / "models" / "ebm")
    epochs: int = 30
    batch_size: int = 32
    # objective and optimisation (Gao et al.'s code: Adam lr 1e-4, beta1 0.9, warm-up 1000 steps)
    lr: float = 1e-4
    warmup_steps: int = 200
    grad_clip: float = 1.0
    uncond_prob: float = 0.1
    ce_weight: float = (
        1.0  # JEM's cross-entropy of p(c | y+, t) beside the recovery loss; 0: none (the 77k-image model)
    )
    ema_halflife_ratio: float = 0.1  # 0: no EMA (serve the raw weights)
    # the chain, trained and served (Gao et al.: T = 6, K = 30, b^2 = 2e-4, noise 1.0 / 0.99)
    levels: int = 6
    chain_steps: int = 15
    b_sq: float = 2e-4
    train_noise: float = 1.0
    # the served chain's temperature and guidance, chosen together on the 229k-image weights (models/README.md,
    # *Noise and guidance*): noise 1.05 with w = 4 keeps every class diverse (the paper's 0.99 collapses deer)
    serve_noise: float = 1.05
    serve_guidance: float = 4.0
    # network (ignored when resuming)
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    # divergence handling and bookkeeping
    divergence_threshold: float = 1e6
    max_restores: int = 3
    checkpoint_minutes: float = 5.0
    sample_images: int = 20
    threads: int | None = None
    # quality probes (training/quality.py) and the standing run's export rule
    probe_every_minutes: float | None = None
    probe_n: int = 500
    classifier: str = str(REPO_ROOT / "models" / "classifier")
    history: str | None = None
    run_name: str = ""
    export_if_better: bool = False
    diversity_tolerance: float = 0.05


HELP = {
    **RUN_HELP,
    "warmup_steps": "linear learning-rate warm-up",
    "grad_clip": "clip of the parameters' gradient norm",
    "uncond_prob": "share of training images whose chain and loss use the marginal energy (no class)",
    "ce_weight": "weight of the cross-entropy of the energy's own classifier p(c | y+, t) on the data (JEM)",
    "ema_halflife_ratio": "EMA half-life as a share of the images seen (Karras et al. 2022); 0 turns EMA off",
    "levels": "T, the number of noise levels (recovery steps)",
    "chain_steps": "K, Langevin steps per level, in training and in the served chain",
    "b_sq": "b^2 of the Langevin step sizes s_t^2 = b^2 c_t^2 sigma_{t+1}^2",
    "train_noise": "factor on the Langevin noise s_t z in training",
    "serve_noise": "factor on the Langevin noise in the served chain (written into the model card)",
    "serve_guidance": "guidance on the energy, E(x) + w (E(x, y) - E(x)), in the served chain (written into the card)",
    "divergence_threshold": "mean |energy| above which a step counts as diverged",
    "checkpoint_minutes": "wall minutes between checkpoints (also on SIGTERM / SIGINT)",
    "threads": "torch CPU threads (default: torch's)",
    "probe_every_minutes": "score the served chain on fixed seeds every this many core-minutes of training",
    "probe_n": "images per probe (seeds 0..N-1, label i %% 10; the card's chain and guidance)",
    "classifier": "the feature network of the probes",
    "history": "JSON-lines file each probe is appended to (models/ebm/history.jsonl for the standing run)",
    "run_name": "the run's name in the history file",
    "export_if_better": "export only weights whose probe beats the shipped model's (same probe), never at the end",
    "diversity_tolerance": "how much of the worst class's diversity an export may lose (with --export-if-better)",
}


@dataclass
class TrainState:
    net: EnergyNet
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: RecoverySchedule
    step: int = 0
    restores: int = 0
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def serving_net(self) -> EnergyNet:
        return self.ema.module if self.ema is not None else self.net  # type: ignore[return-value]

    @property
    def core_seconds(self) -> float:
        """Training compute of this run and the runs it continues (CPU process time, probes excluded)."""
        return float(self.history.get("core_seconds", 0.0))

    def add_core_seconds(self, seconds: float) -> None:
        self.history["core_seconds"] = self.core_seconds + seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, HELP)
    return parser


def chain_params(cfg: TrainConfig, serving: bool = False) -> LangevinParams:
    """The chain (per level): K steps, b^2, noise factor; no clip, no clamp (x_t is noisy)."""
    noise = cfg.serve_noise if serving else cfg.train_noise
    return LangevinParams(steps=cfg.chain_steps, step_size=cfg.b_sq, noise_scale=noise, grad_clip=None, clamp=None)


def network_config(cfg: TrainConfig, dataset: ImageDataset) -> EnergyConfig:
    return EnergyConfig(
        image_size=dataset.images.shape[-1],
        base_channels=cfg.base_channels,
        channel_mult=cfg.channel_mult,
        num_res_blocks=cfg.num_res_blocks,
        num_classes=len(dataset.classes),
        class_names=dataset.classes,
        num_levels=cfg.levels,
    )


def init_state(cfg: TrainConfig, dataset: ImageDataset, device: torch.device) -> TrainState:
    """A fresh run, a continuation of a checkpoint, or a warm start from exported recovery-likelihood weights."""
    checkpoint = load_checkpoint(cfg.resume) if cfg.resume and is_checkpoint(cfg.resume) else None
    warm = EBMPipeline.from_pretrained(cfg.resume, device="cpu") if cfg.resume and not checkpoint else None
    if warm is not None and warm.schedule is None:
        raise ValueError(f"{cfg.resume} holds a persistent-CD energy (no noise levels): train_ebm.py continues it")
    if checkpoint is not None:
        config = EnergyConfig.from_dict(checkpoint["energy_config"])
    else:
        config = warm.config if warm is not None else network_config(cfg, dataset)
    net = EnergyNet(config).to(device).train()
    if warm is not None:
        net.load_state_dict(warm.net.state_dict())
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(cfg.warmup_steps))
    ema = None
    if cfg.ema_halflife_ratio > 0:
        ema = make_ema(net, 0.0, halflife=(cfg.batch_size, cfg.ema_halflife_ratio, 10_000_000.0))
    state = TrainState(net, ema, optimizer, scheduler, RecoverySchedule(config.num_levels or cfg.levels))
    if checkpoint is not None:
        restore(state, checkpoint)
        logger.info("resumed %s at step %d", cfg.resume, state.step)
        note_objective_change(state, checkpoint.get("train_config", {}).get("ce_weight", 0.0), cfg)
    elif warm is not None:
        before = warm.card.get("training", {})
        state.history = {
            "images_seen_before": before.get("images_seen_total", 0),
            "wall_minutes_before": before.get("wall_minutes_total", 0.0),
            # cards without core minutes come from one-thread runs, whose wall time is their core time
            "core_minutes_before": before.get("core_minutes", before.get("wall_minutes_total", 0.0)),
            "warm_started_from": warm.card.get("sha256", ""),
        }
        logger.info("warm start from %s (%d images seen before)", cfg.resume, state.history["images_seen_before"])
        note_objective_change(state, before.get("ce_weight", 0.0), cfg)
    return state


def note_objective_change(state: TrainState, ce_weight_before: float, cfg: TrainConfig) -> None:
    """A continued run whose loss differs from what trained the weights so far says so, in the log and the card."""
    if ce_weight_before == cfg.ce_weight:
        return
    logger.warning("the loss changes at step %d: ce_weight %g -> %g", state.step, ce_weight_before, cfg.ce_weight)
    images = state.history.get("images_seen_before", 0) + state.step * cfg.batch_size
    change = {"images_seen_total": images, "ce_weight": [ce_weight_before, cfg.ce_weight]}
    state.history["objective_changes"] = [*state.history.get("objective_changes", []), change]


def checkpoint_state(state: TrainState, cfg: TrainConfig) -> dict[str, Any]:
    return {
        "model": state.net.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "step": state.step,
        "restores": state.restores,
        "history": state.history,
        "rng": rng_state(),
        "energy_config": state.net.config.to_dict(),
        "train_config": dataclasses.asdict(cfg),
    }


def restore(state: TrainState, checkpoint: dict[str, Any]) -> None:
    state.net.load_state_dict(checkpoint["model"])
    if state.ema is not None and checkpoint.get("ema") is not None:
        state.ema.load_state_dict(checkpoint["ema"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.step, state.history = checkpoint["step"], checkpoint["history"]
    state.restores = checkpoint.get("restores", 0)
    set_rng_state(checkpoint["rng"])


def train_step(state: TrainState, x: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> RecoveryTerms:
    """One step of Algorithm 1: a level per image, the chain from the data's x_{t+1}, one Adam step."""
    schedule = state.schedule
    t = torch.randint(0, schedule.num_levels, (x.shape[0],), device=x.device)
    classes = labels
    labels = torch.where(torch.rand(labels.shape, device=x.device) < cfg.uncond_prob, -1, labels)
    x_t, x_next = schedule.q_sample_pair(x, t)
    state.net.eval()  # frozen inside the chain; no train-time state to change in this network anyway
    y_neg = recovery_chain(state.net, schedule, x_next, t, chain_params(cfg), labels=labels)
    state.net.train()
    y_pos = schedule.y_scale(t, x_t) * x_t
    terms = recovery_likelihood_loss(
        state.net, y_pos, y_neg, t, schedule.loss_weight(t), labels=labels, classes=classes, ce_weight=cfg.ce_weight
    )
    state.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    nn.utils.clip_grad_norm_(state.net.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.net)
    state.step += 1
    return terms


def recover(state: TrainState, cfg: TrainConfig, reason: str) -> None:
    """Restore the last good checkpoint and halve the learning rate, or give up."""
    if state.restores >= cfg.max_restores:
        raise DivergenceError(f"training diverged at step {state.step} ({reason}) after {state.restores} restores")
    restores = state.restores + 1
    restore(state, load_checkpoint(cfg.out))
    state.restores = restores
    state.scheduler.base_lrs = [lr * 0.5 for lr in state.scheduler.base_lrs]
    logger.warning("divergence (%s): restored step %d, learning rate halved (restore %d)", reason, state.step, restores)


def sample_grid(state: TrainState, cfg: TrainConfig, path: Path) -> Path:
    """The served chain from fixed seeds; a column per class."""
    pipeline = serving_pipeline(state, cfg)
    num_classes = pipeline.config.num_classes or 1
    labels = [k % num_classes for k in range(cfg.sample_images)]
    images = to_uint8(pipeline.sample(pipeline.sample_params(range(cfg.sample_images), labels)))
    state.net.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow=num_classes).save(path)
    return path


def summary(state: TrainState, cfg: TrainConfig, terms: RecoveryTerms | None, seconds: float) -> dict[str, Any]:
    images = state.step * cfg.batch_size
    minutes = state.history.get("wall_minutes_before", 0.0) + seconds / 60
    return {
        "recipe": "diffusion recovery likelihood (Gao et al. 2021)",
        "steps": state.step,
        "images_seen": images,
        "images_seen_total": images + state.history.get("images_seen_before", 0),
        "warm_started_from": state.history.get("warm_started_from"),
        "wall_minutes_total": round(minutes, 1),
        "core_minutes": round(state.history.get("core_minutes_before", 0.0) + state.core_seconds / 60, 2),
        "hardware": hardware(),
        "energy_pos": terms.energy_pos if terms else None,
        "energy_neg": terms.energy_neg if terms else None,
        "restores": state.restores,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "ema_halflife_ratio": cfg.ema_halflife_ratio,
        "uncond_prob": cfg.uncond_prob,
        "ce_weight": cfg.ce_weight,
        "objective_changes": state.history.get("objective_changes", []),
        "cross_entropy": terms.cross_entropy if terms else None,
        "chain_train": dataclasses.asdict(chain_params(cfg)),
        "levels": state.schedule.num_levels,
        "data": Path(cfg.data).name,
        "device": str(next(state.net.parameters()).device),
        "threads": torch.get_num_threads(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


HISTORY_TITLE = "EBM: every probe of every run (N = 500, the card's chain, classifier space)"


def make_prober(cfg: TrainConfig) -> Prober:
    """Probes of the served chain (the card's K, b^2, noise and guidance) every `probe_every_minutes`."""
    spec = ProbeSpec(
        n=cfg.probe_n, sampler="recovery", steps=cfg.chain_steps, guidance_scale=cfg.serve_guidance,
        noise_scale=cfg.serve_noise,
    )  # fmt: skip
    load = functools.partial(EBMPipeline.from_pretrained, device="cpu")
    return Prober.for_run(cfg, spec, load, HISTORY_TITLE, diversity_tolerance=cfg.diversity_tolerance)


def serving_pipeline(state: TrainState, cfg: TrainConfig) -> EBMPipeline:
    """The run's serving weights with the chain and guidance its card will name."""
    sampling = {**dataclasses.asdict(chain_params(cfg, serving=True)), "guidance_scale": cfg.serve_guidance}
    recovery = {"beta_start": state.schedule.beta_start, "beta_end": state.schedule.beta_end}
    return EBMPipeline(state.serving_net, {"sampling": sampling, "recovery": recovery})


def save_export(state: TrainState, cfg: TrainConfig, result: dict[str, Any], directory: str | Path) -> Path:
    """The serving weights with the card `serving_pipeline` describes (chain, guidance, noise levels)."""
    return serving_pipeline(state, cfg).save_pretrained(directory, training=result)


def probe(prober: Prober, state: TrainState, cfg: TrainConfig, result: dict[str, Any]) -> dict[str, Any]:
    """Score the served chain now; export the weights (card + sample grid) if they beat the shipped ones."""
    row = {key: result[key] for key in ("images_seen_total", "core_minutes", "wall_minutes_total", "hardware", "steps")}

    def export(quality: dict[str, Any]) -> None:
        out = save_export(state, cfg, {**result, "quality": quality}, cfg.export)
        sample_grid(state, cfg, out / "samples.png")
        logger.info("exported the EBM's weights to %s", out)

    row = prober(serving_pipeline(state, cfg), row, export, state.core_seconds)
    state.net.train()
    return row


def run_steps(
    state: TrainState,
    dataset: ImageDataset,
    cfg: TrainConfig,
    device: torch.device,
    total: int,
    budget: Budget,
    prober: Prober | None = None,
) -> tuple[RecoveryTerms | None, str]:
    terms: RecoveryTerms | None = None
    last_checkpoint = time.monotonic()
    bar = tqdm(total=total, initial=state.step, desc="ebm-recovery", unit="step", dynamic_ncols=True)
    try:
        while state.step < total:
            for x, labels in epochs_of_batches(dataset, cfg.batch_size, cfg.seed, device, lambda: state.step):
                if state.step >= total:
                    break
                step_start = time.process_time()
                step_terms = train_step(state, x, labels, cfg)
                state.add_core_seconds(time.process_time() - step_start)
                problem = diverged(step_terms, cfg.divergence_threshold) or (  # type: ignore[arg-type]
                    None if all_finite(state.net) else "the weights hold non-finite values"
                )
                if problem:
                    recover(state, cfg, problem)
                    bar.n = state.step
                    break  # a fresh data stream from the restored step
                terms = step_terms
                bar.update(1)
                bar.set_postfix(
                    e_pos=f"{terms.energy_pos:.3g}", e_neg=f"{terms.energy_neg:.3g}", ce=f"{terms.cross_entropy:.3g}"
                )
                if time.monotonic() - last_checkpoint > 60 * cfg.checkpoint_minutes:
                    save_checkpoint(Path(cfg.out), checkpoint_state(state, cfg))
                    last_checkpoint = time.monotonic()
                if prober is not None and prober.due(state.core_seconds):
                    probe(prober, state, cfg, summary(state, cfg, terms, budget.elapsed))
                if budget.exhausted():
                    return terms, f"time budget of {cfg.max_minutes} minutes reached"
    except StopSignalError as exc:
        return terms, f"stopped by {exc}"
    finally:
        bar.close()
    return terms, "finished"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training loop; returns the summary written into the exported model card."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    dataset = load_training_data(cfg.data, cfg.data_cache, device)
    state = init_state(cfg, dataset, device)
    per_epoch = steps_in_an_epoch(dataset, cfg.batch_size)
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * per_epoch)
    out = Path(cfg.out)
    save_checkpoint(out, checkpoint_state(state, cfg))
    logger.info(
        "recovery likelihood: %d parameters on %s, T=%d levels x K=%d steps, batch %d, up to step %d",
        count_parameters(state.net), device, state.schedule.num_levels, cfg.chain_steps, cfg.batch_size, total,
    )  # fmt: skip
    prober = make_prober(cfg) if cfg.probe_every_minutes else None
    if prober is not None:
        prober.last_at = state.core_seconds  # a resumed run probes one interval after it resumed
    budget = Budget(cfg.max_minutes)
    with stop_on_signals():
        terms, reason = run_steps(state, dataset, cfg, device, total, budget, prober)
    logger.info("stopping at step %d: %s", state.step, reason)
    if not all_finite(state.net):
        raise DivergenceError(f"the weights hold non-finite values at step {state.step}")
    result = summary(state, cfg, terms, budget.elapsed)
    state.history["wall_minutes_before"] = result["wall_minutes_total"]
    save_checkpoint(out, checkpoint_state(state, cfg))
    if cfg.export_if_better:
        # Only a probe decides; a stop signal means "stop now", so it skips the final probe.
        if prober is not None and not reason.startswith("stopped") and state.core_seconds > prober.last_at:
            probe(prober, state, cfg, result)
        logger.info("checkpoint in %s; the shipped weights change only when a probe beats them", out)
        return {**result, "exported": bool(prober and prober.exports)}
    grid = sample_grid(state, cfg, out / "samples" / f"step_{state.step:07d}.png")
    return export_run(cfg, result, grid, lambda d: save_export(state, cfg, result, d))


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
