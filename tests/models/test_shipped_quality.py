"""Quality floors of the shipped weights in models/, each one a check that random weights fail.

Every check is run twice: on the shipped model (it must pass) and on the same architecture with
freshly initialised weights (it must fail), so a floor that anything would clear cannot creep in.
The real images are 100 CIFAR-10 test images committed beside this file (10 per class, from the
team's JPEG copy), so the tests need no dataset.
"""

from __future__ import annotations

import dataclasses
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
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
from shared.images import to_uint8
from shared.seeding import make_generators, rand_per_sample
from training.metrics import class_agreement

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


# Of 30 guided 10-step DDIM samples, 3 per class; chance is 0.10. Measured: the shipped weights (v-prediction,
# 23,616 images) 0.43; the weights they replaced (eps, 27,200 images) 0.23; a fresh UNet 0.10.
AGREEMENT_FLOOR = 0.35


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
JEM_ACCURACY_FLOOR = 0.25  # the energy network read as a classifier (JEM); chance is 0.10
SMOOTHING_FLOOR = 0.10  # share of the noise-to-data gap in neighbour differences the chains close
CHAIN_STEPS = 30  # of the card's chain (it serves 200, step size 4): shipped 0.19 of the gap, fresh weights 0.04
# (at 60 steps: 0.33 and 0.14, the fresh net's chains smooth too; keep step size x steps near 120)


def total_variation(x: torch.Tensor) -> float:
    """Mean absolute difference of horizontally neighbouring pixels: ~0.11 for CIFAR-10, ~0.66 for noise."""
    return float((x[..., 1:] - x[..., :-1]).abs().mean())


@torch.no_grad()
def ebm_checks(pipeline: EBMPipeline, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """JEM accuracy on real images, and Langevin samples' energy and smoothness against their start."""
    seeds = tuple(range(20))
    noise = rand_per_sample(make_generators(seeds), (3, 32, 32)) * 2 - 1  # the chains' starting points
    with torch.enable_grad():
        chain = dataclasses.replace(pipeline.default_langevin, steps=CHAIN_STEPS)
        samples = pipeline.sample(EBMSampleParams(seeds=seeds, langevin=chain, labels=tuple(k % 10 for k in seeds)))
    tv_data, tv_noise = total_variation(x), total_variation(noise)
    return {
        "jem_accuracy": float((pipeline.net(x).argmax(dim=1) == y).float().mean()),
        "energy_drop": float(pipeline.net.energy(noise).mean() - pipeline.net.energy(samples).mean()),
        "smoothing": (tv_noise - total_variation(samples)) / (tv_noise - tv_data),
    }


def test_the_shipped_ebm_classifies_and_its_chains_move_towards_data(real: tuple[torch.Tensor, torch.Tensor]) -> None:
    pipeline = EBMPipeline.from_pretrained(MODELS / "ebm", device="cpu")
    shipped = ebm_checks(pipeline, *real)
    assert shipped["jem_accuracy"] >= JEM_ACCURACY_FLOOR
    assert shipped["energy_drop"] > 0  # samples lower in energy than the noise they started from
    assert shipped["smoothing"] >= SMOOTHING_FLOOR  # and closer to data statistics than noise
    untrained = ebm_checks(EBMPipeline(fresh(lambda: EnergyNet(pipeline.config)), pipeline.card), *real)  # type: ignore[arg-type]
    assert untrained["jem_accuracy"] < JEM_ACCURACY_FLOOR
    assert untrained["smoothing"] < SMOOTHING_FLOOR
