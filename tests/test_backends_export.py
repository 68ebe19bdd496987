"""Every registered backend against PyTorch; onnxruntime's export cache; clear errors."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsi_infer.backends import create_backend, default_backend, list_backends
from wsi_infer.config import ModelConfig
from wsi_infer.errors import BackendUnavailableError
from wsi_infer.export import ExportReport
from wsi_infer.model import file_sha256, load_model
from wsi_infer.postprocess import logits_to_maps

CONFIG = ModelConfig(mpp=1.0, stem_channels=4)  # the tiny model's
#: what each backend needs installed to run on this machine's CPU
NEEDS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "tensorrt": ("tensorrt",),
}
GPU_ONLY = {"tensorrt"}
HAS_CUDA = torch.cuda.is_available()


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def cache_dir(request: pytest.FixtureRequest, onnx_cache: Path) -> Path:
    """The session's cache, holding the session's one float32 export where onnxruntime is
    installed (every onnxruntime backend here runs that file)."""
    if _installed(*NEEDS["onnxruntime"]):
        request.getfixturevalue("onnx_fp32")
    return onnx_cache


@pytest.fixture(scope="module")
def batch(he_tiles: np.ndarray) -> np.ndarray:
    """Two uint8 RGB 256 px tiles of real H&E."""
    return he_tiles[:2]


def _reference(checkpoint: Path, tiles: np.ndarray) -> np.ndarray:
    """The engine's compact maps from the plain network's float32 logits, on the host."""
    mean, std = np.asarray(CONFIG.mean, np.float32), np.asarray(CONFIG.std, np.float32)
    x = np.ascontiguousarray(((tiles.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2))
    with torch.inference_mode():
        logits = load_model(checkpoint).module(torch.from_numpy(x)).numpy()
    return logits_to_maps(logits)


def _steps(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Largest probability difference (1/255 steps) and share of pixels whose class differs."""
    diff = np.abs(a[..., [0, 1, 3]].astype(int) - b[..., [0, 1, 3]])
    return int(diff.max()), float((a[..., 2] != b[..., 2]).mean())


def _options(name: str, cache_dir: Path) -> dict[str, Any]:
    return {"cache_dir": cache_dir} if name in ("onnxruntime", "tensorrt") else {}


