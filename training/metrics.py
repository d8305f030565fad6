"""Sample-quality metrics in the CIFAR-10 classifier's feature space: FID, KID, class agreement, diversity.

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
- Diversity: the mean Euclidean distance between two distinct samples in this feature space, divided
  by the same for the reference images: 1.0 = as spread out as the data, near 0 = collapsed. The mean
  over the n(n-1)/2 distinct pairs is a U-statistic, unbiased for E||X - X'|| at any n >= 2, so the
  ratio needs no correction for ~100 samples per class against 1,000 reference images per class.
  Labelled rows (given `reference_labels`) get it per class (a sample's class is the label it was
  generated for), its mean over classes and its minimum; every row, labelled or not, also gets it over
  all samples against all reference images (`diversity_all`), which is the only diversity an
  unconditional row has. A model that draws one image per class scores near 0 per class but can
  score near 1 over all images: the per-class numbers are the ones that find class collapse.
- Per class FID and KID: a sample covariance of n feature vectors has rank at most n - 1, so FID
  between one class's samples and its reference images is only defined (full-rank covariances) when
  both sets have more vectors than the feature dimension (D = 256 for the shipped classifier: more
  than 256 samples per class, N > 2,560 at ten classes), and it is biased upwards at small n like any
  FID. So per-class FID is reported only when every set exceeds D; per-class KID always, with the same
  kernel as KID and the unbiased MMD^2 estimator over all pairs (no subsets, so it is deterministic).

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


def mean_pairwise_distance(feats: torch.Tensor, chunk: int = 1024) -> float:
    """Mean Euclidean distance over the distinct pairs of rows of (n, D) `feats`, n >= 2."""
    n = int(feats.shape[0])
    if n < 2:
        raise ValueError(f"a mean pairwise distance needs 2 or more vectors, got {n}")
    total = 0.0
    for start in range(0, n, chunk):
        block = torch.cdist(feats[start : start + chunk], feats)  # (b, n)
        block.diagonal(offset=start).zero_()  # a row against itself: 0 up to matmul rounding
        total += float(block.sum())
    return total / (n * (n - 1))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(x, y) = (x.y / D + 1)^3 (Bińkowski et al. 2018), (m, D) x (n, D) -> (m, n)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the polynomial kernel: means over distinct pairs within x and within y, all x-y pairs."""
    m, n = int(x.shape[0]), int(y.shape[0])
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).mean())


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """FID's formula (Heusel et al. 2017, Eq. 6) for Gaussians fitted to (m, D) x and (n, D) y."""
    mu_x, mu_y = x.mean(dim=0), y.mean(dim=0)
    s_x, s_y = torch.cov(x.T), torch.cov(y.T)
    # Tr((S_x S_y)^(1/2)) = sum of sqrt(eigenvalues) of the symmetric S_x^(1/2) S_y S_x^(1/2)
    evals, evecs = torch.linalg.eigh(s_x)
    root_x = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root_x @ s_y @ root_x).clamp(min=0).sqrt().sum()
    return float((mu_x - mu_y).square().sum() + s_x.trace() + s_y.trace() - 2 * cross)


@dataclass(frozen=True)
class PerClass:
    """Per-class diversity, KID and (when every set has more vectors than dimensions) FID, keyed by class name."""

    diversity: dict[str, float]
    kid: dict[str, float]
    fid: dict[str, float] | None


def per_class_scores(
    feats: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor,
    reference_labels: torch.Tensor,
    class_names: tuple[str, ...],
    reference_spread: dict[int, float],
) -> PerClass:
    """Scores of each class that has 2 or more samples and reference vectors; `reference_spread` caches
    the reference's mean pairwise distance per class across calls."""
    diversity, kid, fid = {}, {}, {}
    for c in sorted(set(labels.tolist())):
        x, y = feats[labels == c], reference[reference_labels == c]
        if min(x.shape[0], y.shape[0]) < 2:
            continue
        if c not in reference_spread:
            reference_spread[c] = mean_pairwise_distance(y)
        name = class_names[c] if c < len(class_names) else str(c)
        diversity[name] = mean_pairwise_distance(x) / reference_spread[c]
        kid[name] = unbiased_mmd2(x, y)
        if min(x.shape[0], y.shape[0]) > feats.shape[1]:
            fid[name] = frechet_distance(x, y)
    full_rank = bool(kid) and len(fid) == len(kid)
    return PerClass(diversity, kid, fid if full_rank else None)


