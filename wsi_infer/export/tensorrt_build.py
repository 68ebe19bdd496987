"""Build TensorRT engines from exported ONNX files, cached per (ONNX, GPU, TensorRT version).

A serialized engine only runs on the GPU model and TensorRT version that
built it, and carries none of the ONNX metadata.  So each engine gets a
sidecar ``<engine>.json`` with the model contract, the ONNX file's sha256, the
GPU, the TensorRT version and the optimisation profile; the ``tensorrt``
backend reads it and refuses an engine built elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from wsi_infer.errors import BackendUnavailableError, CheckpointError
from wsi_infer.export.cache import resolve_cache_dir, slug
from wsi_infer.export.onnx_export import INPUT_NAME, read_onnx_contract
from wsi_infer.files import atomic_write, file_sha256

__all__ = [
    "TENSORRT_HINT",
    "EngineInfo",
    "build_tensorrt_engine",
    "gpu_name",
    "import_tensorrt",
    "profile_for",
    "profile_shapes",
    "read_engine_info",
]

logger = logging.getLogger(__name__)

TENSORRT_HINT = (
    "pip install 'wsi-infer[gpu]' (tensorrt, onnxruntime-gpu) on a machine with an NVIDIA GPU"
)
SIDECAR_SUFFIX = ".json"


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or :class:`BackendUnavailableError` with an install hint."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the tensorrt package is not installed ({exc}); {TENSORRT_HINT}"
        ) from exc
    except OSError as exc:  # the wheel is there, but libnvinfer / the CUDA driver is not
        raise BackendUnavailableError(
            f"tensorrt cannot load its libraries ({exc}); {TENSORRT_HINT}"
        ) from exc
    return tensorrt


def gpu_name(device_index: int = 0) -> str:
    """The CUDA device's marketing name ("NVIDIA H100 80GB HBM3"), or BackendUnavailableError."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(device_index))
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            result = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader", f"--id={device_index}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.debug("nvidia-smi failed: %s", exc)
        else:
            name = result.stdout.strip().splitlines()
            if name:
                return name[0].strip()
    raise BackendUnavailableError(
        f"no CUDA GPU {device_index} found; TensorRT needs an NVIDIA GPU and driver "
        f"({TENSORRT_HINT})"
    )


@dataclass(frozen=True)
class EngineInfo:
    """The sidecar of an engine file."""

    onnx_sha256: str
    gpu: str
    tensorrt_version: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int
    min_tile: int
    opt_tile: int
    max_tile: int
    config: dict[str, Any]
    source_sha256: str

    def write(self, engine_path: Path) -> None:
        sidecar = Path(str(engine_path) + SIDECAR_SUFFIX)
        sidecar.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def read_engine_info(engine_path: str | Path) -> EngineInfo:
    sidecar = Path(str(engine_path) + SIDECAR_SUFFIX)
    try:
        data = json.loads(sidecar.read_text())
        return EngineInfo(**data)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(
            f"{engine_path}: no readable {sidecar.name} beside the engine ({exc}); "
            "build engines with wsi-infer-export --tensorrt"
        ) from exc


