"""Sample images from a trained diffusion model: the function the worker calls, and a CLI.

python -m diffusion_worker.sample --n 16 --class-label all --out grid.png   # the card's recommended sampler
python -m diffusion_worker.sample --n 16 --steps 1000 --out grid.png        # 1000-step DDPM
python -m diffusion_worker.sample --n 8 --steps 50 --class-label cat --guidance-scale 3 --out cats.png
python -m diffusion_worker.sample --n 8 --steps 20 --sampler dpmpp_2m --class-label all --guidance-scale 3 \
    --guidance-interval 0.28 5.42 --out dpm.png
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.cli import add_common_arguments, configure_logging, sample_and_save
from shared.device import Precision
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.samplers import SamplerKind, Spacing, StepCallback, VarianceKind
from shared.images import to_uint8
from shared.labels import labels_for as shared_labels_for
from shared.seeding import seeds_from
from shared.weights import WeightsError

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "diffusion"


def generate(pipeline: DiffusionPipeline, params: SampleParams, callback: StepCallback | None = None) -> torch.Tensor:
    """Run one sampling job; uint8 images (N, C, H, W) on the CPU."""
    return to_uint8(pipeline.sample(params, callback=callback))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, DEFAULT_WEIGHTS)
    p.add_argument(
        "--steps", type=int, default=None,
        help="denoising steps (DDPM needs all of them); default: the card's recommended sampling, else 1000",
    )  # fmt: skip
    p.add_argument(
        "--sampler", choices=[k.value for k in SamplerKind], default=None,
        help="default: ddpm when --steps equals the model's T, else the card's recommended sampler (else ddim); "
        "dpmpp_2m: DPM-Solver++(2M), few steps",
    )  # fmt: skip
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 deterministic, 1 DDPM-like)")
    p.add_argument(
        "--spacing", choices=[k.value for k in Spacing], default=None,
        help="timesteps of ddim / dpmpp_2m; default: uniform in t for ddim, uniform in log-SNR (logsnr) for dpmpp_2m",
    )  # fmt: skip
    p.add_argument(
        "--variance", choices=[k.value for k in VarianceKind], default=VarianceKind.BETA.value,
        help="DDPM reverse variance: beta_t or the posterior beta_tilde_t",
    )  # fmt: skip
    p.add_argument(
        "--guidance-scale", type=float, default=None,
        help="classifier-free guidance scale (1 = none); default: the card's recommended, else 1",
    )  # fmt: skip
    p.add_argument(
        "--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"), default=None,
        help="guide only at steps with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) in (SIGMA_LO, SIGMA_HI]",
    )  # fmt: skip
    p.add_argument("--precision", choices=[*(k.value for k in Precision), "auto"], default=Precision.FP32.value)
    p.add_argument(
        "--runtime", choices=["torch", "openvino", "auto"], default="torch",
        help="the UNet's engine (auto: OpenVINO on a CPU where installed; see shared/diffusion/runtime.py)",
    )  # fmt: skip
    return p


def labels_for(pipeline: DiffusionPipeline, class_label: str | None, n: int) -> tuple[int | None, ...] | None:
    return shared_labels_for(class_label, n, pipeline.config.num_classes, pipeline.config.class_names)


def recommended_sampling(pipeline: DiffusionPipeline) -> dict[str, Any]:
    """The card's recommended sampling block (sampler, steps, guidance_scale, guidance_interval), or {}."""
    block = pipeline.card.get("sampling")
    return block if isinstance(block, dict) else {}


def params_from_args(args: argparse.Namespace, pipeline: DiffusionPipeline) -> SampleParams:
    """The flags as given. With neither --steps nor --sampler, the card's recommended sampling fills the
    sampling flags left out; without that block (or with either flag) the service's defaults do:
    1000-step DDPM (DDIM for fewer steps), no guidance.
    """
    num_timesteps = pipeline.diffusion.num_timesteps
    card = {} if args.steps is not None or args.sampler is not None else recommended_sampling(pipeline)
    steps = args.steps if args.steps is not None else int(card.get("steps", num_timesteps))
    default_sampler = SamplerKind.DDPM.value if steps == num_timesteps else SamplerKind.DDIM.value
    sampler = args.sampler or card.get("sampler", default_sampler)
    guidance = args.guidance_scale if args.guidance_scale is not None else float(card.get("guidance_scale", 1.0))
    interval = args.guidance_interval
    if interval is None and args.guidance_scale is None:
        interval = card.get("guidance_interval")
    params = SampleParams(
        seeds=seeds_from(args.seed, args.n),
        sampler=sampler,
        steps=steps,
        eta=args.eta,
        spacing=args.spacing,
        variance=args.variance,
        labels=labels_for(pipeline, args.class_label, args.n),
        guidance_scale=guidance,
        guidance_interval=interval,
    )
    pipeline.check(params)
    return params


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            args.weights, device=args.device, precision=args.precision, runtime=args.runtime
        )
        params = params_from_args(args, pipeline)
    except (WeightsError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    sample_and_save(lambda cb: generate(pipeline, params, cb), params.steps, f"{params.sampler.value} x{args.n}", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
