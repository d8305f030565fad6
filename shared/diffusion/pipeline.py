"""A trained diffusion model ready to sample: UNet + forward process + model card.

`DiffusionPipeline.from_pretrained(dir)` is what the worker calls once at start-up;
`pipeline.sample(params)` is what it calls per job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.device import Precision, autocast, pick_device, torch_threads
from shared.diffusion.process import DiffusionConfig, EpsModel, GaussianDiffusion
from shared.diffusion.runtime import OpenVINONetwork, Runtime, RuntimeChoice, choose
from shared.diffusion.samplers import (
    SamplerKind,
    Spacing,
    StepCallback,
    VarianceKind,
    check_guidance_interval,
    ddim_sample,
    ddpm_sample,
    default_spacing,
    dpmpp_2m_sample,
    guided_eps_model,
    parse_enum,
)
from shared.diffusion.unet import UNet, UNetConfig
from shared.labels import resolve_label
from shared.seeding import MAX_SEED
from shared.weights import count_parameters, from_card, load_network, save_model_dir

logger = logging.getLogger(__name__)

MODEL_KIND = "ddpm-unet"


@dataclass(frozen=True)
class SampleParams:
    """One sampling run. Image i uses seeds[i] and labels[i] (None: unconditional).

    `guidance_interval` = (sigma_lo, sigma_hi): classifier-free guidance only at steps whose noise level
    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) lies in (sigma_lo, sigma_hi] (Kynkaanniemi et al. 2024);
    None: at every step. Either way only labelled images are guided.
    """

    seeds: tuple[int, ...]
    sampler: SamplerKind = SamplerKind.DDPM
    steps: int = 1000
    eta: float = 0.0
    spacing: Spacing | None = None  # None: the sampler's own (samplers.default_spacing)
    variance: VarianceKind = VarianceKind.BETA
    labels: tuple[int | None, ...] | None = None
    guidance_scale: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "sampler", parse_enum(SamplerKind, self.sampler, "sampler"))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", parse_enum(Spacing, self.spacing, "timestep spacing"))
        object.__setattr__(self, "variance", parse_enum(VarianceKind, self.variance, "variance"))
        object.__setattr__(self, "guidance_interval", check_guidance_interval(self.guidance_interval))
        if not self.seeds:
            raise ValueError("at least one seed (one per image) is required")
        if self.labels is not None and len(self.labels) != len(self.seeds):
            raise ValueError(f"{len(self.labels)} labels for {len(self.seeds)} seeds")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.eta > 0 and self.sampler is SamplerKind.DPMPP_2M:
            raise ValueError("dpmpp_2m is deterministic: eta (the DDIM noise) must be 0")
        if not all(0 <= s <= MAX_SEED for s in self.seeds):
            raise ValueError(f"seeds must be in [0, {MAX_SEED}]")


class DiffusionPipeline:
    """Holds the network in eval mode on one device; samples with any of the samplers.

    channels_last (NHWC) convolutions are about 1.3-1.5x faster on x86 CPUs (oneDNN) and on
    tensor-core GPUs, so the network runs in that layout unless told otherwise.

    `compile=True` runs the network through `torch.compile` (Inductor: fused GroupNorm/SiLU and
    pointwise kernels, weights frozen as constants; `compile_mode="reduce-overhead"` adds CUDA graphs
    on a GPU). The first job of
    each batch size pays a one-off compilation (about a minute on a 2-core CPU); the shapes are
    static, so each new batch size compiles once more, and past torch's recompile limit (8) further
    sizes run eagerly. Off by default: `bench/` measures whether it pays on a given machine.

    `runtime="openvino"` runs the same weights exported to OpenVINO instead (shared/diffusion/runtime.py:
    static shapes per batch size; with bf16 about twice the speed of eager fp32 on a CPU with native bf16).
    """

    def __init__(
        self,
        unet: UNet,
        diffusion: GaussianDiffusion,
        card: dict[str, Any] | None = None,
        precision: Precision | str = Precision.FP32,
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: str | None = None,
        runtime: Runtime | str = Runtime.TORCH,
        runtime_reason: str = "the default",
    ) -> None:
        self.runtime = RuntimeChoice(Runtime(runtime), Precision(precision), runtime_reason)
        openvino = self.runtime.runtime is Runtime.OPENVINO
        if openvino and compile:
            raise ValueError("torch.compile and the openvino runtime are alternatives: pick one")
        self.memory_format = torch.channels_last if channels_last and not openvino else torch.contiguous_format
        self.unet = unet.eval().to(memory_format=self.memory_format)
        self.compiled = compile
        # The callable the samplers run; the same weights as self.unet.
        self.forward: Callable[..., torch.Tensor] = self.unet
        if openvino:
            self.forward = OpenVINONetwork(self.unet, self.precision)
        elif compile and compile_mode:
            self.forward = torch.compile(self.unet, dynamic=False, mode=compile_mode)
        elif compile:
            # Freezing folds the (never changing) weights into the graph as constants, which lets
            # Inductor pre-pack them for oneDNN's convolutions on a CPU: without it the compiled
            # network measured slower than eager at batch 16 here, with it faster and compiling in half the time.
            self.forward = torch.compile(self.unet, dynamic=False, options={"freezing": True})
        self.diffusion = diffusion.to(next(unet.parameters()).device)
        self.card = card or {}

    @property
    def precision(self) -> Precision:
        return self.runtime.precision

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def config(self) -> UNetConfig:
        return self.unet.config

    # ------------------------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        device: str = "auto",
        precision: Precision | str = Precision.FP32,
        compile: bool = False,
        compile_mode: str | None = None,
        runtime: Runtime | str = Runtime.TORCH,
    ) -> DiffusionPipeline:
        """`runtime` and `precision` may be "auto": chosen from what the machine has (runtime.choose)."""
        unet, card = load_network(directory, MODEL_KIND, lambda c: UNet(UNetConfig.from_dict(c["unet"])))
        diffusion = from_card(directory, lambda: GaussianDiffusion(DiffusionConfig.from_dict(card["diffusion"])))
        torch_device = pick_device(device)
        choice = choose(str(runtime), str(precision), torch_device)
        pipeline = cls(
            unet.to(torch_device), diffusion, card, choice.precision, compile=compile, compile_mode=compile_mode,
            runtime=choice.runtime, runtime_reason=choice.reason,
        )  # fmt: skip
        logger.info(
            "loaded %s (%d parameters, sha256 %s) on %s%s: %s in %s (%s)",
            directory,
            count_parameters(unet),
            card["sha256"][:12],
            pipeline.device,
            " (torch.compile)" if compile else "",
            choice.describe()["engine"],
            choice.precision,
            choice.reason,
        )
        return pipeline

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        training: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float16,
        sampling: dict[str, Any] | None = None,
    ) -> Path:
        card = {
            "kind": MODEL_KIND,
            "unet": self.config.to_dict(),
            "diffusion": self.diffusion.config.to_dict(),
            "parameters": count_parameters(self.unet),
            "training": training or self.card.get("training", {}),
        }
        sampling = self.card.get("sampling") if sampling is None else sampling
        if sampling:
            card["sampling"] = sampling  # the recommended sampler (the CLI's and web page's default)
        return save_model_dir(directory, self.unet.state_dict(), card, dtype=dtype)

    # ---------------------------------------------------------------------------------- sampling
    def resolve_label(self, label: int | str | None) -> int | None:
        """A class index from an index or a class name; None stays None (unconditional)."""
        return resolve_label(label, self.config.num_classes, self.config.class_names)

    def check(self, params: SampleParams) -> None:
        """Raise ValueError for parameters this model cannot run, before any work is done."""
        total = self.diffusion.num_timesteps
        if params.sampler is SamplerKind.DDPM and params.steps != total:
            raise ValueError(
                f"DDPM ancestral sampling runs all {total} steps; use the ddim or dpmpp_2m sampler for {params.steps}"
            )
        if not 1 <= params.steps <= total:
            raise ValueError(f"steps must be in [1, {total}], got {params.steps}")
        for label in params.labels or ():
            if label is not None:
                self.resolve_label(int(label))

    def _label_tensor(self, labels: Sequence[int | None] | None, batch: int) -> torch.Tensor | None:
        """One label per row for a class-conditional network: no label is the null label (unconditional).

        Null rows are what `guided_eps_model` leaves unguided, at no extra network pass.
        """
        null = self.config.null_label
        if null is None:
            return None
        rows = [null] * batch if labels is None else [null if label is None else label for label in labels]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def eps_model(self, guidance_scale: float = 1.0, guidance_interval: Sequence[float] | None = None) -> EpsModel:
        """eps_theta in this pipeline's precision, with classifier-free guidance applied.

        Rows with the null label (no label asked for) are never guided and cost one network row per
        step; with `guidance_interval`, labelled rows are guided only at steps whose sigma_t lies in it.
        """

        torch_precision = self.precision if self.runtime.runtime is Runtime.TORCH else Precision.FP32

        def network(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            with autocast(self.device, torch_precision):  # OpenVINO applies its own precision
                return self.forward(x.contiguous(memory_format=self.memory_format), t, labels).float()

        eps = self.diffusion.eps_model(network)  # the network's eps, v or EDM output turned into eps

        return guided_eps_model(
            eps,
            guidance_scale,
            self.config.null_label,
            interval=guidance_interval,
            alphas_cumprod=self.diffusion.alphas_cumprod,
        )

    def sample(self, params: SampleParams, callback: StepCallback | None = None) -> torch.Tensor:
        """Images in [-1, 1], shape (len(seeds), C, H, W), float32 on this pipeline's device."""
        self.check(params)
        # With OpenVINO, torch only runs the sampler's small tensor operations: on one thread, so that its
        # idle pool does not spin on the cores OpenVINO's streams run on (shared/device.py, torch_threads).
        threads = 1 if self.runtime.runtime is Runtime.OPENVINO else torch.get_num_threads()
        with torch_threads(threads):
            return self._sample(params, callback)

    def _sample(self, params: SampleParams, callback: StepCallback | None) -> torch.Tensor:
        cfg = self.config
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        labels = self._label_tensor(params.labels, len(params.seeds))
        model = self.eps_model(params.guidance_scale, params.guidance_interval)
        common = dict(labels=labels, clip_denoised=params.clip_denoised, callback=callback)
        spacing = params.spacing or default_spacing(params.sampler)
        if params.sampler is SamplerKind.DDPM:
            return ddpm_sample(model, self.diffusion, params.seeds, shape, variance=params.variance, **common)
        if params.sampler is SamplerKind.DPMPP_2M:
            return dpmpp_2m_sample(
                model, self.diffusion, params.seeds, shape, steps=params.steps, spacing=spacing, **common
            )
        return ddim_sample(
            model,
            self.diffusion,
            params.seeds,
            shape,
            steps=params.steps,
            eta=params.eta,
            spacing=spacing,
            **common,
        )
