"""Quality floors of the shipped weights in models/, each one a check that random weights fail.

Every check is run twice: on the shipped model (it must pass) and on the same architecture with
freshly initialised weights (it must fail), so a floor that anything would clear cannot creep in.
The real images are 100 CIFAR-10 test images committed beside this file (10 per class, from the
team's JPEG copy), so the tests need no dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from shared.classifier import Classifier, load_classifier
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.unet import UNet
from shared.ebm.energy import EnergyNet
from shared.ebm.pipeline import EBMPipeline
from shared.images import to_uint8
from shared.seeding import make_generators, randn_per_sample
from training.metrics import ClassifierFeatures, class_agreement, mean_pairwise_distance

MODELS = Path(__file__).resolve().parents[2] / "models"
FIXTURE = Path(__file__).with_name("cifar10_test_100.safetensors")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These small batches gain little from a second thread and lose much on a loaded 2-core machine
    (the EBM test took 167 s with two threads beside other jobs, 25 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real() -> tuple[torch.Tensor, torch.Tensor]:
    """100 test images in [-1, 1] (10 per class) and their labels."""
    with safe_open(str(FIXTURE), framework="pt") as f:
        classes = json.loads(f.metadata()["classes"])
        images, labels = f.get_tensor("images"), f.get_tensor("labels")
    assert len(classes) == 10 and images.shape == (100, 3, 32, 32)
    return images.float() / 127.5 - 1, labels


def fresh(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build().eval()


# ------------------------------------------------------------------------------------ classifier
CLASSIFIER_FLOOR = 0.70  # test accuracy on the 100 images; chance is 0.10


def classifier_accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict_logits(x).argmax(dim=1) == y).float().mean())


def test_the_shipped_classifier_is_well_above_chance(real: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = load_classifier(MODELS / "classifier")
    assert classifier_accuracy(model, *real) >= CLASSIFIER_FLOOR
    untrained = fresh(lambda: Classifier(model.config))
    assert classifier_accuracy(untrained, *real) < CLASSIFIER_FLOOR  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- diffusion
DENOISING_CEILING = 0.15  # MSE of the eps the network implies: shipped v-model 0.07, fresh 0.40, eps = 0: 1.0


@torch.no_grad()
def denoising_error(pipeline: DiffusionPipeline, x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out L_simple (Ho et al. 2020, Eq. 14) of the conditional eps_theta at seeded t and eps."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    t = torch.randint(0, pipeline.diffusion.num_timesteps, (x.shape[0],), generator=gen)
    x_t = pipeline.diffusion.q_sample(x, t, noise)
    return float((pipeline.eps_model()(x_t, t, y) - noise).square().mean())


def test_the_shipped_diffusion_model_denoises_held_out_images(real: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = real[0][::3], real[1][::3]  # 34 images, every class
    pipeline = DiffusionPipeline.from_pretrained(MODELS / "diffusion", device="cpu")
    assert denoising_error(pipeline, x, y) < DENOISING_CEILING
    untrained = DiffusionPipeline(fresh(lambda: UNet(pipeline.config)), pipeline.diffusion)  # type: ignore[arg-type]
    assert denoising_error(untrained, x, y) > DENOISING_CEILING


# Of 30 guided 10-step DDIM samples, 3 per class; chance is 0.10. Measured on the standing run's exports
# (v-prediction): 544,256 images (shipped) 0.80, 477,632 0.77, 329,472 0.67, 147,904 0.53, 72,192 0.43,
# 23,616 0.43; the eps weights of 27,200 images the issue started from 0.23; a fresh UNet 0.10. The floor is
# the diffusion quality issue's agreement target.
AGREEMENT_FLOOR = 0.60


def short_sample_agreement(pipeline: DiffusionPipeline, classifier: Classifier, steps: int) -> float:
    labels = tuple(k % 10 for k in range(30))
    params = SampleParams(seeds=range(30), sampler="ddim", steps=steps, labels=labels, guidance_scale=3.0)  # type: ignore[arg-type]
    return class_agreement(classifier, to_uint8(pipeline.sample(params)), torch.tensor(labels))


def test_short_guided_samples_of_the_shipped_diffusion_model_show_their_class() -> None:
    """Raise the floor towards the issue's 80% as better weights ship (the standing run exports only
    weights that beat the shipped ones). A fresh UNet's output layer starts at zero, so its images hardly
    depend on the step count, and one step shows it."""
    pipeline = DiffusionPipeline.from_pretrained(MODELS / "diffusion", device="cpu")
    classifier = load_classifier(MODELS / "classifier")
    assert short_sample_agreement(pipeline, classifier, steps=10) >= AGREEMENT_FLOOR
    untrained = DiffusionPipeline(fresh(lambda: UNet(pipeline.config)), pipeline.diffusion)  # type: ignore[arg-type]
    assert short_sample_agreement(untrained, classifier, steps=1) < AGREEMENT_FLOOR


# ------------------------------------------------------------------------------------------- EBM
# 30 samples of the card's chain (with its guidance), 3 per class. Measured on the shipped weights (229,216
# images on the card's chain: noise 1.05, guidance 4), the weights they replaced (76,672 images, no
# guidance), a run at 232,672 images (worse: not shipped), and fresh weights:
EBM_AGREEMENT_FLOOR = 0.40  # shipped 0.50 (15 of 30); replaced 0.167; 232,672 images 0.367; fresh 0.10
EBM_DIVERSITY_FLOOR = 0.50  # the issue's target; within-class feature spread / the real images': shipped 0.65
SMOOTHING_FLOOR = 0.50  # share of the noise-to-data gap in neighbour differences closed: shipped 0.79, fresh -0.21


def total_variation(x: torch.Tensor) -> float:
    """Mean absolute difference of horizontally neighbouring pixels: ~0.11 for CIFAR-10, ~1.1 for N(0, 1) noise."""
    return float((x[..., 1:] - x[..., :-1]).abs().mean())


def within_class_spread(feats: torch.Tensor, labels: torch.Tensor) -> float:
    return sum(mean_pairwise_distance(feats[labels == c]) for c in range(10)) / 10


@torch.no_grad()
def ebm_checks(pipeline: EBMPipeline, classifier: Classifier, real: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """The card's chain from fixed seeds (3 per class): class agreement, within-class diversity in the
    classifier's feature space relative to the real images', and smoothness against the starting noise."""
    x, y = real
    seeds, labels = tuple(range(30)), torch.tensor([k % 10 for k in range(30)])
    with torch.enable_grad():
        samples = pipeline.sample(pipeline.sample_params(seeds, labels.tolist()))  # the card's chain and guidance
    noise = randn_per_sample(make_generators(seeds), (3, 32, 32)).clamp(-1, 1)  # where the chains start
    tv_data, tv_noise = total_variation(x), total_variation(noise)
    features = ClassifierFeatures(classifier)
    return {
        "agreement": class_agreement(classifier, to_uint8(samples), labels),
        "diversity": within_class_spread(features(samples), labels) / within_class_spread(features(x), y),
        "smoothing": (tv_noise - total_variation(samples)) / (tv_noise - tv_data),
    }


def test_the_shipped_ebm_samples_diverse_smooth_images_of_their_class(real: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The served recipe (recovery likelihood): seeds give different images, and the class shows.
    A collapsed sampler (one image per class, as the persistent-CD model had) fails the diversity floor."""
    pipeline = EBMPipeline.from_pretrained(MODELS / "ebm", device="cpu")
    assert pipeline.recipe == "recovery-likelihood"
    classifier = load_classifier(MODELS / "classifier")
    shipped = ebm_checks(pipeline, classifier, real)
    assert shipped["agreement"] >= EBM_AGREEMENT_FLOOR, shipped
    assert shipped["diversity"] >= EBM_DIVERSITY_FLOOR, shipped
    assert shipped["smoothing"] >= SMOOTHING_FLOOR, shipped
    untrained = ebm_checks(EBMPipeline(fresh(lambda: EnergyNet(pipeline.config)), pipeline.card), classifier, real)  # type: ignore[arg-type]
    assert untrained["agreement"] < EBM_AGREEMENT_FLOOR or untrained["smoothing"] < SMOOTHING_FLOOR, untrained
