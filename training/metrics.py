"""Sample-quality metrics in the CIFAR-10 classifier's feature space: FID, KID and class agreement.

Inception-v3 weights cannot be downloaded here, so the feature space is the pooled penultimate layer
of the shipped classifier (`shared.classifier`); numbers are comparable with each other, not with
published Inception FIDs. With a local Inception weights file, `InceptionFID` gives the standard FID.

- FID (Heusel et al. 2017, Eq. 6): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) of Gaussians
  fitted to the two feature sets. torchmetrics' `FrechetInceptionDistance` accumulates the sums in
  float64; the feature module here also returns float64, so the result stays float64.
- KID (Bińkowski et al. 2018, Eq. 4 unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3), averaged over random subsets; its estimator is unbiased, so it is near 0
  (and can be negative) for two samples of one distribution.
- Class agreement: the share of class-conditional samples that the classifier (flip TTA) assigns to
  the requested class; chance is 1 / num_classes.

Images enter as uint8 (B, 3, H, W) (what a user downloads as PNG) or float in [-1, 1].
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from shared.classifier import Classifier

logger = logging.getLogger(__name__)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float32 in [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div(127.5).sub(1.0)
    return images.float()


def batches(images: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    yield from images.split(size)


class ClassifierFeatures(nn.Module):
    """The classifier's pooled penultimate features as a torchmetrics feature module: images -> (B, D) float64.

    Stays in eval mode whatever torchmetrics asks (BatchNorm must use its running statistics), and
    remembers its last input, so FID and KID updated with the same tensor run the network once.
    """

    def __init__(self, classifier: Classifier, batch_size: int = 500) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.batch_size = batch_size
        self.num_features = classifier.config.feature_dim
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is images and self._last[1] == images._version:
            return self._last[2]
        device = next(self.classifier.parameters()).device
        chunks = [self.classifier.features(to_unit_range(c).to(device)) for c in batches(images, self.batch_size)]
        # (B, D) float64 on the CPU: torchmetrics' running sums live there, whatever the network's device
        feats = torch.cat(chunks).double().cpu()
        self._last = (images, images._version, feats)
        return feats


@torch.no_grad()
def class_agreement(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images the classifier (flip TTA) assigns to labels[i]."""
    device = next(classifier.parameters()).device
    logits = classifier.eval().predict_logits(to_unit_range(images).to(device), flip_tta=True)
    return float((logits.argmax(dim=1).cpu() == labels.cpu()).double().mean())


@dataclass(frozen=True)
class Scores:
    n: int
    fid: float
    kid_mean: float
    kid_std: float
    class_agreement: float | None = None
    inception_fid: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class FeatureSpaceEvaluator:
    """FID, KID and class agreement of image sets against one fixed reference set.

    The reference features are computed once (`reset_real_features=False`); each `score` call
    resets only the generated side, so many rows share one reference.
    """

    def __init__(
        self,
        classifier: Classifier,
        reference: torch.Tensor,
        *,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        seed: int = 0,
        inception_weights: str | None = None,
    ) -> None:
        self.classifier = classifier.eval()
        self.features = ClassifierFeatures(classifier)
        self.kid_subset_size, self.seed = kid_subset_size, seed
        self.fid = FrechetInceptionDistance(feature=self.features, reset_real_features=False)
        with warnings.catch_warnings():  # "KID keeps all features": 10k x 256 float64 is 20 MB here
            warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance`")
            self.kid = KernelInceptionDistance(
                feature=self.features, subsets=kid_subsets, subset_size=kid_subset_size, reset_real_features=False
            )
        self.inception = InceptionFID(inception_weights) if inception_weights else None
        for chunk in batches(reference, 2000):
            self.fid.update(chunk, real=True)
            self.kid.update(chunk, real=True)
            if self.inception is not None:
                self.inception.update(chunk, real=True)
        self.reference_size = int(reference.shape[0])

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
        """Scores of `images` (uint8 or [-1, 1] float); class agreement when `labels` are given."""
        n = int(images.shape[0])
        self.fid.reset()
        self.kid.reset()
        for chunk in batches(images, 2000):
            self.fid.update(chunk, real=False)
            self.kid.update(chunk, real=False)
        self.kid.subset_size = min(self.kid_subset_size, n, self.reference_size)
        fid = float(self.fid.compute())
        with torch.random.fork_rng():  # KID draws its subsets from the global generator
            torch.manual_seed(self.seed)
            kid_mean, kid_std = (float(v) for v in self.kid.compute())
        agreement = class_agreement(self.classifier, images, labels) if labels is not None else None
        inception = self.inception.score(images) if self.inception is not None else None
        return Scores(n, fid, kid_mean, kid_std, agreement, inception)


class InceptionFID:
    """Standard FID (Inception-v3 pool features, 2048-d) from a local weights file.

    torchmetrics builds the network through torch-fidelity (`pip install torch-fidelity`) and
    loads `feature_extractor_weights_path` instead of downloading; the file is torch-fidelity's
    `weights-inception-2015-12-05-6726825d.pth` (the TF FID Inception ported to PyTorch).
    """

    def __init__(self, weights_path: str) -> None:
        # The network runs in float32 like the reference implementation; torchmetrics accumulates the
        # feature sums and covariances in float64 either way (`.set_dtype(torch.float64)` would also
        # run Inception itself in float64, ~4x slower on a CPU, for no change in the statistics).
        self.metric = FrechetInceptionDistance(
            feature=2048, normalize=True, reset_real_features=False, feature_extractor_weights_path=weights_path
        )

    @staticmethod
    def _unit(images: torch.Tensor) -> torch.Tensor:
        return (to_unit_range(images) + 1) / 2  # [0, 1]

    def update(self, images: torch.Tensor, real: bool) -> None:
        for chunk in batches(images, 200):
            self.metric.update(self._unit(chunk), real=real)

    def score(self, images: torch.Tensor) -> float:
        self.metric.reset()
        self.update(images, real=False)
        return float(self.metric.compute())
