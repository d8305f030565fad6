"""FID, KID and class agreement in a (tiny, random) classifier's feature space: invariants that any
correct implementation keeps, on images small enough to run in well under a second."""

from __future__ import annotations

import pytest
import torch

from shared.classifier import Classifier, ClassifierConfig
from training.metrics import (
    ClassifierFeatures,
    FeatureSpaceEvaluator,
    class_agreement,
    frechet_distance,
    mean_pairwise_distance,
    unbiased_mmd2,
)


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


# --- diversity and per-class scores -------------------------------------------------------------------------


def draw_classes(per_class: int, seed: int, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (classes * per_class, 3, 8, 8) images whose class sets the mean brightness, and their labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    base = 0.15 + 0.7 * labels.view(-1, 1, 1, 1) / (classes - 1) + 0.1 * torch.rand(len(labels), 3, 1, 1, generator=gen)
    x = base + 0.15 * torch.randn(len(labels), 3, 8, 8, generator=gen)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def class_evaluator(tiny_classifier: Classifier) -> FeatureSpaceEvaluator:
    reference, labels = draw_classes(60, 10)
    return FeatureSpaceEvaluator(tiny_classifier, reference, reference_labels=labels, kid_subset_size=50, kid_subsets=5)


def test_mean_pairwise_distance_is_the_mean_over_distinct_pairs() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=torch.float64)
    assert mean_pairwise_distance(x) == pytest.approx((5 + 10 + 5) / 3)
    assert mean_pairwise_distance(x, chunk=2) == pytest.approx((5 + 10 + 5) / 3)  # chunked rows, same pairs
    assert mean_pairwise_distance(x[[1, 1, 1, 1]]) < 1e-6


def test_unbiased_mmd2_is_torchmetrics_kid_estimator_on_equal_sizes() -> None:
    from torchmetrics.image.kid import poly_mmd

    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(40, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    assert unbiased_mmd2(x, y + 0.5) == pytest.approx(float(poly_mmd(x, y + 0.5)), rel=1e-9)


def test_frechet_distance_is_torchmetrics_fid(tiny_classifier: Classifier) -> None:
    reference, generated = draw(200, 11), draw(150, 12, brightness=0.2)
    evaluator = FeatureSpaceEvaluator(tiny_classifier, reference, kid_subset_size=50, kid_subsets=2)
    fid = evaluator.score(generated).fid
    assert frechet_distance(evaluator.features(generated), evaluator.reference_features) == pytest.approx(fid, rel=1e-6)


def test_a_fresh_draw_is_about_as_diverse_as_the_reference(class_evaluator: FeatureSpaceEvaluator) -> None:
    row = class_evaluator.score(*draw_classes(40, 13)).to_dict()
    assert set(row["diversity_per_class"]) == {"0", "1", "2"}  # the tiny classifier has no class names
    assert all(0.8 < d < 1.2 for d in row["diversity_per_class"].values())
    assert 0.8 < row["diversity_all"] < 1.2
    assert row["diversity_min"] == min(row["diversity_per_class"].values())


def test_a_collapsed_class_scores_near_zero_and_is_the_minimum(class_evaluator: FeatureSpaceEvaluator) -> None:
    images, labels = draw_classes(40, 14)
    images[labels == 1] = images[labels == 1][0]  # every class-1 sample is one image
    row = class_evaluator.score(images, labels).to_dict()
    assert row["diversity_per_class"]["1"] < 1e-3
    assert row["diversity_min_class"] == "1"
    assert all(d > 0.8 for c, d in row["diversity_per_class"].items() if c != "1")


def test_one_image_plus_tiny_noise_scores_near_zero(class_evaluator: FeatureSpaceEvaluator) -> None:
    images, labels = draw_classes(40, 15)
    gen = torch.Generator().manual_seed(0)
    one = images[:1].int() + torch.randint(-2, 3, images.shape, generator=gen)  # +-2 of 255 levels
    collapsed = one.clamp(0, 255).to(torch.uint8)
    row = class_evaluator.score(collapsed, labels).to_dict()
    assert row["diversity"] < 0.15 and row["diversity_all"] < 0.1


def test_shuffled_labels_spread_each_class_and_per_class_kid_sees_it(class_evaluator: FeatureSpaceEvaluator) -> None:
    images, labels = draw_classes(40, 16)
    right = class_evaluator.score(images, labels).to_dict()
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    wrong = class_evaluator.score(images, shuffled).to_dict()
    assert wrong["diversity"] > 1.3 * right["diversity"]  # each "class" now spans all three brightness levels
    assert wrong["diversity_all"] == right["diversity_all"]  # labels do not enter the all-images score
    assert wrong["kid_per_class_mean"] > 10 * abs(right["kid_per_class_mean"])


def test_per_class_fid_only_when_every_class_has_more_samples_than_dimensions(
    class_evaluator: FeatureSpaceEvaluator,
) -> None:
    dims = class_evaluator.reference_features.shape[1]  # 16 for the tiny classifier
    few = class_evaluator.score(*draw_classes(dims, 17)).to_dict()
    assert "fid_per_class" not in few and len(few["kid_per_class"]) == 3
    many = class_evaluator.score(*draw_classes(dims + 1, 17)).to_dict()
    assert set(many["fid_per_class"]) == {"0", "1", "2"} and all(v >= 0 for v in many["fid_per_class"].values())


def test_without_labels_only_the_all_images_diversity(class_evaluator: FeatureSpaceEvaluator) -> None:
    row = class_evaluator.score(draw_classes(20, 18)[0]).to_dict()
    assert "diversity_all" in row and "diversity" not in row and "kid_per_class" not in row