@pytest.mark.parametrize("name", list_backends())
def test_backend_matches_torch_or_says_how_to_install(
    name: str, checkpoint: Path, cache_dir: Path, batch: np.ndarray
) -> None:
    must_run = _installed(*NEEDS.get(name, ())) and name not in GPU_ONLY
    try:
        backend = create_backend(
            name, checkpoint, device="cpu", threads=2, **_options(name, cache_dir)
        )
    except BackendUnavailableError as exc:
        assert not must_run, f"{name} is installed but refused: {exc}"
        assert "pip install" in str(exc) or "GPU" in str(exc)
        return
    assert must_run or name not in NEEDS, f"{name} ran although its package or GPU is absent"
    assert backend.name == name and backend.device == "cpu"
    assert backend.config == CONFIG
    # the identity of what runs: the weights for torch, the exported file for onnxruntime
    runs = getattr(backend, "onnx_path", checkpoint / "model.safetensors")
    assert backend.model_sha256 == file_sha256(runs)
    out = backend(batch)
    assert out.dtype == np.uint8 and out.shape == (2, 256, 256, 4)
    step, flips = _steps(out, _reference(checkpoint, batch))
    assert step <= 1 and flips <= 1e-3
    # a different batch size through the same backend
    assert backend(batch[:1]).shape == (1, 256, 256, 4)


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(BackendUnavailableError, match=r"unknown backend 'nope'.*onnxruntime"):
        create_backend("nope")


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")
@pytest.mark.parametrize("name", list_backends())
def test_cuda_without_gpu_is_unavailable(name: str, checkpoint: Path, cache_dir: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install|CUDA"):
        create_backend(name, checkpoint, device="cuda", **_options(name, cache_dir))


def test_onnxruntime_rejects_unknown_device(checkpoint: Path, cache_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(BackendUnavailableError, match="unknown device 'tpu'"):
        create_backend("onnxruntime", checkpoint, device="tpu", cache_dir=cache_dir)


@pytest.mark.skipif(not _installed(*NEEDS["onnxruntime"]), reason="onnxruntime extra absent")
def test_onnxruntime_uses_the_cached_export_and_the_file_alone_runs(
    checkpoint: Path, cache_dir: Path, onnx_fp32: ExportReport, batch: np.ndarray, tmp_path: Path
) -> None:
    cached = onnx_fp32.onnx_path
    stamp = cached.stat().st_mtime_ns
    first = create_backend("onnxruntime", checkpoint, cache_dir=cache_dir)
    assert first.onnx_path == cached and cached.parent == cache_dir / "onnx"  # type: ignore[attr-defined]
    assert cached.name.startswith(file_sha256(checkpoint / "model.safetensors")[:20])
    assert cached.stat().st_mtime_ns == stamp  # found in the cache, not exported again
    assert [p.name for p in (cache_dir / "onnx").glob("*fp32*.onnx")] == [cached.name]

    alone = tmp_path / "elsewhere" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(cached, alone)
    from_file = create_backend("onnxruntime", alone)
    assert from_file.config == CONFIG and from_file.model_source == str(alone)
    assert from_file.model_sha256 == file_sha256(alone) == first.model_sha256
    assert from_file.source_sha256 == file_sha256(checkpoint / "model.safetensors")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(from_file(batch), first(batch))


@pytest.mark.slow
@pytest.mark.skipif(not _installed(*NEEDS["onnxruntime"]), reason="onnxruntime extra absent")
def test_onnxruntime_exports_into_an_empty_cache_once(checkpoint: Path, tmp_path: Path) -> None:
    first = create_backend("onnxruntime", checkpoint, cache_dir=tmp_path)
    cached = first.onnx_path  # type: ignore[attr-defined]
    assert cached.parent == tmp_path / "onnx"
    assert cached.name.startswith(file_sha256(checkpoint / "model.safetensors")[:20])
    stamp = cached.stat().st_mtime_ns
    again = create_backend("onnxruntime", checkpoint, cache_dir=tmp_path)
    assert again.onnx_path == cached and cached.stat().st_mtime_ns == stamp  # type: ignore[attr-defined]
    assert list((tmp_path / "onnx").glob("*.onnx")) == [cached]


@pytest.mark.skipif(not _installed(*NEEDS["onnxruntime"]), reason="onnxruntime extra absent")
def test_onnxruntime_rejects_bad_batches(checkpoint: Path, cache_dir: Path) -> None:
    backend = create_backend("onnxruntime", checkpoint, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\)"):
        backend(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\)"):
        backend(np.zeros((1, 64, 64, 4), np.uint8))


def test_default_backend_is_registered_and_prefers_onnxruntime_on_cpu() -> None:
    choice = default_backend("cpu")
    assert choice in list_backends()
    assert choice == ("onnxruntime" if _installed(*NEEDS["onnxruntime"]) else "torch")
    assert default_backend("cuda") == "torch"
    with pytest.raises(BackendUnavailableError, match="unknown device"):
        default_backend("gpu0")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["onnxruntime", "tensorrt"])
def test_gpu_backend_matches_torch_fp16(
    name: str, checkpoint: Path, cache_dir: Path, batch: np.ndarray
) -> None:
    try:
        backend = create_backend(name, checkpoint, device="cuda", cache_dir=cache_dir)
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} not usable here: {exc}")
    assert backend.device.startswith("cuda")
    ref = _reference(checkpoint, batch)
    for _ in range(2):  # the second call reuses the bound device buffers
        out = backend(batch)
        assert out.shape == ref.shape and out.dtype == np.uint8
        step, flips = _steps(out, ref)
        assert step <= 8 and flips <= 5e-2  # float16, as the export's fp16 bound
