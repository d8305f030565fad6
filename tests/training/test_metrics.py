"""FID, KID and class agreement in a (tiny, random) classifier's feature space: invariants that any
correct implementation keeps, on images small enough to run in well under a second."""

from __future__ import annotations

import pytest
import torch

from shared.classifier import Classifier, ClassifierConfig
from training.metrics import ClassifierFeatures, FeatureSpaceEvaluator, class_agreement


@pytest.fixture(scope="module")
def tiny_classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier(ClassifierConfig(stem_channels=4, widths=(8, 16), num_classes=3)).eval()


def draw(n: int, seed: int, brightness: float = 0.0) -> torch.Tensor:
    """uint8 (n, 3, 8, 8) images: smooth random colour fields plus noise, optionally brighter."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=gen) * 0.6 + 0.2 + brightness
    x = base + 0.15 * torch.randn(n, 3, 8, 8, generator=gen)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def test_features_are_float64_and_the_module_never_trains(tiny_classifier: Classifier) -> None:
    features = ClassifierFeatures(tiny_classifier)
    features.train()
    assert not features.training and not tiny_classifier.training
    out = features(draw(5, 0))
    assert out.dtype == torch.float64 and out.shape == (5, 16)


def test_features_of_one_tensor_are_computed_once_until_it_changes(tiny_classifier: Classifier) -> None:
    features = ClassifierFeatures(tiny_classifier)
    images = draw(4, 1)
    first = features(images)
    assert features(images) is first
    images[0] = 0
    assert not torch.equal(features(images), first)


def test_fid_of_a_set_against_itself_is_zero(tiny_classifier: Classifier) -> None:
    images = draw(200, 2)
    scores = FeatureSpaceEvaluator(tiny_classifier, images, kid_subset_size=100, kid_subsets=10).score(images)
    assert abs(scores.fid) < 1e-6
    assert abs(scores.kid_mean) < 1e-3


def test_a_shifted_distribution_scores_worse_than_a_fresh_draw(tiny_classifier: Classifier) -> None:
    evaluator = FeatureSpaceEvaluator(tiny_classifier, draw(300, 3), kid_subset_size=100, kid_subsets=20)
    same = evaluator.score(draw(300, 4))
    shifted = evaluator.score(draw(300, 4, brightness=0.3))
    assert shifted.fid > 3 * same.fid > 0
    assert shifted.kid_mean > 10 * abs(same.kid_mean)  # unbiased: near 0 (either sign) for one distribution


def test_scores_are_the_same_on_every_run(tiny_classifier: Classifier) -> None:
    evaluator = FeatureSpaceEvaluator(tiny_classifier, draw(120, 5), kid_subset_size=50, kid_subsets=5)
    images = draw(120, 6)
    assert evaluator.score(images) == evaluator.score(images)


def test_class_agreement_counts_the_classifier_s_choices(tiny_classifier: Classifier) -> None:
    images = draw(60, 7)
    predicted = tiny_classifier.predict_logits(images.float() / 127.5 - 1).argmax(dim=1)
    assert class_agreement(tiny_classifier, images, predicted) == 1.0
    assert class_agreement(tiny_classifier, images, (predicted + 1) % 3) == 0.0
