#!/usr/bin/env bash
# One short GPU window (about 10 minutes of an H200) turned into better shipped weights.
#
#   bash training/gpu_session.sh                       # on the GPU machine, from the repository root
#   bash training/gpu_session.sh --rehearse            # the same script on this CPU in about two minutes
#
# In order (each step's output lands in $OUT as soon as it exists, so a run cut short by its time
# limit still brings back what it made):
#   1. decode CIFAR-10 once into $DATA_CACHE, so the two trainers and the evaluation share it;
#   2. train, side by side on the one GPU, the diffusion UNet and the EBM. The diffusion model continues
#      the standing run (training/continue_diffusion.py: the same recipe as `make train-continue`, bf16
#      autocast, channels_last, batch 256): from its full state when $STATE_DIR holds one (copy
#      ~/.cache/genservice/diffusion-standing to data/diffusion-state and carry it), else warm-started
#      from models/diffusion. The EBM (training/train_ebm_recovery.py, the served recipe, batch 128)
#      warm-starts from models/ebm when that holds a recovery-likelihood energy. The budgets shrink if decoding was
#      slow, so that training, export and evaluation end before $DEADLINE seconds; each trainer exports
#      into $WORK/models/<name> (never into models/ directly), and the diffusion run's state is packed
#      into $OUT/diffusion-state.tar.part00, 01, ... so the CPU standing run continues from it;
#   3. pack each exported model into $OUT/<name>.tar the moment its trainer ends;
#   4. evaluate both at N = 1000 with calibration rows, in the shipped classifier's feature space,
#      on the GPU (training/evaluate.py), and pack the results and grids into $OUT/eval.tar.
# Logs and sample grids go to $OUT/logs.tar.gz after every step. Back on the development machine, in
# the repository root: `tar -xf diffusion.tar` (and ebm.tar) replaces models/<name>/; `tar -xf eval.tar
# -C runs/` gives runs/eval/<name>/results.json and grid-<row>.png (copy results.json to
# models/<name>/eval.json and grid-<name>.png to models/<name>/samples-per-class.png); then update
# models/README.md. `cat diffusion-state.tar.part* | tar -x -C ~/.cache/genservice` gives the standing run its new
# state (diffusion-standing/checkpoint.pt), so `make train-continue` goes on from where the GPU stopped.
#
# Environment (defaults for the H200): PYTHON (.venv/bin/python if present, else python3), DATA (the
# CIFAR-10 archive: data/cifar10-jpeg.tar.gz, else ../shared/data/cifar10-jpeg.tar.gz — the device
# machine does not get ../shared, so carry data/cifar10-jpeg.tar.gz), DEVICE (cuda), DEADLINE (570:
# seconds from the start by which everything is packed), DIFFUSION_MINUTES (6), EBM_MINUTES (5.5),
# EVAL_RESERVE (150: seconds kept for export + evaluation), EBM_BATCH (128), EVAL_N (1000), EVAL_STEPS (100), GUIDANCE
# (3), OUT (out/gpu-session), WORK (runs/gpu-session: checkpoints, exports, logs), DATA_CACHE
# (data/cache), STATE_DIR (data/diffusion-state: the standing run's state, if carried), DIFFUSION_ARGS /
# EBM_ARGS (more trainer flags).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

if [[ "${1:-}" == "--rehearse" ]]; then
    # A CPU dry run of every step with tiny budgets: what to run before spending GPU time.
    : "${DEVICE:=cpu}" "${DIFFUSION_MINUTES:=0.4}" "${EBM_MINUTES:=0.3}" "${EVAL_N:=20}" "${EVAL_STEPS:=4}"
    : "${REFERENCE_SIZE:=200}" "${DIFFUSION_BATCH:=8}" "${EVAL_BATCH:=20}" "${OUT:=out/gpu-rehearsal}"
    : "${DIFFUSION_ARGS:=--sample-images 10 --sample-steps 2}" "${EBM_ARGS:=--sample-images 10 --chain-steps 2}"
    : "${EBM_BATCH:=8}"
    : "${DEADLINE:=1200}" "${EVAL_RESERVE:=120}" "${DIFFUSION_THREADS:=1}"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-570}
