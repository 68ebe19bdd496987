#!/usr/bin/env bash
# Train on a GPU machine in one call: several runs side by side on one GPU, results packed
# into $OUT.  The device image has torch (CUDA), transformers and safetensors; the wheels of
# benchmarks/gpu_wheels.sh add the rest (albumentations); the training data travels with the
# call (64 MiB in all), packed here first:
#
#   python -m wsi_infer.training.travel DATA/nuclei/consep/train DATA/nuclei/monuseg/train \
#       DATA/nuclei/tnbc DATA/nuclei/cpm15 --out .gpu-data        # .gpu-data is git-ignored
#   OUT=/some/dir bash training/gpu_train.sh                       # on the GPU machine
#   WSI_TRAIN_DRY_RUN=1 OUT=/tmp/t bash training/gpu_train.sh      # here, a few CPU steps
#
# Each run starts from WSI_TRAIN_INIT (a checkpoint; default: the bundled model) with its own
# peak learning rate, on the same validation split as the bundled model (--val-split 0.12,
# seed 0), and ends on time (cosine schedule over WSI_TRAIN_MINUTES).  Post-processing is
# tuned afterwards, here, with wsi-infer-tune: on the CPU it does not hold the GPU.  Each
# run's best checkpoint, metrics and log come back as $OUT/NAME.tgz.
#
# Settings (environment): WSI_TRAIN_MINUTES (5.5), WSI_TRAIN_LRS (peak learning rates, one run
# each; "5e-4 1.5e-3"), WSI_TRAIN_INIT (wsi_infer/models/default), WSI_TRAIN_DATA
# (.gpu-data), WSI_TRAIN_BATCH (crops of 256 px per step; 32), WSI_TRAIN_WORKERS (data
# loader processes per run; cores / runs - 1), WSI_TRAIN_VAL_EVERY (epochs; 8),
# WSI_TRAIN_VERSION (the version written into the checkpoints' config.json; 1).
set -euo pipefail
cd "$(cd "$(dirname "$0")" && pwd -P)/../.."  # the repository root, also via training/
ROOT="$PWD"
OUT="${OUT:-$ROOT/gpu-train-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log() { echo "gpu_train: $*" >&2; }

DATA="${WSI_TRAIN_DATA:-.gpu-data}"
INIT="${WSI_TRAIN_INIT:-wsi_infer/models/default}"
read -r -a LRS <<< "${WSI_TRAIN_LRS:-5e-4 1.5e-3}"
CORES="$(nproc)"
WORKERS="${WSI_TRAIN_WORKERS:-$(( CORES / ${#LRS[@]} > 2 ? CORES / ${#LRS[@]} - 1 : 1 ))}"
BATCH="${WSI_TRAIN_BATCH:-32}"
VAL_EVERY="${WSI_TRAIN_VAL_EVERY:-8}"
MINUTES="${WSI_TRAIN_MINUTES:-5.5}"
VERSION="${WSI_TRAIN_VERSION:-1}"
EXTRA=()
if [[ "${WSI_TRAIN_DRY_RUN:-0}" == 1 ]]; then
  EXTRA=(--max-steps 2 --val-limit 2)
  BATCH=2 VAL_EVERY=1 WORKERS=1
fi
data_args=()
for d in consep/train monuseg/train tnbc cpm15; do
  [[ -f "$DATA/$d/labels.npz" ]] && data_args+=(--data "$DATA/$d")
done
if (( ${#data_args[@]} == 0 )); then
  log "no training folders under $DATA (see the header of this script)"
  exit 2
fi
# Wheels (benchmarks/gpu_wheels.sh): the image lacks albumentations and its kin.
shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )) && [[ "${WSI_TRAIN_DRY_RUN:-0}" != 1 ]]; then
  SITE="${WSI_TRAIN_SITE:-/tmp/site}"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
    "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# Loader processes hand batches over through /dev/shm (about 2 x 45 MB in flight each at
# batch 32): where a container keeps it small, use fewer of them rather than crash.
shm_mb="$(df -Pm /dev/shm 2> /dev/null | awk 'NR == 2 {print $4}')"
shm_mb="${shm_mb:-0}"
fit=$(( shm_mb / 2 / (2 * 45 * BATCH / 32 + 1) / ${#LRS[@]} ))
if (( fit < WORKERS )); then
  log "/dev/shm has ${shm_mb} MB free: $fit loader processes per run instead of $WORKERS"
  WORKERS=$fit
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - "$OUT/environment.json" <<'PY'
import json, sys
import torch, transformers
info = {"torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available()}
if info["cuda"]:
    info["gpu"] = torch.cuda.get_device_name(0)
json.dump(info, open(sys.argv[1], "w"), indent=2)
PY
log "$(tr -d '\n ' < "$OUT/environment.json")"
log "runs with peak lr ${LRS[*]}: ${MINUTES} min, batch $BATCH, $WORKERS loader processes each"

# wsi-infer-train without an installed package (the device has the tree on PYTHONPATH)
TRAIN="from wsi_infer.training.cli import train_main; raise SystemExit(train_main())"
pids=()
for lr in "${LRS[@]}"; do
  python3 -c "$TRAIN" --init "$INIT" --val-split 0.12 --seed 0 "${data_args[@]}" \
    --lr "$lr" --crop 256 --crop 512 --batch-size "$BATCH" --workers "$WORKERS" --threads 2 \
    --time-budget "$MINUTES" --val-every "$VAL_EVERY" --tversky-alpha 0.5 --tversky-beta 0.5 \
    --model-version "$VERSION" --no-tune --out "$WORK/lr$lr" "${EXTRA[@]}" > "$WORK/lr$lr.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done

for lr in "${LRS[@]}"; do
  run="$WORK/lr$lr"
  mkdir -p "$run"
  mv "$run.log" "$run/train.log"
  files=()
  for f in best metrics.jsonl settings.json result.json train.log curves.png; do
    [[ -e "$run/$f" ]] && files+=("$f")
  done
  tar czf "$OUT/lr$lr.tgz" -C "$run" "${files[@]}"
  log "lr$lr: $(tail -n 1 "$run/train.log")"
done
exit "$status"
