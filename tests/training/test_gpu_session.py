"""training/gpu_session.sh, the script a rare GPU window runs, rehearsed on the CPU with a tiny CIFAR-shaped
ImageFolder: it warm-starts both trainers from the shipped weights, packs each export and the evaluation
into $OUT, and leaves models/ alone. A broken flag here would otherwise be found only on the GPU."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from shared.weights import WEIGHTS_FILE, file_sha256
from training.common import REPO_ROOT

pytestmark = pytest.mark.slow
SCRIPT = REPO_ROOT / "training" / "gpu_session.sh"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_shaped_folder(root: Path) -> Path:
    """train/ and test/ of 32x32 PNGs in the ten CIFAR-10 classes: 4 train and 2 test images per class."""
    gen = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 4), ("test", 2)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                img = (label / 10 + 0.2 * torch.rand(32, 32, 3, generator=gen)).clamp(0, 1)
                Image.fromarray((img * 255).to(torch.uint8).numpy()).save(folder / f"{k}.png")
    return root


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def tar_json(archive: Path, member: str) -> dict:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(member)
        assert handle is not None, f"{member} missing from {archive.name}"
        return json.load(io.TextIOWrapper(handle))


def rehearse(tmp_path: Path, **overrides: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DATA": str(cifar_shaped_folder(tmp_path / "data")),
        "DATA_CACHE": str(tmp_path / "cache"),
        "OUT": str(out),
        "WORK": str(tmp_path / "work"),
        "EVAL_N": "10",
        "EVAL_STEPS": "2",
        "REFERENCE_SIZE": "20",
        "EVAL_BATCH": "10",
        "DIFFUSION_ARGS": "--max-steps 2 --sample-images 10 --sample-steps 2",
        "EBM_ARGS": "--max-steps 2 --batch-size 8 --sample-images 10 --chain-steps 2",
        **overrides,
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "--rehearse"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    return done, out


def test_the_rehearsal_trains_packs_and_evaluates_without_touching_models(tmp_path: Path) -> None:
    shipped = {name: digest(REPO_ROOT / "models" / name) for name in ("diffusion", "ebm")}
    done, out = rehearse(tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    names = sorted(p.name for p in out.iterdir())
    parts = [n for n in names if n.startswith("diffusion-state.tar.part")]
    assert parts and [n for n in names if n not in parts] == ["diffusion.tar", "ebm.tar", "eval.tar", "logs.tar.gz"]
    # what the device tool brings back: files of at most 16 MiB (an fp32 diffusion export would not come back)
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    # the standing run's state comes back too (in parts): the CPU run continues from the GPU's last step
    state = standing_state(out, tmp_path / "state")
    assert state["step"] == 2 and state["history"]["images_seen"] == 2 * 8

    for name in ("diffusion", "ebm"):
        with tarfile.open(out / f"{name}.tar") as tar:
            members = set(tar.getnames())
        assert {f"models/{name}/model.safetensors", f"models/{name}/config.json"} <= members
        card = tar_json(out / f"{name}.tar", f"models/{name}/config.json")
        before = json.loads((REPO_ROOT / "models" / name / "config.json").read_text())
        assert card["training"]["steps"] == 2
        if name == "ebm" and before.get("recipe") != "recovery-likelihood":  # a persistent-CD energy: start afresh
            assert card["recipe"] == "recovery-likelihood" and card["training"]["warm_started_from"] is None
            continue
        # warm-started from the shipped weights: two more steps of 8 on top of what they had seen
        assert card["training"]["images_seen_total"] == before["training"]["images_seen_total"] + 2 * 8
        assert card["training"]["warm_started_from"] == file_sha256(REPO_ROOT / "models" / name / WEIGHTS_FILE)
    assert {name: digest(REPO_ROOT / "models" / name) for name in shipped} == shipped, "models/ was modified"

    for name in ("diffusion", "ebm"):
        results = tar_json(out / "eval.tar", f"eval/{name}/results.json")
        assert [row["row"] for row in results["rows"]] == ["real", "noise", "untrained", name]
        assert all(row["n"] == 10 for row in results["rows"])
        # the row scores the new export, not the shipped weights
        assert results["rows"][-1]["source"]["weights"] == str(tmp_path / "work" / "models" / name)
    assert "done: diffusion_ok=0 ebm_ok=0 eval_status=0" in log


def standing_state(out: Path, into: Path) -> dict:
    """Reassemble $OUT/diffusion-state.tar.part* as `cat ... | tar -x` would, and load the checkpoint."""
    data = b"".join(p.read_bytes() for p in sorted(out.glob("diffusion-state.tar.part*")))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return torch.load(into / "diffusion-standing" / "checkpoint.pt", weights_only=True)


def test_a_failing_trainer_still_brings_back_the_other_model_and_the_logs_and_a_carried_state_continues(
    tmp_path: Path,
) -> None:
    """Also: with STATE_DIR holding the standing run's state, the diffusion trainer continues it exactly."""
    carried = tmp_path / "carried"
    first, first_out = rehearse(tmp_path / "first", EBM_ARGS="--batch-size 1000")
    assert first.returncode == 1
    state = standing_state(first_out, carried)
    done, out = rehearse(
        tmp_path,
        EBM_ARGS="--batch-size 1000",  # 40 images: the EBM trainer refuses
        STATE_DIR=str(carried / "diffusion-standing"),
        DIFFUSION_ARGS=f"--max-steps {state['step'] + 3} --sample-images 10 --sample-steps 2",
    )
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-4000:]
    assert "continuing the standing run's state" in log
    card = tar_json(out / "diffusion.tar", "models/diffusion/config.json")
    assert card["training"]["steps"] == state["step"] + 3
    assert card["training"]["images_seen_total"] == state["history"]["images_seen_before"] + 8 * (state["step"] + 3)
    assert sorted(p.name for p in out.iterdir() if "part" not in p.name) == ["diffusion.tar", "eval.tar", "logs.tar.gz"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        train_log = tar.extractfile("logs/train-ebm.log")
        assert train_log is not None and b"batch size 1000 is larger than the dataset" in train_log.read()
    assert [r["row"] for r in tar_json(out / "eval.tar", "eval/diffusion/results.json")["rows"]][-1] == "diffusion"
    assert "done: diffusion_ok=0 ebm_ok=1 eval_status=0" in log
