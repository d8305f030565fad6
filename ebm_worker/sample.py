"""Sample images from a trained energy model by Langevin dynamics: the function the worker calls, and a CLI.

    python -m ebm_worker.sample --n 16 --out ebm.png
    python -m ebm_worker.sample --n 10 --class-label all --steps 200 --step-size 2 --noise-scale 0.005

Chains start from noise (Gaussian at the top noise level for a recovery-likelihood card, uniform for a
persistent-CD one); the step count, step size, noise, gradient clip and guidance default to the
values stored in the model's card by its trainer.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from shared.cli import add_common_arguments, configure_logging, sample_and_save
from shared.ebm.langevin import StepCallback
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
from shared.images import to_uint8
from shared.labels import labels_for
from shared.seeding import seeds_from
from shared.weights import WeightsError

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "ebm"


def generate(pipeline: EBMPipeline, params: EBMSampleParams, callback: StepCallback | None = None) -> torch.Tensor:
    """Run one sampling job; uint8 images (N, C, H, W) on the CPU."""
    return to_uint8(pipeline.sample(params, callback=callback))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, DEFAULT_WEIGHTS)
    p.add_argument("--steps", type=int, default=None, help="Langevin steps (default: the model card's)")
    p.add_argument("--step-size", type=float, default=None, help="x -= step_size / 2 * clip(grad_x E)")
    p.add_argument(
        "--noise-scale", type=float, default=None,
        help="persistent-CD card: std of the noise per step; recovery card: the factor on its noise (a temperature)",
    )  # fmt: skip
    p.add_argument("--grad-clip", type=float, default=None, help="element-wise clip of grad_x E")
    p.add_argument(
        "--guidance-scale", type=float, default=None,
        help="guidance on the energy, E(x) + w (E(x, y) - E(x)), for labelled images; 1: none (default: the card's)",
    )  # fmt: skip
    return p


def params_from_args(args: argparse.Namespace, pipeline: EBMPipeline) -> EBMSampleParams:
    cfg = pipeline.config
    return pipeline.sample_params(
        seeds_from(args.seed, args.n),
        labels_for(args.class_label, args.n, cfg.num_classes, cfg.class_names),
        guidance_scale=args.guidance_scale,
        **{name: getattr(args, name) for name in ("steps", "step_size", "noise_scale", "grad_clip")},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        pipeline = EBMPipeline.from_pretrained(args.weights, device=args.device)
        params = params_from_args(args, pipeline)
    except (WeightsError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    steps = pipeline.total_steps(params.langevin)
    sample_and_save(lambda cb: generate(pipeline, params, cb), steps, f"langevin x{args.n}", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
