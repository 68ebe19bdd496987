#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU.
#
# 1. installs the carried wheels (.whl/, made by benchmarks/gpu_wheels.sh) into a private
#    site folder: the device image has torch (CUDA), transformers, onnx, onnxruntime,
#    scikit-image and tifffile, not zarr, dask or openslide;
# 2. records the environment (GPU, driver, torch, CUDA, onnxruntime providers);
# 3. runs the gpu-marked tests (pytest -m gpu);
# 4. writes a large slide mirror-tiled from the bundled sample (benchmarks/tiled_slide.py);
# 5. runs wsi-infer-bench on it with torch on CUDA (fp16 autocast, tiles to maps on the GPU),
#    and with onnxruntime's CUDA provider where onnxruntime-gpu is installed, sampling GPU
#    utilisation with nvidia-smi;
# 6. writes everything as JSON into $OUT (gpu-check.json sums it up).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                # here, on the CPU: all but CUDA
#   WSI_GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh  # the same
#
# Settings (environment): WSI_GPU_CHECK_SIZE (slide edge, px; 24576), WSI_GPU_CHECK_BATCH
# (tiles per model call; 64), WSI_GPU_CHECK_THREADS (reading and segmentation threads;
# cores - 2), WSI_GPU_CHECK_PROCESSES (a second torch run on a local dask cluster of this many
# processes, each with its own model and THREADS / PROCESSES threads, past one process' Python
# lock; 4 on a GPU, 0: none, the dry run's default), WSI_GPU_CHECK_SITE (where wheels are
# installed; /tmp/site).
set -euo pipefail
cd "$(cd "$(dirname "$0")" && pwd -P)/../.."  # the repository root, also when called through benchmarks/
ROOT="$PWD"

DRY="${WSI_GPU_CHECK_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CORES="$(nproc)"
if [[ "$DRY" == 1 ]]; then
  DEVICE=cpu SIZE="${WSI_GPU_CHECK_SIZE:-1536}" BATCH="${WSI_GPU_CHECK_BATCH:-2}"
  THREADS="${WSI_GPU_CHECK_THREADS:-2}" STAGE_S=0.5 PROCS="${WSI_GPU_CHECK_PROCESSES:-0}"
else
  DEVICE=cuda SIZE="${WSI_GPU_CHECK_SIZE:-24576}" BATCH="${WSI_GPU_CHECK_BATCH:-64}"
  THREADS="${WSI_GPU_CHECK_THREADS:-$(( CORES > 4 ? CORES - 2 : 2 ))}" STAGE_S=8
  PROCS="${WSI_GPU_CHECK_PROCESSES:-4}"
fi
log() { echo "gpu_check: $*" >&2; }

# 1. wheels
SITE="${WSI_GPU_CHECK_SITE:-/tmp/site}"
shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
  printf '%s\n' "${wheels[@]##*/}" > "$OUT/wheels.txt"
  if [[ "$DRY" == 1 ]]; then
    log "dry run: ${#wheels[@]} wheels listed in $OUT/wheels.txt, not installed"
  else
    python3 -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    log "installed ${#wheels[@]} wheels into $SITE"
  fi
else
  log "no .whl/ wheels: using the packages installed here"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export WSI_GPU_CHECK_DEVICE="$DEVICE"

