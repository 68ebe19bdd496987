"""Shared fixtures: the project's real data, small models and slides written with tifffile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
#: The data shared beside the repository (real slides, bad files, labelled nuclei).
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The project's shared data (real slides, broken files, labelled nuclei), which a clone of
    the repository does not have: tests that need it are skipped, with the reason, without it."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found beside the repository ({SHARED}): real slides needed")
    return SHARED


#: Patches in the PanNuke-layout fold the training tests share.
PANNUKE_PATCHES = 8


@pytest.fixture(scope="session")
def pannuke_root(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fold 3 in PanNuke's own layout, written by the shared data's script from CoNSeP test."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("pannuke")
    script = shared / "make_pannuke_fold.py"
    subprocess.run(
        [
            sys.executable,
            str(script),
            str(shared / "nuclei" / "consep" / "test"),
            str(out),
            "--fold",
            "3",
            "--limit",
            str(PANNUKE_PATCHES),
        ],
        check=True,
        capture_output=True,
    )
    return out


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
def he_mosaic(shared: Path) -> NDArray[np.uint8]:
    """Real H&E at 40x: 16 CoNSeP test patches tiled 4 x 4 (1024 x 1024)."""
    from PIL import Image

    folder = shared / "nuclei" / "consep" / "test" / "images"
    names = sorted(folder.iterdir())[:16]
    rows = []
    for r in range(4):
        row = [np.asarray(Image.open(names[4 * r + c]).convert("RGB")) for c in range(4)]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


@pytest.fixture(scope="session")
def cmu_crop(shared: Path, make_slide: Callable[..., Path]) -> Callable[..., Path]:
    """Crops of the real CMU-1-Small-Region slide, written as tiled TIFFs at 0.25 µm/px."""
    import openslide

    with openslide.OpenSlide(str(shared / "slides" / "CMU-1-Small-Region.svs")) as osr:
        region = np.asarray(osr.read_region((700, 1100), 0, (1024, 1024)).convert("RGB"))

    def crop(name: str, size: int = 512, *, flip: bool = False, **kw: object) -> Path:
        image = region[:size, :size]
        if flip:
            image = image[::-1, ::-1]
        return make_slide(name, np.ascontiguousarray(image), mpp=0.25, **kw)

    return crop