EVAL_RESERVE=${EVAL_RESERVE:-150}
DIFFUSION_MINUTES=${DIFFUSION_MINUTES:-6}
EBM_MINUTES=${EBM_MINUTES:-5.5}
DIFFUSION_BATCH=${DIFFUSION_BATCH:-256}
EBM_BATCH=${EBM_BATCH:-128}
EVAL_N=${EVAL_N:-1000}
EVAL_STEPS=${EVAL_STEPS:-100}
EVAL_BATCH=${EVAL_BATCH:-500}
GUIDANCE=${GUIDANCE:-3}
REFERENCE_SIZE=${REFERENCE_SIZE:-10000}
OUT=${OUT:-out/gpu-session}
WORK=${WORK:-runs/gpu-session}
DATA_CACHE=${DATA_CACHE:-data/cache}
STATE_DIR=${STATE_DIR:-data/diffusion-state}
read -r -a diffusion_args <<<"${DIFFUSION_ARGS:-}"
read -r -a ebm_args <<<"${EBM_ARGS:-}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z "${DATA:-}" ]]; then
    for candidate in data/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
        [[ -f "$candidate" ]] && DATA=$candidate && break
    done
fi
[[ -e "${DATA:-}" ]] || { echo "no CIFAR-10 data: set DATA (an archive or ImageFolder) or put data/cifar10-jpeg.tar.gz" >&2; exit 2; }

