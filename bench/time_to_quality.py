"""Item 1, last table: seconds to an image of the card's quality, the recommended path against DDPM 1000 in fp32.

The shipped model (models/diffusion) with class labels (image i: class i % 10) and the card's guidance
scale, three ways: DDPM's 1000 ancestral steps on eager torch fp32 (the paper's sampler, the slowest
path); the card's recommended sampler (its `sampling` block: DPM-Solver++(2M), 20 steps) on torch
fp32; and the same on the engine and precision the worker picks by itself on this machine
(`runtime=auto, precision=auto`: shared/diffusion/runtime.py). DDPM rows are timed over the first
`ddpm_timed_steps` steps and extrapolated to 1000 (every step costs the same); the others run whole.
Each row reports its fastest round. The quality side (FID and class agreement at N = 1000 of the
recommended sampler, fp32 against the fast path, and two seed sets of fp32) is in models/README.md.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sampler import _Enough
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams


@dataclass(frozen=True)
class TimeToQualityConfig:
    weights: Path
    batches: tuple[int, ...] = (1, 16)
    ddpm_timed_steps: dict[int, int] = field(default_factory=lambda: {1: 50, 16: 10})
    rounds: int = 2


def _seconds(pipeline: DiffusionPipeline, params: SampleParams, stop_after: int | None) -> float:
    def callback(step: int, total: int, preview: Any) -> None:
        if stop_after is not None and step >= stop_after and step < total:
            raise _Enough

    start = time.perf_counter()
    with contextlib.suppress(_Enough):
        pipeline.sample(params, callback=callback)
    return time.perf_counter() - start


def run_time_to_quality(cfg: TimeToQualityConfig) -> dict[str, Any]:
    reference = DiffusionPipeline.from_pretrained(cfg.weights, device="cpu")
    fast = DiffusionPipeline.from_pretrained(cfg.weights, device="cpu", runtime="auto", precision="auto")
    card = dict(reference.card.get("sampling") or {"sampler": "ddim", "steps": 50, "guidance_scale": 1.0})
    guidance = float(card.get("guidance_scale", 1.0))
    recommended = {k: card[k] for k in ("sampler", "steps") if k in card}
    interval = card.get("guidance_interval")
    engine = fast.runtime.describe()
    paths = [
        ("DDPM 1000 steps, torch fp32", reference, {"sampler": "ddpm", "steps": reference.diffusion.num_timesteps}),
        (f"{recommended['sampler']} {recommended['steps']} steps, torch fp32", reference, recommended),
        (
            f"{recommended['sampler']} {recommended['steps']} steps, {engine['engine']} {engine['precision']} "
            "(the worker's auto path)",
            fast,
            recommended,
        ),
    ]
    rows = []
    for batch in cfg.batches:
        labels = tuple(i % 10 for i in range(batch))
        timings: dict[str, float] = {}
        for name, pipeline, sampler in paths:
            params = SampleParams(
                seeds=tuple(range(batch)), labels=labels, guidance_scale=guidance,
                guidance_interval=tuple(interval) if interval else None, **sampler,
            )  # fmt: skip
            timed = cfg.ddpm_timed_steps.get(batch) if params.sampler.value == "ddpm" else None
            _seconds(pipeline, params, min(2, timed or params.steps))  # warm-up (OpenVINO compiles this batch size)
            best = min(_seconds(pipeline, params, timed) for _ in range(cfg.rounds))
            timings[name] = best * params.steps / timed if timed else best
        base = timings[paths[0][0]]
        for name, seconds in timings.items():
            rows.append({
                "path": name, "batch": batch, "guidance": guidance, "s per image": seconds / batch,
                "x DDPM 1000 fp32": base / seconds,
            })  # fmt: skip
    return {"rows": rows, "runtime": engine, "weights": str(cfg.weights)}
