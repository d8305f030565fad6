"""A small CIFAR-10 classifier whose pooled penultimate features are the evaluation's feature space.

Inception-v3 weights cannot be downloaded on this team's machines, so FID/KID are computed in the
feature space of this network instead (see `training/metrics.py`); its logits also give the class
agreement of class-conditional samples.

Network (after Keller Jordan's airbench, github.com/KellerJordan/cifar10-airbench, and David Page's
ResNet-9): a 3x3 stem conv, then one conv group per width, each
    conv3x3 -> max-pool 2x2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU,
then a global max-pool to the feature vector and a bias-free linear head whose logits are scaled by
`logit_scale` (small logits early in training, as in both references).

Input convention (the one place it is stated): images are float (B, 3, H, W) in [-1, 1], the same
range the generative models produce and `training.data.iterate_batches` yields. The network
standardises them itself with the fixed per-channel CIFAR-10 statistics in `CIFAR10_MEAN`/`CIFAR10_STD`
(of pixels scaled to [-1, 1]), so callers never normalise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import JsonConfig
from shared.weights import count_parameters, load_network, save_model_dir

MODEL_KIND = "cifar-classifier"

# Per-channel mean and std of the CIFAR-10 train split scaled to [-1, 1] (x / 127.5 - 1), measured on
# the team's JPEG copy; fixed constants, so they are not saved with the weights.
CIFAR10_MEAN = (-0.0175, -0.0358, -0.1070)
CIFAR10_STD = (0.4905, 0.4856, 0.5213)


@dataclass(frozen=True)
class ClassifierConfig(JsonConfig):
    """Everything needed to rebuild the classifier; saved as JSON beside its weights."""

    in_channels: int = 3
    stem_channels: int = 32
    widths: tuple[int, ...] = (64, 128, 256)
    num_classes: int = 10
    logit_scale: float = 1 / 8
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("widths", "class_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.widths:
            raise ValueError("widths must name at least one conv group")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for num_classes={self.num_classes}")

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


def conv_bn(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.GELU()]


class ConvGroup(nn.Sequential):
    """conv -> max-pool (halves H and W) -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        first = conv_bn(in_ch, out_ch)
        super().__init__(first[0], nn.MaxPool2d(2), *first[1:], *conv_bn(out_ch, out_ch))


class Classifier(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> logits (B, num_classes); `features` gives the pooled (B, D) vector."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, -1, 1, 1), persistent=False)
        layers: list[nn.Module] = conv_bn(cfg.in_channels, cfg.stem_channels)
        width = cfg.stem_channels
        for out in cfg.widths:
            layers.append(ConvGroup(width, out))
            width = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.num_classes, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, D), D = widths[-1], in float32."""
        h = self.body((x - self.mean) / self.std)  # (B, D, h, w)
        return torch.amax(h, dim=(2, 3)).float()  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.config.logit_scale

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, flip_tta: bool = True, batch_size: int = 500) -> torch.Tensor:
        """Logits in eval mode, batched; with `flip_tta`, averaged over the image and its mirror."""
        out = []
        for chunk in x.split(batch_size):
            logits = self(chunk)
            if flip_tta:
                logits = 0.5 * (logits + self(chunk.flip(-1)))
            out.append(logits.float())
        return torch.cat(out)


def save_classifier(
    model: Classifier, directory: str | os.PathLike[str], training: dict[str, Any] | None = None
) -> Path:
    """Weights (fp16) and the model card."""
    card = {
        "kind": MODEL_KIND,
        "classifier": model.config.to_dict(),
        "parameters": count_parameters(model),
        "input": "float (B, 3, H, W) in [-1, 1]; the network standardises internally",
        "training": training or {},
    }
    return save_model_dir(directory, model.state_dict(), card)


def load_classifier(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> Classifier:
    """The shipped classifier in eval mode (float32); its card (with sha256) is on `.card`."""
    model, card = load_network(directory, MODEL_KIND, lambda c: Classifier(ClassifierConfig.from_dict(c["classifier"])))
    model.card = card  # type: ignore[assignment]
    return model.to(device).eval()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
