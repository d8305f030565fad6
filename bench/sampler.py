"""Item 1: the project's sampler against diffusers' DDPMPipeline / DDIMPipeline on a UNet of the same size.

Both networks get seeded random weights (timing does not depend on the weights) and the same
architecture: widths, residual blocks per level, attention resolutions and heads, GroupNorm groups
(the parameter counts are reported side by side). Each contender runs its whole pipeline: initial
noise, the network, the scheduler update and, on complete runs, the conversion to uint8/numpy. The
1000-step DDPM runs are cut short: every pipeline is stopped by the same mechanism after the same
number of completed steps, and the time per image is extrapolated linearly to the full step count
(the report says how many steps were timed). Each row is timed in several rounds, the contenders
taking turns, and reports each contender's fastest round: on a shared machine that is the estimate
least disturbed by other load (the spread is reported beside it).

The equivalence check compares the service's fast path (channels_last, and torch.compile when on)
against the reference path (fp32, NCHW, eager) on the same seeds: identical uint8 images mean
FID (or any sample-quality metric) is unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from shared.device import Precision
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.runtime import Runtime, native_bf16_cpu, openvino_version
from shared.diffusion.unet import UNet, UNetConfig
from shared.images import to_uint8
from shared.weights import count_parameters

logger = logging.getLogger(__name__)


class _Enough(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised from inside a pipeline to stop it after the timed number of steps."""


@dataclass(frozen=True)
class SamplerBenchConfig:
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(class_names=()))
    num_timesteps: int = 1000
    batches: tuple[int, ...] = (1, 16)
    ddim_steps: int = 50
    # DDPM steps timed per round and batch size (missing: all of them), and rounds per row: each
    # contender's row reports its fastest round, the estimate least disturbed by other load.
    ddpm_timed_steps: dict[int, int] = field(default_factory=lambda: {1: 100, 16: 25})
    ddpm_rounds: int = 4
    ddim_rounds: dict[int, int] = field(default_factory=lambda: {1: 3, 16: 2})  # complete DDIM runs
    compile: bool = True
    warmup_steps: int = 2
    equivalence_seeds: int = 4
    equivalence_ddpm: bool = True  # also compare a full-length DDPM image (batch 1)
    device: str = "cpu"
    compile_mode: str | None = None  # "reduce-overhead": CUDA graphs on a GPU

    def plan(self, sampler: str, batch: int) -> tuple[int, int]:
        """(steps timed per round, rounds) for one row."""
        if sampler == "ddim":
            return self.ddim_steps, self.ddim_rounds.get(batch, 1)
        return min(self.num_timesteps, self.ddpm_timed_steps.get(batch, self.num_timesteps)), self.ddpm_rounds


# --------------------------------------------------------------------------------- the networks
def seeded_unet(config: UNetConfig, seed: int = 0) -> UNet:
    """Our UNet with random weights everywhere (plain init zeroes the output layer)."""
    torch.manual_seed(seed)
    unet = UNet(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return unet.eval()


def diffusers_unet(config: UNetConfig) -> Any:
    """diffusers' UNet2DModel with our architecture: same widths, blocks, attention and groups."""
    from diffusers import UNet2DModel

    widths = [config.base_channels * m for m in config.channel_mult]
    resolutions = [config.image_size // 2**i for i in range(len(widths))]
    attends = [r in config.attention_resolutions for r in resolutions]
    attn_widths = [w for w, a in zip(widths, attends, strict=True) if a] or [widths[-1]]
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        block_out_channels=tuple(widths),
        layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        attention_head_dim=attn_widths[0] // config.num_heads,
        norm_num_groups=config.num_groups,
        dropout=config.dropout,
    ).eval()


# ---------------------------------------------------------------------------------- contenders
@dataclass
class Contender:
    name: str
    # run(sampler, steps, batch, stop_after) -> None; stops (via _Enough) after stop_after completed steps
    run: Callable[[str, int, int, int], None]
    parameters: int
    setup_seconds: float = 0.0  # one-off cost paid before the first image (e.g. compilation)


def ours(unet: UNet, num_timesteps: int, name: str, **pipeline_kw: Any) -> Contender:
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=num_timesteps))
    pipeline = DiffusionPipeline(unet, diffusion, **pipeline_kw)

    def run(sampler: str, steps: int, batch: int, stop_after: int) -> None:
        def callback(step: int, total: int, preview: torch.Tensor) -> None:
            if step >= stop_after and step < total:
                raise _Enough

        params = SampleParams(seeds=tuple(range(batch)), sampler=sampler, steps=steps)
        with contextlib.suppress(_Enough):
            to_uint8(pipeline.sample(params, callback=callback))

    return Contender(name, run, count_parameters(unet))


