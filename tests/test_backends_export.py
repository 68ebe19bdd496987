"""Every registered backend against PyTorch; onnxruntime's export cache; clear errors."""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsi_infer.backends import create_backend, default_backend, list_backends
from wsi_infer.config import ModelConfig
from wsi_infer.errors import BackendUnavailableError
from wsi_infer.model import NucleusSegFormer, file_sha256, load_model, save_checkpoint
from wsi_infer.postprocess import logits_to_maps

CONFIG = ModelConfig(stem_channels=4)
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


def _slide() -> Path | None:
    for candidate in (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "data"
        / "slides"
        / "CMU-1-Small-Region.svs",
        Path(__file__).resolve().parents[1] / "wsi_infer" / "data" / "CMU-1-Small-Region.svs",
    ):
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(NucleusSegFormer(CONFIG), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    """Two uint8 RGB 256 px tiles: real H&E when the slide is at hand, else fixed noise."""
    slide = _slide()
    if slide is not None and _installed("openslide"):
        import openslide

        with openslide.OpenSlide(str(slide)) as osr:
            rgb = np.stack(
                [
                    np.asarray(osr.read_region((900 + 256 * k, 1300), 0, (256, 256)).convert("RGB"))
                    for k in range(2)
                ]
            )
    else:
        rgb = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), np.uint8)
    return rgb


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
def test_onnxruntime_export_is_cached_and_the_file_alone_runs(
    checkpoint: Path, cache_dir: Path, batch: np.ndarray, tmp_path: Path
) -> None:
    first = create_backend("onnxruntime", checkpoint, cache_dir=cache_dir)
    cached = first.onnx_path  # type: ignore[attr-defined]
    assert cached.parent == cache_dir / "onnx"
    assert cached.name.startswith(file_sha256(checkpoint / "model.safetensors")[:20])
    stamp = cached.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = create_backend("onnxruntime", checkpoint, cache_dir=cache_dir)
    assert time.perf_counter() - t0 < 5  # no second export
    assert again.onnx_path == cached and cached.stat().st_mtime_ns == stamp  # type: ignore[attr-defined]
    assert len(list((cache_dir / "onnx").glob("*.onnx"))) == 1

    alone = tmp_path / "elsewhere" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(cached, alone)
    from_file = create_backend("onnxruntime", alone)
    assert from_file.config == CONFIG and from_file.model_source == str(alone)
    assert from_file.model_sha256 == file_sha256(alone) == first.model_sha256
    assert from_file.source_sha256 == file_sha256(checkpoint / "model.safetensors")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(from_file(batch), first(batch))


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
