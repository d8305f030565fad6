"""The standing diffusion training run: pick up where the last run on any machine stopped, and keep going.

    make train-continue                                       # 170 minutes, one thread, in the background
    python -m training.continue_diffusion --max-minutes 120   # the same, in the foreground
    python -m training.continue_diffusion --device cuda --batch-size 256 --precision bf16   # a GPU window

Every call continues one run of the recipe below (chosen by the study in models/README.md):
- its full training state (weights, EMA, optimizer, LR schedule, RNG, data position) lives in a cache
  folder outside the repository (--state-dir, default $GENSERVICE_TRAIN_STATE or
  ~/.cache/genservice/diffusion-standing); a stopped run (Ctrl-C, `kill`, the budget) resumes exactly;
- without that state (a new machine) the run warm-starts from the shipped weights in models/diffusion
  when they have the recipe's architecture, and says so; otherwise it starts the recipe from scratch;
- it checkpoints every few minutes (--checkpoint-minutes) and on SIGTERM/SIGINT, so a stop loses little;
- every --probe-every-minutes core-minutes of training it scores the EMA weights on fixed seeds (N = 500,
  DDIM 20, guidance 3, classifier feature space), appends the score to models/diffusion/history.jsonl
  (plotted to models/diffusion/history.png), and exports to models/diffusion only when the score beats
  the shipped weights' (training/quality.py: lower FID, class agreement within noise).
Commit models/diffusion after a run that exported; the history file is worth committing after any run.
Extra flags are passed to training/train_diffusion.py (e.g. --device, --batch-size, --precision).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.diffusion.process import DiffusionConfig
from shared.diffusion.unet import UNetConfig
from shared.weights import CARD_FILE
from training.common import REPO_ROOT, DivergenceError, configure_logging, dataclass_from_args, is_checkpoint
from training.train_diffusion import TrainConfig, build_parser, network_config, train

logger = logging.getLogger(__name__)

# The recipe the study picked (models/README.md, "Which recipe learns fastest here"): v-prediction on
# the cosine schedule (Salimans & Ho 2022), a 1.5M-parameter UNet of widths 32/64/64 without
# self-attention, no dropout, Adam at 1e-3 after a short warm-up, EDM's EMA half-life rule, batch 64.
RECIPE: dict[str, Any] = {
    "prediction": "v",
    "schedule": "cosine",
    "base_channels": 32,
    "channel_mult": (1, 2, 2),
    "num_res_blocks": 2,
    "attention_resolutions": (),
    "num_groups": 16,
    "dropout": 0.0,
    "lr": 1e-3,
    "warmup_steps": 200,
    "min_snr_gamma": 0.0,
    "label_dropout": 0.1,
    "ema_halflife_ratio": 0.05,
    "batch_size": 64,
}
SHIPPED = REPO_ROOT / "models" / "diffusion"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def default_state_dir() -> Path:
    env = os.environ.get("GENSERVICE_TRAIN_STATE")
    return Path(env) if env else Path.home() / ".cache" / "genservice" / "diffusion-standing"


def recipe_architecture(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(UNet config, diffusion config) as dicts, as a model card holds them, for the recipe's network."""
    unet = network_config(cfg, CIFAR10_CLASSES, 32).to_dict()
    process = DiffusionConfig(schedule=cfg.schedule, num_timesteps=cfg.num_timesteps, prediction=cfg.prediction)  # type: ignore[arg-type]
    return unet, process.to_dict()


def shipped_matches(cfg: TrainConfig, shipped: Path) -> bool:
    """True when the shipped weights have the recipe's architecture and process (so a warm start is possible)."""
    card_path = shipped / CARD_FILE
    if not card_path.is_file():
        return False
    card = json.loads(card_path.read_text())
    unet, process = recipe_architecture(cfg)
    card_unet = UNetConfig.from_dict(card.get("unet", {})).to_dict()
    card_process = DiffusionConfig.from_dict(card.get("diffusion", {})).to_dict()
    return card_unet == unet and card_process == process


def starting_point(cfg: TrainConfig, state_dir: Path, shipped: Path) -> tuple[str | None, str]:
    """(--resume value, a sentence for the log): the saved state, else the shipped weights, else nothing."""
    if is_checkpoint(state_dir):
        return str(state_dir), f"resuming the standing run from its state in {state_dir}"
    if shipped_matches(cfg, shipped):
        return str(shipped), (
            f"no training state in {state_dir} (a new machine?): warm start from the shipped weights in {shipped} "
            "(the optimizer's moments start afresh)"
        )
    return None, (
        f"no training state in {state_dir}, and the weights in {shipped} are not this recipe's architecture: "
        "starting the recipe from scratch"
    )


def build_continue_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    parser.description = __doc__
    parser.add_argument("--state-dir", default=None, help="training state folder (default: see above)")
    parser.add_argument(
        "--warm-start-from", default=str(SHIPPED), help="weights a run without state starts from (if the recipe's)"
    )
    defaults = {
        **RECIPE,
        "epochs": 1_000_000,
        "threads": 1,
        "max_minutes": 170.0,
        "checkpoint_minutes": 5.0,
        "probe_every_minutes": 30.0,
        "history": str(SHIPPED / "history.jsonl"),
        "run_name": "standing",
        "export_if_better": True,
        "sample_every": 1_000_000,
    }
    parser.set_defaults(**defaults)
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    cfg = dataclass_from_args(TrainConfig, args)
    resume, why = (args.resume, f"resuming from --resume {args.resume}") if args.resume else (None, "")
    if resume is None:
        resume, why = starting_point(cfg, state_dir, Path(args.warm_start_from))
    return dataclasses.replace(cfg, out=str(state_dir), resume=resume), why


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    cfg, why = config_from_args(build_continue_parser().parse_args(argv))
    logger.info("%s", why)
    try:
        result = train(cfg)
    except DivergenceError as exc:
        logger.error("%s; nothing exported, the last good state is in %s", exc, cfg.out)
        return 1
    logger.info(
        "standing run stopped at %d images in total; %s",
        result["images_seen_total"],
        "exported better weights to " + cfg.export if result.get("exported") else "the shipped weights stay",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