def diffusers_contender(config: UNetConfig, num_timesteps: int, device: str) -> Contender:
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    unet = diffusers_unet(config).to(device)
    scheduler_kw = dict(num_train_timesteps=num_timesteps, beta_schedule="linear", clip_sample=True)
    pipes = {
        "ddpm": DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_kw)),
        "ddim": DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**scheduler_kw)),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)

    def run(sampler: str, steps: int, batch: int, stop_after: int) -> None:
        pipe = pipes[sampler]
        original = pipe.scheduler.step
        done = 0

        def step(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            out = original(*args, **kwargs)
            done += 1
            if done >= stop_after and done < steps:
                raise _Enough
            return out

        pipe.scheduler.step = step
        kw: dict[str, Any] = {"eta": 0.0} if sampler == "ddim" else {}
        try:
            pipe(batch_size=batch, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                 output_type="np", **kw)  # fmt: skip
        except _Enough:
            pass
        finally:
            del pipe.scheduler.step  # back to the class's method

    return Contender("diffusers DDPMPipeline/DDIMPipeline (fp32)", run, sum(p.numel() for p in unet.parameters()))


# -------------------------------------------------------------------------------------- timing
def timed(contender: Contender, sampler: str, steps: int, batch: int, stop_after: int) -> float:
    start = time.perf_counter()
    contender.run(sampler, steps, batch, stop_after)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def contenders(cfg: SamplerBenchConfig, have_diffusers: bool) -> list[Contender]:
    unet = seeded_unet(cfg.unet).to(cfg.device)
    out = []
    if have_diffusers:
        out.append(diffusers_contender(cfg.unet, cfg.num_timesteps, cfg.device))
    out.append(ours(copy.deepcopy(unet), cfg.num_timesteps, "ours, reference (fp32, NCHW, eager)", channels_last=False))
    out.append(ours(copy.deepcopy(unet), cfg.num_timesteps, "ours, service default (fp32, channels_last)"))
    if cfg.compile:
        name = "ours + torch.compile" + (f" ({cfg.compile_mode})" if cfg.compile_mode else "")
        out.append(ours(copy.deepcopy(unet), cfg.num_timesteps, name, compile=True, compile_mode=cfg.compile_mode))
    for name, kw in fast_paths(cfg).items():
        out.append(ours(copy.deepcopy(unet), cfg.num_timesteps, f"ours, {name}", **kw))
    return out


def fast_paths(cfg: SamplerBenchConfig) -> dict[str, dict[str, Any]]:
    """The other engines and precisions a worker can pick (shared/diffusion/runtime.py), where they exist."""
    paths: dict[str, dict[str, Any]] = {}
    if cfg.device != "cpu" or native_bf16_cpu():  # emulated bf16 on a CPU is slower than fp32: not a contender
        paths["torch bf16 autocast (channels_last)"] = {"precision": Precision.BF16}
    if cfg.device != "cpu" and cfg.compile:  # a GPU's fastest candidate: bf16 and CUDA graphs together
        mode = f" ({cfg.compile_mode})" if cfg.compile_mode else ""
        paths[f"torch.compile{mode} + bf16"] = {
            "precision": Precision.BF16, "compile": True, "compile_mode": cfg.compile_mode,
        }  # fmt: skip
    if cfg.device == "cpu" and openvino_version() is not None:
        paths["OpenVINO fp32"] = {"runtime": Runtime.OPENVINO}
        paths["OpenVINO bf16"] = {"runtime": Runtime.OPENVINO, "precision": Precision.BF16}
    return paths


def run_sampler_bench(cfg: SamplerBenchConfig, have_diffusers: bool) -> dict[str, Any]:
    runs = contenders(cfg, have_diffusers)
    # Warm-up at every batch size (compilation happens here and is reported, not timed).
    for contender in runs:
        for batch in cfg.batches:
            for sampler, steps in (("ddpm", cfg.num_timesteps), ("ddim", cfg.ddim_steps)):
                contender.setup_seconds += timed(contender, sampler, steps, batch, min(cfg.warmup_steps, steps))
        logger.info("warm: %s (%.1f s)", contender.name, contender.setup_seconds)

    rows: list[dict[str, Any]] = []
    for sampler, steps in (("ddpm", cfg.num_timesteps), ("ddim", cfg.ddim_steps)):
        for batch in cfg.batches:
            timed_steps, rounds = cfg.plan(sampler, batch)
            per_step: dict[str, list[float]] = {c.name: [] for c in runs}
            for _ in range(rounds):  # the contenders take turns, so a noisy minute hits all of them
                for contender in runs:
                    seconds = timed(contender, sampler, steps, batch, timed_steps)
                    per_step[contender.name].append(seconds / timed_steps)
            base = min(per_step[runs[0].name]) if runs[0].name.startswith("diffusers") else None
            for contender in runs:
                fastest = min(per_step[contender.name])
                per_image = fastest * steps / batch
                rows.append({
                    "sampler": f"{sampler.upper()} {steps} steps",
                    "batch": batch,
                    "pipeline": contender.name,
                    "steps timed": f"{rounds} x " + (f"{timed_steps}" if timed_steps < steps else f"all {steps}"),
                    "ms per step": 1000 * fastest,
                    "slowest/fastest round": max(per_step[contender.name]) / fastest,
                    "s per image": per_image,
                    "images/s": 1 / per_image,
                    "x diffusers": base / fastest if base else None,
                })  # fmt: skip
                logger.info("%s", rows[-1])
    return {
        "rows": rows,
        "contenders": [
            {"pipeline": c.name, "parameters": c.parameters, "warm-up + compile s": c.setup_seconds} for c in runs
        ],
        "equivalence": equivalence(cfg),
    }


# --------------------------------------------------------------------------------- equivalence
def compare(reference: torch.Tensor, fast: torch.Tensor) -> dict[str, Any]:
    reference, fast = reference.cpu(), fast.cpu()
    ref8, fast8 = to_uint8(reference), to_uint8(fast)
    diff8 = (ref8.int() - fast8.int()).abs()
    return {
        "max abs diff in [-1, 1]": float((reference - fast).abs().max()),
        "identical uint8 values": float((diff8 == 0).float().mean()),
        "max uint8 diff": int(diff8.max()),
    }


def equivalence(cfg: SamplerBenchConfig) -> list[dict[str, Any]]:
    """The fast paths against the reference path on the same seeds and weights."""
    unet = seeded_unet(cfg.unet).to(cfg.device)
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=cfg.num_timesteps))
    reference = DiffusionPipeline(copy.deepcopy(unet), diffusion, channels_last=False)
    fast = {"service default (channels_last)": DiffusionPipeline(copy.deepcopy(unet), diffusion)}
    if cfg.compile:
        fast["torch.compile + channels_last"] = DiffusionPipeline(
            copy.deepcopy(unet), diffusion, compile=True, compile_mode=cfg.compile_mode
        )
    for name, kw in fast_paths(cfg).items():
        fast[name] = DiffusionPipeline(copy.deepcopy(unet), diffusion, **kw)
    checks = [SampleParams(seeds=tuple(range(cfg.equivalence_seeds)), sampler="ddim", steps=cfg.ddim_steps)]
    if cfg.equivalence_ddpm:
        checks.append(SampleParams(seeds=(0,), sampler="ddpm", steps=cfg.num_timesteps))
    rows = []
    for params in checks:
        ref = reference.sample(params)
        for name, pipeline in fast.items():
            rows.append({
                "path": name,
                "run": f"{params.sampler.value.upper()} {params.steps} steps, seeds {list(params.seeds)}",
                **compare(ref, pipeline.sample(params)),
            })  # fmt: skip
    return rows