LOGS=$WORK/logs
rm -rf "$WORK"
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1
elapsed() { echo $(($(date +%s) - started)); }
say() { echo "[gpu-session +$(elapsed)s] $*" | tee -a "$LOGS/session.log"; }
publish() {  # tar-args... -> $OUT/<name> written whole or not at all (a kill mid-write leaves no half tar)
    local name=$1
    shift
    tar "$@" -f "$OUT/.$name.tmp" && mv "$OUT/.$name.tmp" "$OUT/$name"
}
pack_logs() {
    local grids
    grids=$(cd "$WORK" && ls -d runs/*/samples 2>/dev/null)
    # shellcheck disable=SC2086  # the grid folders are words on purpose
    publish logs.tar.gz -cz -C "$WORK" logs $grids
}
trap 'say "stopped by a signal"; pack_logs; exit 143' TERM INT

say "device=$DEVICE data=$DATA python=$PYTHON out=$OUT deadline=${DEADLINE}s"
"$PYTHON" - "$DEVICE" <<'PY' 2>&1 | tee -a "$LOGS/session.log" || { pack_logs; exit 2; }
import sys, torch
device = sys.argv[1]
print("python", sys.version.split()[0], "torch", torch.__version__)
if device.startswith("cuda"):
    assert torch.cuda.is_available(), "DEVICE=cuda but torch sees no GPU"
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
PY

# 1. decode the archive once (both splits), so the trainers and the evaluation read the cache
"$PYTHON" - "$DATA" "$DATA_CACHE" <<'PY' 2>&1 | tee -a "$LOGS/session.log" | grep -v '^decoding' || true
import sys, time
from training.data import load_image_dataset
start = time.monotonic()
for split in ("train", "test"):
    images = load_image_dataset(sys.argv[1], split, cache_dir=sys.argv[2]).images
    print(split, tuple(images.shape), f"{time.monotonic() - start:.1f} s")
PY

# 2. both trainers at once on the one device, within what is left before the deadline
budget() {  # wanted-minutes -> min(wanted, minutes left before the deadline less the evaluation's reserve)
    awk -v want="$1" -v left="$((DEADLINE - $(elapsed) - EVAL_RESERVE))" \
        'BEGIN { m = left / 60; if (m > want) m = want; if (m < 0.2) m = 0.2; printf "%.2f", m }'
}
diffusion_minutes=$(budget "$DIFFUSION_MINUTES")
ebm_minutes=$(budget "$EBM_MINUTES")
common=(--data "$DATA" --data-cache "$DATA_CACHE" --device "$DEVICE")
mkdir -p "$WORK/state/diffusion-standing"
if [[ -f "$STATE_DIR/checkpoint.pt" ]]; then
    cp "$STATE_DIR/checkpoint.pt" "$WORK/state/diffusion-standing/"  # the carried state stays as it was
    say "diffusion: continuing the standing run's state from $STATE_DIR"
fi
# no probes here (step 4 evaluates), no history, and an export whatever the score (into $WORK only)
"$PYTHON" -m training.continue_diffusion "${common[@]}" --state-dir "$WORK/state/diffusion-standing" \
    --batch-size "$DIFFUSION_BATCH" --max-minutes "$diffusion_minutes" --threads "${DIFFUSION_THREADS:-4}" \
    --probe-every-minutes 0 --history "" --no-export-if-better --checkpoint-every 5000 --sample-every 5000 \
    --export "$WORK/models/diffusion" "${diffusion_args[@]}" \
    >"$LOGS/train-diffusion.log" 2>&1 &
declare -A trainer_of=([$!]=diffusion)
# the EBM: the served recipe (recovery likelihood), warm-started from models/ebm when it holds one
ebm_start=()
if grep -q '"recipe": "recovery-likelihood"' models/ebm/config.json 2>/dev/null; then
    ebm_start=(--resume models/ebm)
fi
"$PYTHON" -m training.train_ebm_recovery "${common[@]}" "${ebm_start[@]}" --max-minutes "$ebm_minutes" \
    --batch-size "$EBM_BATCH" --overwrite-export \
    --out "$WORK/runs/ebm" --export "$WORK/models/ebm" "${ebm_args[@]}" >"$LOGS/train-ebm.log" 2>&1 &
trainer_of[$!]=ebm
say "training: diffusion $diffusion_minutes min, ebm $ebm_minutes min (pids ${!trainer_of[*]})"

# 3. pack each model as soon as its trainer ends, in the order they end (paths as in the repository)
declare -A trained=()
while ((${#trainer_of[@]})); do
    wait -n -p ended "${!trainer_of[@]}"
    rc=$?
    name=${trainer_of[$ended]}
    unset "trainer_of[$ended]"
    say "train_$name exited with $rc: $(tail -c 600 "$LOGS/train-$name.log" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 2)"
    if [[ $rc -eq 0 && -f "$WORK/models/$name/model.safetensors" ]]; then
        publish "$name.tar" -c -C "$WORK" "models/$name" && trained[$name]=1
        say "packed $OUT/$name.tar ($(du -h "$OUT/$name.tar" | cut -f1))"
    fi
    if [[ $name == diffusion && -f "$WORK/state/diffusion-standing/checkpoint.pt" ]]; then
        # weights, EMA and Adam's moments in fp32 pass the 16 MiB that a file brought back may have: in parts
        tar -c -C "$WORK/state" diffusion-standing/checkpoint.pt | split -b 15M -d - "$OUT/.diffusion-state.tar.part"
        for part in "$OUT"/.diffusion-state.tar.part*; do mv "$part" "$OUT/${part##*/.}"; done
        say "packed $OUT/diffusion-state.tar.part* ($(du -ch "$OUT"/diffusion-state.tar.part* | tail -1 | cut -f1))"
    fi
    pack_logs
done

# 4. evaluate what was trained, both at once, stopped in time to pack the results
evaluate() {  # name extra-args...
    local name=$1 seconds=$((DEADLINE - $(elapsed) - 15))
    shift
    ((seconds > 5)) || seconds=5  # `timeout 0` would mean no limit at all
    timeout -k 5 "$seconds" \
        "$PYTHON" -m training.evaluate --model "$name" --weights "$WORK/models/$name" --n "$EVAL_N" --calibrate \
        --device "$DEVICE" --batch-size "$EVAL_BATCH" --reference-size "$REFERENCE_SIZE" --data "$DATA" \
        --data-cache "$DATA_CACHE" --cache-dir "" --out "$WORK/eval/$name" "$@" >"$LOGS/eval-$name.log" 2>&1
}
eval_pids=()
if [[ -n "${trained[diffusion]:-}" ]]; then
    evaluate diffusion --steps "$EVAL_STEPS" --guidance-scale "$GUIDANCE" --untrained-steps 2 &
    eval_pids+=($!)
fi
if [[ -n "${trained[ebm]:-}" ]]; then
    evaluate ebm &
    eval_pids+=($!)
fi
eval_status=0
for pid in "${eval_pids[@]}"; do wait "$pid" || eval_status=1; done
if compgen -G "$WORK/eval/*/results.json" >/dev/null; then
    publish eval.tar -c -C "$WORK" eval
    for log in "$LOGS"/eval-*.log; do grep -A 8 '^| row' "$log" | tee -a "$LOGS/session.log"; done
fi
diffusion_ok=$([[ -n "${trained[diffusion]:-}" ]] && echo 0 || echo 1)
ebm_ok=$([[ -n "${trained[ebm]:-}" ]] && echo 0 || echo 1)
say "done: diffusion_ok=$diffusion_ok ebm_ok=$ebm_ok eval_status=$eval_status"
pack_logs
exit $((diffusion_ok || ebm_ok || eval_status))
