#!/usr/bin/env bash
# Items 1 and 2 of the benchmark suite on CUDA (at most 470 s), then the two GPU-only rows of the sampler
# table (at most 240 s): under 12 minutes of an H200 in the worst case, usually far less.
# Usage (repository root, torch with CUDA in .venv or $PYTHON): bash bench/gpu.sh
# Writes BENCHMARKS-gpu.md beside BENCHMARKS.md and the raw JSON under bench/results/;
# BENCHMARKS.md (the CPU run) is left as it is, so the GPU's numbers sit beside the CPU's.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: run bench/gpu.sh on a GPU machine"
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
"$PYTHON" -c "import diffusers" 2>/dev/null || "$PYTHON" -m pip install --quiet "diffusers>=0.30" \
    || echo "diffusers unavailable: item 1 runs without its baseline"
# Full step counts on the GPU (no extrapolation), torch.compile with CUDA graphs (reduce-overhead);
# batching (item 2) with the shipped weights and GENSERVICE_DEVICE=cuda for the worker.
export GENSERVICE_DEVICE=cuda
timeout 470 "$PYTHON" -m bench --device cuda --only sampler,batching --out BENCHMARKS-gpu.md
# The two rows of the quality-per-evaluation table (issue 17, models/README.md) that a CPU cannot afford at
# N = 1000 (DDPM 1000 guided is ~14 core-hours here): same seeds, guidance 3, the classifier's feature space.
# Its "CPU s / image" column is GPU seconds for these rows. Results: runs/sampler-table-gpu/<row>/results.json.
timeout 240 "$PYTHON" -m training.sampler_table --n 1000 --rows ddim-100 ddpm-1000 --device cuda --batch-size 500 \
    --out runs/sampler-table-gpu || echo "sampler-table rows stopped early; what finished is in runs/sampler-table-gpu"
