"""Export wsi-infer models to ONNX and TensorRT, with parity proven against PyTorch.

* :func:`export_onnx`: checkpoint -> ``.onnx`` carrying its own model contract,
  checked with ``onnx.checker`` and against PyTorch on real or random tiles;
* :func:`build_tensorrt_engine`: ``.onnx`` -> TensorRT engine, cached per
  (ONNX sha256, GPU, TensorRT version);
* :func:`read_onnx_contract`: the :class:`~wsi_infer.config.ModelConfig` of an
  exported file.

``onnx``, ``onnxscript`` and ``onnxruntime`` are imported when used; so is
``tensorrt``, which raises :class:`~wsi_infer.errors.BackendUnavailableError`
with an install hint when missing.
"""

from __future__ import annotations

from wsi_infer.export.cache import default_cache_dir
from wsi_infer.export.onnx_export import (
    DEFAULT_OPSET,
    META_CONFIG,
    META_PRECISION,
    META_SOURCE_SHA256,
    TOLERANCES,
    ExportReport,
    OnnxContract,
    ParityError,
    cached_onnx,
    convert_to_fp16,
    export_onnx,
    read_onnx_contract,
)
from wsi_infer.export.tensorrt_build import EngineInfo, build_tensorrt_engine, read_engine_info

__all__ = [
    "DEFAULT_OPSET",
    "META_CONFIG",
    "META_PRECISION",
    "META_SOURCE_SHA256",
    "TOLERANCES",
    "EngineInfo",
    "ExportReport",
    "OnnxContract",
    "ParityError",
    "build_tensorrt_engine",
    "cached_onnx",
    "convert_to_fp16",
    "default_cache_dir",
    "export_onnx",
    "read_engine_info",
    "read_onnx_contract",
]