def profile_shapes(
    profile: tuple[int, int, int, int, int, int],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The (min, opt, max) input shapes of a profile ``(min_batch, opt_batch, max_batch,
    min_tile, opt_tile, max_tile)``: uint8 RGB tiles ``(B, H, W, 3)``, as the graph takes them."""
    b0, b1, b2, t0, t1, t2 = profile
    return (b0, t0, t0, 3), (b1, t1, t1, 3), (b2, t2, t2, 3)


def profile_for(
    config_tile: int,
    *,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    tile_size: int | None = None,
    min_tile: int | None = None,
    max_tile: int | None = None,
    multiple: int = 32,
) -> tuple[int, int, int, int, int, int]:
    """The validated profile ``(min_batch, opt_batch, max_batch, min_tile, opt_tile, max_tile)``.

    Tile edges default to ``tile_size`` (itself the model config's ``config_tile`` when
    ``None``); ``tile_size`` is widened into ``min_tile..max_tile`` when given apart.  Every
    edge must be a multiple of ``multiple``: the model config's ``input_multiple``.
    """
    opt_tile = tile_size or config_tile
    lo_tile = min_tile or opt_tile
    hi_tile = max_tile or opt_tile
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch, opt_batch, max_batch}"
        )
    if not multiple <= lo_tile <= opt_tile <= hi_tile or any(
        t % multiple for t in (lo_tile, opt_tile, hi_tile)
    ):
        raise ValueError(
            f"tiles must be multiples of {multiple} (the model's input multiple) with "
            f"min <= opt <= max, got {lo_tile, opt_tile, hi_tile}"
        )
    return min_batch, opt_batch, max_batch, lo_tile, opt_tile, hi_tile


def _profile_key(*values: object) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:8]


def build_tensorrt_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    *,
    fp16: bool = True,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    tile_size: int | None = None,
    min_tile: int | None = None,
    max_tile: int | None = None,
    timing_cache: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workspace_gib: float = 4.0,
    device_index: int = 0,
    rebuild: bool = False,
) -> Path:
    """Build (or reuse) a TensorRT engine for ``onnx_path``; returns the engine's path.

    With ``engine_path`` ``None`` the engine lives in ``<cache_dir>/tensorrt/``
    under a name keyed by the ONNX file's sha256, the GPU's name, the TensorRT
    version, the precision and the optimisation profile, and is reused when it
    exists.  The profile covers batches ``min..opt..max`` and square tiles
    ``min_tile..tile_size..max_tile`` (all default to the config's tile size).
    ``timing_cache``: a file that speeds up later builds (default: beside the
    cached engines).
    """
    onnx_file = Path(onnx_path)
    contract = read_onnx_contract(onnx_file)
    profile = profile_for(
        contract.config.tile_size,
        multiple=contract.config.input_multiple,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        tile_size=tile_size,
        min_tile=min_tile,
        max_tile=max_tile,
    )
    min_batch, opt_batch, max_batch, lo_tile, opt_tile, hi_tile = profile
    trt = import_tensorrt()
    onnx_sha = file_sha256(onnx_file)
    gpu = gpu_name(device_index)
    precision = "fp16" if fp16 or contract.precision == "fp16" else "fp32"
    trt_version = str(trt.__version__)

    cache_root = resolve_cache_dir(cache_dir, "tensorrt")
    if engine_path is None:
        name = (
            f"{onnx_sha[:20]}-{slug(gpu)}-trt{slug(trt_version)}-{precision}-"
            f"{_profile_key(profile)}.engine"
        )
        out = cache_root / name
        if out.is_file() and not rebuild:
            info = read_engine_info(out)
            if (
                info.onnx_sha256 == onnx_sha
                and info.gpu == gpu
                and info.tensorrt_version == trt_version
            ):
                logger.info("using cached TensorRT engine %s", out)
                return out
    else:
        out = Path(engine_path)
        out.parent.mkdir(parents=True, exist_ok=True)
    timing_path = (
        Path(timing_cache)
        if timing_cache
        else cache_root / f"timing-{slug(gpu)}-trt{slug(trt_version)}.cache"
    )

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    if (
        hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
        and int(trt_version.split(".")[0]) < 10
    ):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"{onnx_file}: TensorRT cannot parse the ONNX model: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            logger.warning("%s has no fast fp16; building anyway", gpu)
        config.set_flag(trt.BuilderFlag.FP16)
    timing_bytes = timing_path.read_bytes() if timing_path.is_file() else b""
    cache = config.create_timing_cache(timing_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)

    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile_shapes(profile))
    config.add_optimization_profile(opt_profile)

    logger.info(
        "building TensorRT %s engine for %s on %s (batch %d..%d..%d, tiles %d..%d..%d); "
        "this takes minutes the first time",
        precision,
        onnx_file,
        gpu,
        *profile,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckpointError(
            f"{onnx_file}: TensorRT failed to build an engine (see its log above)"
        )

    with atomic_write(out, ".tmp") as tmp:
        tmp.write_bytes(memoryview(serialized))
    EngineInfo(
        onnx_sha256=onnx_sha,
        gpu=gpu,
        tensorrt_version=trt_version,
        precision=precision,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        min_tile=lo_tile,
        opt_tile=opt_tile,
        max_tile=hi_tile,
        config=contract.config.to_dict(),
        source_sha256=contract.source_sha256,
    ).write(out)
    try:
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    except OSError as exc:
        logger.warning("cannot save the TensorRT timing cache %s: %s", timing_path, exc)
    logger.info("wrote TensorRT engine %s", out)
    return out