# 2. environment
python3 - "$OUT/environment.json" <<'PY'
import importlib, json, os, platform, subprocess, sys
info = {"python": platform.python_version(), "dry_run": os.environ["WSI_GPU_CHECK_DEVICE"] == "cpu"}
mods = {}
for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "zarr", "dask",
             "distributed", "openslide", "tifffile", "skimage", "scipy", "numpy", "pandas",
             "matplotlib", "tensorrt"):
    try:
        mods[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as exc:  # a missing or broken package is a fact to report
        mods[name] = f"unavailable: {type(exc).__name__}: {exc}"
info["modules"] = mods
try:
    import torch
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["torch_cuda"] = torch.version.cuda
except ImportError:
    info["cuda"] = False
try:
    import onnxruntime
    info["onnxruntime_providers"] = onnxruntime.get_available_providers()
except ImportError:
    info["onnxruntime_providers"] = []
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    info["nvidia_smi"] = smi.stdout.strip()
except (OSError, subprocess.SubprocessError) as exc:
    info["nvidia_smi"] = f"unavailable: {exc}"
json.dump(info, open(sys.argv[1], "w"), indent=2)
if not info["dry_run"] and not info["cuda"]:
    sys.exit("gpu_check: torch sees no CUDA GPU (see environment.json); use --dry-run on a CPU")
PY

# 3. gpu-marked tests (they skip without CUDA: the dry run checks they are collected and run)
set +e
python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="" --junitxml="$OUT/gpu-tests.xml" \
  tests > "$OUT/gpu-tests.txt" 2>&1
TESTS_RC=$?
set -e
tail -n 3 "$OUT/gpu-tests.txt" >&2

# 4. the slide
log "writing a ${SIZE} px slide from the bundled sample"
python3 -m wsi_infer.benchmarks.tiled_slide "$WORK/slide.tif" --size "$SIZE" > /dev/null

# 5. the benchmark, with GPU utilisation sampled
SAMPLER=""
if [[ "$DRY" != 1 ]] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 200 > "$OUT/gpu-util.csv" &
  SAMPLER=$!
fi
bench() {  # run name: backend, threads (per process), processes
  local name="$1" backend="${1%%-*}" threads="$THREADS" procs=0
  if [[ "$name" == *-processes ]]; then
    procs="$PROCS" threads=$(( THREADS / PROCS > 1 ? THREADS / PROCS : 1 ))
  fi
  echo "benchmark $name: $backend on $DEVICE, batch $BATCH, $threads threads x $(( procs > 1 ? procs : 1 )) process(es)"
  python3 -m wsi_infer.benchmarks.bench --slide "$WORK/slide.tif" --model default --backend "$backend" \
    --device "$DEVICE" --tile-size 512 --batch-size "$BATCH" --workers "$threads" --processes "$procs" \
    --stage-seconds "$STAGE_S" --out-dir "$OUT" --name "gpu-$name" --no-plot
}
backends=(torch)
if (( PROCS > 0 )); then
  backends+=(torch-processes)
fi
if [[ "$DRY" != 1 ]] && python3 -c "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())" 2> /dev/null; then
  backends+=(onnxruntime)
fi
for b in "${backends[@]}"; do
  log "benchmark $b (see $OUT/gpu-$b.log)"
  date -u +%s.%N > "$OUT/gpu-$b.window"
  bench "$b" > "$OUT/gpu-$b.log" 2>&1 || { log "benchmark $b failed: see $OUT/gpu-$b.log"; tail -n 20 "$OUT/gpu-$b.log" >&2; }
  date -u +%s.%N >> "$OUT/gpu-$b.window"
done
if [[ -n "$SAMPLER" ]]; then kill "$SAMPLER"; wait "$SAMPLER" 2> /dev/null || true; fi

# 6. summary
python3 - "$OUT" "$TESTS_RC" "${backends[@]}" <<'PY'
import csv, json, sys
from datetime import datetime
from pathlib import Path
out, tests_rc, backends = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
samples = []
util = out / "gpu-util.csv"
if util.is_file():
    for row in csv.reader(util.open()):
        try:
            t = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((t, float(row[1]), float(row[2])))
        except (ValueError, IndexError):
            continue
summary = {"environment": json.loads((out / "environment.json").read_text()),
           "gpu_tests_exit_status": tests_rc, "runs": {}}
for b in backends:
    res = out / f"gpu-{b}.json"
    if not res.is_file():
        summary["runs"][b] = {"error": f"no result; see gpu-{b}.log"}
        continue
    run = json.loads(res.read_text())["runs"][0]
    t0, t1 = (float(v) for v in (out / f"gpu-{b}.window").read_text().split())
    inside = [s for s in samples if t0 <= s[0] <= t1]
    summary["runs"][b] = {
        "tiles": run["tiles"],
        "end_to_end_tiles_per_s": run["end_to_end"]["tiles_per_s"],
        "model_only_tiles_per_s": run["stages"]["model"]["tiles_per_s"],
        "efficiency": run["efficiency"],
        "model_busy_share": run["stages_busy"]["model_busy_share"],
        "bound": run["bottleneck"],
        "busy_s": run["stages_busy"]["busy_s"],
        "read_tiles_per_s_one_thread": run["stages"]["read"]["tiles_per_s"],
        "postprocess_mpx_per_cpu_s": run["stages"]["postprocess"]["mpx_per_cpu_s"],
        "peak_rss_mb": run["end_to_end"]["peak_rss_mb"],
        "gpu_util_mean_pct": sum(s[1] for s in inside) / len(inside) if inside else None,
        "gpu_util_max_pct": max((s[1] for s in inside), default=None),
        "gpu_mem_max_mb": max((s[2] for s in inside), default=None),
        "gpu_util_note": "nvidia-smi samples every 200 ms over the whole benchmark (run, "
                         "model-only loop and stage measurements)",
    }
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary["runs"], indent=2))
PY
log "results in $OUT"
exit "$TESTS_RC"
