"""Sample images from a trained diffusion model: the function the worker calls, and a CLI.

python -m diffusion_worker.sample --n 16 --steps 1000 --out grid.png
python -m diffusion_worker.sample --n 8 --steps 50 --class-label cat --guidance-scale 3 --out cats.png
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from shared.device import Precision
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.samplers import SamplerKind, Spacing, StepCallback, VarianceKind
from shared.images import grid_image, save_images, to_uint8
from shared.weights import WeightsError

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "diffusion"


def seeds_from(seed: int, n: int) -> tuple[int, ...]:
    """Image k of a request with seed s uses seed s + k, so any one image can be re-made alone."""
    return tuple(seed + k for k in range(n))


def generate(pipeline: DiffusionPipeline, params: SampleParams, callback: StepCallback | None = None) -> torch.Tensor:
    """Run one sampling job; uint8 images (N, C, H, W) on the CPU."""
    return to_uint8(pipeline.sample(params, callback=callback))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model directory (safetensors + config.json)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=1000, help="denoising steps (DDPM needs all of them)")
    p.add_argument(
        "--sampler",
        choices=[k.value for k in SamplerKind],
        default=None,
        help="default: ddpm when --steps equals the model's T, else ddim",
    )
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 deterministic, 1 DDPM-like)")
    p.add_argument("--spacing", choices=[k.value for k in Spacing], default=Spacing.UNIFORM.value)
    p.add_argument(
        "--variance",
        choices=[k.value for k in VarianceKind],
        default=VarianceKind.BETA.value,
        help="DDPM reverse variance: beta_t or the posterior beta_tilde_t",
    )
    p.add_argument(
        "--class-label",
        default=None,
        help="class name or index; 'all' cycles through the classes; default unconditional",
    )
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=[k.value for k in Precision], default=Precision.FP32.value)
    p.add_argument("--out", type=Path, default=Path("out/grid.png"), help="grid PNG path")
    p.add_argument("--images-dir", type=Path, default=None, help="individual PNGs (default: next to --out)")
    return p


def labels_for(pipeline: DiffusionPipeline, class_label: str | None, n: int) -> tuple[int | None, ...] | None:
    if class_label is None:
        return None
    if class_label == "all":
        num_classes = pipeline.config.num_classes
        if num_classes is None:
            raise ValueError("this model is unconditional: it takes no class label")
        return tuple(k % num_classes for k in range(n))
    return (pipeline.resolve_label(class_label),) * n


def params_from_args(args: argparse.Namespace, pipeline: DiffusionPipeline) -> SampleParams:
    num_timesteps = pipeline.diffusion.num_timesteps
    sampler = args.sampler or (SamplerKind.DDPM.value if args.steps == num_timesteps else SamplerKind.DDIM.value)
    params = SampleParams(
        seeds=seeds_from(args.seed, args.n),
        sampler=sampler,
        steps=args.steps,
        eta=args.eta,
        spacing=args.spacing,
        variance=args.variance,
        labels=labels_for(pipeline, args.class_label, args.n),
        guidance_scale=args.guidance_scale,
    )
    pipeline.check(params)
    return params


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pipeline = DiffusionPipeline.from_pretrained(args.weights, device=args.device, precision=args.precision)
        params = params_from_args(args, pipeline)
    except (WeightsError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    start = time.perf_counter()
    with tqdm(total=args.steps, desc=f"{params.sampler.value} x{args.n}", unit="step") as bar:
        images = generate(pipeline, params, callback=lambda step, total, x0: bar.update(1))
    elapsed = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images).save(args.out)
    images_dir = args.images_dir or args.out.with_name(args.out.stem + "_images")
    save_images(images, images_dir)
    logger.info(
        "%d images in %.1f s (%.2f s/image); grid %s, images in %s",
        args.n,
        elapsed,
        elapsed / args.n,
        args.out,
        images_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