@dataclass(frozen=True)
class Scores:
    n: int
    fid: float
    kid_mean: float
    kid_std: float
    diversity_all: float
    class_agreement: float | None = None
    inception_fid: float | None = None
    per_class: PerClass | None = None

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON row: the per-class dicts plus their summaries (mean and minimum diversity, mean KID)."""
        row = {k: v for k, v in self.__dict__.items() if v is not None and k != "per_class"}
        pc = self.per_class
        if pc is not None and pc.diversity:
            worst = min(pc.diversity, key=pc.diversity.__getitem__)
            row |= {
                "diversity": sum(pc.diversity.values()) / len(pc.diversity),
                "diversity_min": pc.diversity[worst],
                "diversity_min_class": worst,
                "diversity_per_class": pc.diversity,
                "kid_per_class_mean": sum(pc.kid.values()) / len(pc.kid),
                "kid_per_class": pc.kid,
            }
            if pc.fid is not None:
                row |= {"fid_per_class_mean": sum(pc.fid.values()) / len(pc.fid), "fid_per_class": pc.fid}
        return row


class FeatureSpaceEvaluator:
    """FID, KID, class agreement and diversity of image sets against one fixed reference set.

    The reference features are computed once (`reset_real_features=False`, and kept here for the
    diversity and per-class scores); each `score` call resets only the generated side, so many rows
    share one reference. Per-class scores need `reference_labels`.
    """

    def __init__(
        self,
        classifier: Classifier,
        reference: torch.Tensor,
        *,
        reference_labels: torch.Tensor | None = None,
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
        self.reference_features = self._update(reference, real=True)
        self.reference_labels = None if reference_labels is None else reference_labels.cpu()
        self.class_names = classifier.config.class_names
        self.reference_size = int(reference.shape[0])
        self._reference_spread: float | None = None  # mean pairwise distance of all reference images
        self._reference_class_spread: dict[int, float] = {}

    def _update(self, images: torch.Tensor, real: bool) -> torch.Tensor:
        """Feed FID and KID (and Inception FID for the reference); returns the (N, D) features."""
        feats = []
        for chunk in batches(images, 2000):
            feats.append(self.features(chunk))  # FID and KID below reuse these: the network runs once
            self.fid.update(chunk, real=real)
            self.kid.update(chunk, real=real)
            if real and self.inception is not None:
                self.inception.update(chunk, real=True)
        return torch.cat(feats)

    def diversity_all(self, feats: torch.Tensor) -> float:
        """Mean pairwise distance of all `feats` over that of all reference features."""
        if self._reference_spread is None:
            self._reference_spread = mean_pairwise_distance(self.reference_features)
        return mean_pairwise_distance(feats) / self._reference_spread

    def per_class(self, feats: torch.Tensor, labels: torch.Tensor | None) -> PerClass | None:
        if labels is None or self.reference_labels is None:
            return None
        return per_class_scores(
            feats,
            labels.cpu(),
            self.reference_features,
            self.reference_labels,
            self.class_names,
            self._reference_class_spread,
        )

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Scores:
        """Scores of `images` (uint8 or [-1, 1] float); class agreement and per-class scores when `labels`
        (the classes the images were generated for) are given."""
        n = int(images.shape[0])
        self.fid.reset()
        self.kid.reset()
        feats = self._update(images, real=False)
        self.kid.subset_size = min(self.kid_subset_size, n, self.reference_size)
        fid = float(self.fid.compute())
        with torch.random.fork_rng():  # KID draws its subsets from the global generator
            torch.manual_seed(self.seed)
            kid_mean, kid_std = (float(v) for v in self.kid.compute())
        agreement = class_agreement(self.classifier, images, labels) if labels is not None else None
        inception = self.inception.score(images) if self.inception is not None else None
        return Scores(
            n, fid, kid_mean, kid_std, self.diversity_all(feats), agreement, inception, self.per_class(feats, labels)
        )


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
