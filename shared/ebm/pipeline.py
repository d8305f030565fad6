"""A trained energy model ready to sample: energy network + model card + its Langevin defaults.

`EBMPipeline.from_pretrained(dir)` is what the EBM worker calls once at start-up; `pipeline.sample(params)`
is what it calls per job. One seeded generator per image: the initial image and every step's noise
come from it. Two recipes, told apart by the network's config:
- classic (persistent contrastive divergence, `num_levels` None): one chain of `steps` Langevin steps
  from uniform noise in [-1, 1] (shared/ebm/langevin.py);
- recovery likelihood (`num_levels` = T): T chains of `steps` steps each, level by level from
  Gaussian noise (shared/ebm/recovery_sampling.py); `step_size` is the b^2 of its step sizes and
  `noise_scale` the factor on their noise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.device import pick_device
from shared.ebm.energy import EnergyConfig, EnergyNet
from shared.ebm.langevin import LangevinParams, StepCallback, sample_model
from shared.ebm.recovery import RecoverySchedule
from shared.ebm.recovery_sampling import recovery_sample
from shared.labels import resolve_label
from shared.seeding import MAX_SEED, make_generators, rand_per_sample, randn_per_sample
from shared.weights import count_parameters, load_network, save_model_dir

logger = logging.getLogger(__name__)

MODEL_KIND = "ebm-cnn"
MAX_GUIDANCE = 50.0


@dataclass(frozen=True)
class EBMSampleParams:
    """One sampling run. Image i uses seeds[i] and labels[i] (None: the marginal energy E(x)).

    guidance_scale w: labelled images follow E(x) + w (E(x, y) - E(x)) (shared/ebm/energy.py); 1: none.
    """

    seeds: tuple[int, ...]
    langevin: LangevinParams = field(default_factory=LangevinParams)
    labels: tuple[int | None, ...] | None = None
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("at least one seed (one per image) is required")
        if not all(0 <= s <= MAX_SEED for s in self.seeds):
            raise ValueError(f"seeds must be in [0, {MAX_SEED}]")
        if self.labels is not None and len(self.labels) != len(self.seeds):
            raise ValueError(f"{len(self.labels)} labels for {len(self.seeds)} seeds")
        if not 0 <= self.guidance_scale <= MAX_GUIDANCE:
            raise ValueError(f"guidance_scale must be in [0, {MAX_GUIDANCE}], got {self.guidance_scale}")


class EBMPipeline:
    """Holds the energy network in eval mode on one device; runs seeded Langevin chains."""

    def __init__(self, net: EnergyNet, card: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.card = card or {}
        sampling = dict(self.card.get("sampling") or {})
        # the card's guidance on the energy (absent on cards written before guidance existed: none)
        self.default_guidance_scale = float(sampling.pop("guidance_scale", 1.0))
        if not 0 <= self.default_guidance_scale <= MAX_GUIDANCE:
            raise ValueError(f"the card's sampling.guidance_scale must be in [0, {MAX_GUIDANCE}]")
        self.default_langevin = LangevinParams(**sampling) if sampling else LangevinParams()
        levels = net.config.num_levels
        self.schedule = RecoverySchedule(levels, **self.card.get("recovery", {})) if levels else None

    @property
    def recipe(self) -> str:
        return "recovery-likelihood" if self.schedule is not None else "persistent-cd"

    def sample_params(
        self,
        seeds: Sequence[int],
        labels: Sequence[int | None] | None = None,
        guidance_scale: float | None = None,
        **langevin: Any,
    ) -> EBMSampleParams:
        """A run on the card's chain and guidance; `langevin` fields and `guidance_scale` that are not None
        replace the card's (steps, step_size, noise_scale, grad_clip, clamp). Raises ValueError when invalid."""
        overrides = {name: value for name, value in langevin.items() if value is not None}
        params = EBMSampleParams(
            seeds=tuple(seeds),
            langevin=dataclasses.replace(self.default_langevin, **overrides),
            labels=None if labels is None else tuple(labels),
            guidance_scale=self.default_guidance_scale if guidance_scale is None else guidance_scale,
        )
        self.check(params)
        return params

    def total_steps(self, langevin: LangevinParams) -> int:
        """Langevin steps a run makes in all (the progress a job reports): steps per level x levels."""
        return langevin.steps * (self.schedule.num_levels if self.schedule is not None else 1)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def config(self) -> EnergyConfig:
        return self.net.config

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], device: str = "auto") -> EBMPipeline:
        net, card = load_network(directory, MODEL_KIND, lambda c: EnergyNet(EnergyConfig.from_dict(c["energy"])))
        pipeline = cls(net.to(pick_device(device)), card)
        logger.info(
            "loaded %s (%d parameters, sha256 %s) on %s",
            directory, count_parameters(net), card["sha256"][:12], pipeline.device,
        )  # fmt: skip
        return pipeline

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        training: dict[str, Any] | None = None,
        sampling: LangevinParams | None = None,
        guidance_scale: float | None = None,
    ) -> Path:
        """Weights (fp32: energies are sensitive to small weight changes) and the model card."""
        langevin = sampling or self.default_langevin
        card = {
            "kind": MODEL_KIND,
            "energy": self.config.to_dict(),
            "parameters": count_parameters(self.net),
            "recipe": self.recipe,
            "sampling": {
                **dataclasses.asdict(langevin),
                "clamp": list(langevin.clamp) if langevin.clamp else None,
                "guidance_scale": self.default_guidance_scale if guidance_scale is None else guidance_scale,
            },
            "training": training or self.card.get("training", {}),
        }
        if self.schedule is not None:
            card["recovery"] = {"beta_start": self.schedule.beta_start, "beta_end": self.schedule.beta_end}
        return save_model_dir(directory, self.net.state_dict(), card, dtype=None)

    def resolve_label(self, label: int | str | None) -> int | None:
        return resolve_label(label, self.config.num_classes, self.config.class_names)

    def check(self, params: EBMSampleParams) -> None:
        """Raise ValueError for parameters this model cannot run, before any work is done."""
        for label in params.labels or ():
            if label is not None:
                self.resolve_label(int(label))

    def _label_tensor(self, labels: Sequence[int | None] | None) -> torch.Tensor | None:
        if labels is None or self.config.num_classes is None:
            return None
        return torch.tensor([-1 if y is None else y for y in labels], dtype=torch.long, device=self.device)

    def sample(self, params: EBMSampleParams, callback: StepCallback | None = None) -> torch.Tensor:
        """Images in [-1, 1], shape (len(seeds), C, H, W), float32 on this pipeline's device."""
        self.check(params)
        cfg = self.config
        generators = make_generators(params.seeds)
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        labels = self._label_tensor(params.labels)
        if self.schedule is not None:
            x_top = randn_per_sample(generators, shape, device=self.device)  # x_T ~ N(0, I)
            return recovery_sample(
                self.net, self.schedule, x_top, params.langevin,
                labels=labels, guidance_scale=params.guidance_scale, generators=generators, callback=callback,
            ).clamp(-1, 1)  # fmt: skip
        x_init = rand_per_sample(generators, shape, device=self.device) * 2 - 1  # U[-1, 1)
        return sample_model(
            self.net, x_init, params.langevin,
            labels=labels, guidance_scale=params.guidance_scale, generators=generators, callback=callback,
        ).clamp(-1, 1)  # fmt: skip
