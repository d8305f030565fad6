"""Solver error of the few-step samplers on a trained UNet: how far from the converged images they end.

    python -m bench.solver_error [--weights models/diffusion] [--steps 10 20 50] [--reference-steps 500]

DDIM (eta = 0) and DPM-Solver++(2M) both solve the same probability-flow ODE from the same x_T, so the
RMS distance (images in [-1, 1]) of an S-step run to a many-step DDIM run is the solver's own error;
a DPM-Solver++ run of half the reference steps is printed beside it to show how converged the
reference is. This is what README's sampler table was measured with; it says nothing about FID.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from shared.diffusion.pipeline import DiffusionPipeline
from shared.diffusion.samplers import Spacing, ddim_sample, dpmpp_2m_sample

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "diffusion"


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--reference-steps", type=int, default=500)
    p.add_argument("--seeds", type=int, default=4, help="images (seeds 0..n-1, labels 3, 8, 1, 5, ...)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipeline = DiffusionPipeline.from_pretrained(args.weights, device="cpu")
    cfg = pipeline.config
    seeds, shape = list(range(args.seeds)), (cfg.in_channels, cfg.image_size, cfg.image_size)
    classes = [3, 8, 1, 5, 0, 9, 2, 7, 4, 6]
    labels = pipeline._label_tensor(
        [classes[k % 10] % cfg.num_classes for k in seeds] if cfg.num_classes else None, len(seeds)
    )  # no guidance: one ODE per image
    model, diffusion = pipeline.eps_model(1.0), pipeline.diffusion

    start = time.perf_counter()
    reference = ddim_sample(model, diffusion, seeds, shape, steps=args.reference_steps, labels=labels)
    check = dpmpp_2m_sample(model, diffusion, seeds, shape, steps=args.reference_steps // 2, labels=labels)
    print(
        f"reference: DDIM {args.reference_steps} steps; DPM-Solver++ {args.reference_steps // 2} steps is "
        f"{rms(reference, check):.4f} RMS from it ({time.perf_counter() - start:.0f} s)"
    )
    print("| steps | sampler | spacing | RMS to reference | max abs |")
    print("| ---: | --- | --- | ---: | ---: |")
    for steps in args.steps:
        for name, sampler in (("DDIM", ddim_sample), ("DPM-Solver++(2M)", dpmpp_2m_sample)):
            for spacing in Spacing:
                x = sampler(model, diffusion, seeds, shape, steps=steps, spacing=spacing, labels=labels)
                error = (x - reference).abs().max()
                print(f"| {steps} | {name} | {spacing.value} | {rms(x, reference):.4f} | {error:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
