#!/usr/bin/env bash
# Download the wheels the GPU check installs on the device machine into .whl/ (git-ignored).
#
# The device image has torch (CUDA), transformers, onnx, onnxruntime, scikit-image and
# tifffile, but not zarr, dask, openslide and their kin: these are downloaded here, for the
# device's Python (3.12, manylinux x86_64), at the versions installed on this machine, and
# travel with the call (carry .whl; 64 MiB in all).  Not run in CI.
#
#   bash benchmarks/gpu_wheels.sh            # then: run the device call with carry [".whl"]
#   WSI_WHEEL_PYTHON=3.11 bash benchmarks/gpu_wheels.sh   # for a device with another Python
set -euo pipefail
cd "$(cd "$(dirname "$0")" && pwd -P)/../.."  # the repository root, also when called through benchmarks/
PY_VERSION="${WSI_WHEEL_PYTHON:-3.12}"
DEST=.whl
# What the engine, its tests (shapely), the benchmark and training (albumentations) import
# and the device image lacks, with the small packages dask and zarr pin closely.  pandas,
# pytest and its plugins are in the image and stay out: a call carries 64 MiB in all, the
# training data of training/gpu_train.sh included.
PACKAGES=(
  zarr numcodecs donfig google-crc32c
  dask distributed cloudpickle fsspec partd locket toolz msgpack psutil sortedcontainers
  tblib tornado zict jinja2 markupsafe click tqdm pyyaml
  openslide-python openslide-bin shapely
  albumentations albucore simsimd stringzilla pydantic pydantic-core annotated-types
  typing-inspection
)
mkdir -p "$DEST"
pins=()
for name in "${PACKAGES[@]}"; do
  v="$(python3 -c "from importlib.metadata import version; print(version('$name'))" 2>/dev/null || true)"
  if [[ -z "$v" ]]; then
    echo "gpu_wheels: $name is not installed here; pin it by hand" >&2
    exit 1
  fi
  pins+=("$name==$v")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${pins[@]}"
du -sh "$DEST"
