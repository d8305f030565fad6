"""The recovery-likelihood EBM trainer on a tiny two-class ImageFolder: steps learn, a resumed run is the
uninterrupted run, a blow-up rolls back, and the export is what the worker's sampler serves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ebm_worker import sample as sample_cli
from shared.ebm.energy import EnergyConfig, EnergyNet
from shared.ebm.objective import RecoveryTerms
from shared.ebm.pipeline import EBMPipeline
from tests.training.conftest import two_class_folder
from training import train_ebm, train_ebm_recovery
from training.data import load_image_dataset
from training.train_ebm_recovery import TrainConfig, init_state, train, train_step


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_class_folder(tmp_path_factory.mktemp("recovery-data"), per_class=8)


def config(tmp_path: Path, data: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(
        data=str(data), data_cache=str(tmp_path / "cache"), out=str(tmp_path / "run"), export=str(tmp_path / "model"),
        batch_size=8, base_channels=8, channel_mult=(1, 2), levels=3, chain_steps=2, sample_images=4, device="cpu",
        lr=1e-3, warmup_steps=1,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_steps_move_the_weights_and_the_ema(tmp_path: Path, data: Path) -> None:
    cfg = config(tmp_path, data)
    dataset = load_image_dataset(cfg.data, cache_dir=cfg.data_cache)
    state = init_state(cfg, dataset, torch.device("cpu"))
    before = [p.detach().clone() for p in state.net.parameters()]
    x = dataset.images[:8].float() / 127.5 - 1
    for _ in range(3):
        terms = train_step(state, x, dataset.labels[:8], cfg)
    assert state.step == 3 and torch.isfinite(terms.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, state.net.parameters(), strict=True))
    assert state.ema is not None and any(
        not torch.equal(a, b) for a, b in zip(before, state.ema.module.parameters(), strict=True)
    )


def test_a_resumed_run_is_the_uninterrupted_run(tmp_path: Path, data: Path) -> None:
    straight = train(config(tmp_path / "a", data, max_steps=4))
    first = config(tmp_path / "b", data, max_steps=2)
    train(first)
    resumed = train(dataclasses.replace(first, resume=first.out, max_steps=4))
    assert straight["steps"] == resumed["steps"] == 4
    a = EBMPipeline.from_pretrained(tmp_path / "a" / "model", device="cpu").net.state_dict()
    b = EBMPipeline.from_pretrained(tmp_path / "b" / "model", device="cpu").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same data order, RNG, optimizer and EMA state


def test_a_blow_up_restores_the_last_checkpoint(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, data, max_steps=4)
    real_step = train_ebm_recovery.train_step
    calls = {"n": 0}

    def blow_up_once(
        state: train_ebm_recovery.TrainState, x: torch.Tensor, y: torch.Tensor, c: TrainConfig
    ) -> RecoveryTerms:
        calls["n"] += 1
        terms = real_step(state, x, y, c)
        return dataclasses.replace(terms, energy_pos=float("nan")) if calls["n"] == 3 else terms

    monkeypatch.setattr(train_ebm_recovery, "train_step", blow_up_once)
    result = train(cfg)
    assert result["restores"] == 1 and result["steps"] == 4
    assert "divergence (E(x+) is nan)" in caplog.text and "restored step 0" in caplog.text
    assert calls["n"] == 7  # the run restarted from the checkpoint written at step 0


def test_train_ebm_trains_the_served_recipe_and_its_export_is_the_served_chain(tmp_path: Path, data: Path) -> None:
    args = [
        "--data", str(data), "--data-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
        "--export", str(tmp_path / "model"), "--batch-size", "8", "--base-channels", "8", "--channel-mult", "1,2",
        "--levels", "3", "--chain-steps", "2", "--sample-images", "4", "--device", "cpu", "--max-steps", "2",
    ]  # fmt: skip
    assert train_ebm.main(args) == 0  # --recipe recovery is the default
    card = json.loads((tmp_path / "model" / "config.json").read_text())
    assert card["recipe"] == "recovery-likelihood" and card["energy"]["num_levels"] == 3
    assert card["sampling"]["steps"] == 2 and card["sampling"]["noise_scale"] == 1.05  # the served temperature
    assert card["training"]["chain_train"]["noise_scale"] == 1.0
    pipeline = EBMPipeline.from_pretrained(tmp_path / "model", device="cpu")
    assert card["sampling"]["guidance_scale"] == 4.0 == pipeline.default_guidance_scale  # --serve-guidance
    assert pipeline.total_steps(pipeline.default_langevin) == 6
    grid = tmp_path / "grid.png"
    assert sample_cli.main(["--weights", str(tmp_path / "model"), "--n", "2", "--out", str(grid)]) == 0
    assert grid.is_file() and (tmp_path / "model" / "samples.png").is_file()

    warm = train(dataclasses.replace(config(tmp_path / "warm", data, max_steps=1), resume=str(tmp_path / "model")))
    assert warm["images_seen_total"] == 16 + 8 and warm["warm_started_from"] == pipeline.card["sha256"]
    assert warm["ce_weight"] == 1.0 and warm["objective_changes"] == []  # the same loss as the run it continues
    # a continuation under another loss says where it changed
    changed = train(
        dataclasses.replace(config(tmp_path / "ce0", data, max_steps=1), resume=str(tmp_path / "model"), ce_weight=0.0)
    )
    assert changed["objective_changes"] == [{"images_seen_total": 16, "ce_weight": [1.0, 0.0]}]


def test_a_warm_start_refuses_a_persistent_cd_energy(tmp_path: Path, data: Path) -> None:
    classic = EBMPipeline(EnergyNet(EnergyConfig(base_channels=8, channel_mult=(1, 2), num_classes=2)))
    classic.save_pretrained(tmp_path / "classic")
    with pytest.raises(ValueError, match="persistent-CD"):
        train(dataclasses.replace(config(tmp_path, data), resume=str(tmp_path / "classic")))
