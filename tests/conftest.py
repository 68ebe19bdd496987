"""Shared fixtures: the test data (tests/data, the bundled slide and slides written with
tifffile), the optional shared data folder, a small model and its ONNX exports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from numpy.typing import NDArray
from testdata import CMU_SLIDE, build_data_dir, cmu_region, write_pannuke_fold

if TYPE_CHECKING:
    from wsi_infer.export import ExportReport

REPO = Path(__file__).resolve().parents[1]
#: The optional data shared beside the repository (more real slides, the original broken
#: files, all labelled nuclei): not part of a clone.
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test data every clone has, laid out as the shared folder: ``slides/`` (the bundled
    CMU slide, the TMA core, a pyramid without mpp), ``edge/`` and ``bad/`` (written with
    tifffile) and ``nuclei/consep/test`` (64 labelled CoNSeP patches)."""
    return build_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The project's optional shared data, which a clone of the repository does not have:
    tests that need what only it holds are skipped, with the reason, without it."""
    if not SHARED.is_dir():
        pytest.skip("optional shared data absent (shared/data beside the repository)")
    return SHARED


#: Patches in the PanNuke-layout fold the training tests share.
PANNUKE_PATCHES = 8


@pytest.fixture(scope="session")
def pannuke_root(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fold 3 in PanNuke's own layout, written from the CoNSeP test patches."""
    out = tmp_path_factory.mktemp("pannuke")
    source = data / "nuclei" / "consep" / "test"
    return write_pannuke_fold(source, out, fold=3, limit=PANNUKE_PATCHES)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-initialised checkpoint at 1.0 mpp (fast on CPU)."""
    import torch

    from wsi_infer.config import ModelConfig
    from wsi_infer.model import save_checkpoint
    from wsi_infer.registry import create_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    save_checkpoint(create_model(ModelConfig(mpp=1.0, stem_channels=4)), out)
    return out


def write_slide(
    path: Path, image: NDArray[np.uint8], mpp: float | None, *, tile: int = 256, levels: int = 1
) -> Path:
    """Write a tiled, JPEG-compressed pyramidal TIFF that openslide reads as a generic slide."""
    import tifffile

    kwargs: dict[str, object] = {"tile": (tile, tile), "compression": "jpeg", "photometric": "rgb"}
    if mpp is not None:
        kwargs["resolution"] = (1e4 / mpp, 1e4 / mpp)
        kwargs["resolutionunit"] = "CENTIMETER"
    with tifffile.TiffWriter(path) as tif:
        level = image
        for k in range(levels):
            tif.write(level, subfiletype=0 if k == 0 else 1, **kwargs)  # type: ignore[arg-type]
            level = level[::2, ::2]
            if min(level.shape[:2]) < tile:
                break
    return path


@pytest.fixture(scope="session")
def make_slide(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    root = tmp_path_factory.mktemp("slides")

    def make(name: str, image: NDArray[np.uint8], mpp: float | None = 1.0, **kw: object) -> Path:
        return write_slide(root / name, image, mpp, **kw)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def he_mosaic(data: Path) -> NDArray[np.uint8]:
    """Real H&E at 40x: 16 CoNSeP test patches tiled 4 x 4 (1024 x 1024)."""
    from PIL import Image

    folder = data / "nuclei" / "consep" / "test" / "images"
    names = sorted(folder.iterdir())[:16]
    rows = []
    for r in range(4):
        row = [np.asarray(Image.open(names[4 * r + c]).convert("RGB")) for c in range(4)]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


@pytest.fixture(scope="session")
def cmu_crop(make_slide: Callable[..., Path]) -> Callable[..., Path]:
    """Crops of the real CMU-1-Small-Region slide, written as tiled TIFFs at 0.25 µm/px."""
    region = cmu_region(700, 1100, 1024, 1024)

    def crop(name: str, size: int = 512, *, flip: bool = False, **kw: object) -> Path:
        image = region[:size, :size]
        if flip:
            image = image[::-1, ::-1]
        return make_slide(name, np.ascontiguousarray(image), mpp=0.25, **kw)

    return crop


# ---------------------------------------------------------------- ONNX: one export per precision


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wsi-infer cache directory the ONNX tests share (``<cache>/onnx/``)."""
    return tmp_path_factory.mktemp("wsi-infer-cache")


@pytest.fixture(scope="session")
def he_tiles() -> NDArray[np.uint8]:
    """Three real H&E tiles of the bundled slide, uint8 RGB (3, 256, 256, 3)."""
    pytest.importorskip("openslide")
    from wsi_infer.export.cli import read_slide_tiles

    tiles = read_slide_tiles(CMU_SLIDE, 256, 3)
    assert tiles.shape == (3, 256, 256, 3) and tiles.dtype == np.uint8
    assert 60 < tiles.mean() < 240 and tiles.std() > 10  # tissue, not blank glass
    return tiles


def _export_into_cache(
    model: Path, cache: Path, tiles: NDArray[np.uint8], fp16: bool
) -> ExportReport:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason="the onnx extra is not installed")
    from wsi_infer.export import export_onnx
    from wsi_infer.export.onnx_export import cached_onnx_path

    path = cached_onnx_path(model, fp16=fp16, cache_dir=cache)
    return export_onnx(model, path, fp16=fp16, tiles=tiles)


@pytest.fixture(scope="session")
def onnx_fp32(tiny_model: Path, onnx_cache: Path, he_tiles: NDArray[np.uint8]) -> ExportReport:
    """The tiny model exported once (float32, parity checked on real tiles): its
    ``ExportReport``.  The file is where the onnxruntime backend looks for it in ``onnx_cache``."""
    return _export_into_cache(tiny_model, onnx_cache, he_tiles, fp16=False)


@pytest.fixture(scope="session")
def onnx_fp16(tiny_model: Path, onnx_cache: Path, he_tiles: NDArray[np.uint8]) -> ExportReport:
    """As ``onnx_fp32``, in float16."""
    return _export_into_cache(tiny_model, onnx_cache, he_tiles, fp16=True)
