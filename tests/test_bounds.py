"""Bounds on what sizes work, checked before any: resolutions, tiles, previews, memory.

Every case is refused in one line with the numbers, before a store is made.  The huge
slide is a real sparse TIFF (its tiles' offsets and byte counts are 0, as libtiff
writes a sparse file): 480 KB on disk declaring 1,000,000 x 1,000,000 pixels.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke


def refused(args: tuple[str | Path, ...], out: Path, *needles: str) -> str:
    code, _, err = invoke(*args, "--out", out)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def write_sparse_tiff(path: Path, width: int, height: int, tile: int, mpp: float) -> Path:
    """A classic tiled RGB TIFF declaring ``width x height`` px with no tile stored."""
    tiles = math.ceil(width / tile) * math.ceil(height / tile)
    short, long_, rational = 3, 4, 5
    n = 14
    bps_at = 8 + 2 + 12 * n + 4
    xres_at, yres_at = bps_at + 6, bps_at + 14
    offsets_at = yres_at + 8
    counts_at = offsets_at + 4 * tiles
    entries = [
        (256, long_, 1, width),
        (257, long_, 1, height),
        (258, short, 3, bps_at),
        (259, short, 1, 1),  # no compression
        (262, short, 1, 2),  # RGB
        (277, short, 1, 3),
        (282, rational, 1, xres_at),
        (283, rational, 1, yres_at),
        (284, short, 1, 1),
        (296, short, 1, 3),  # centimetre
        (322, long_, 1, tile),
        (323, long_, 1, tile),
        (324, long_, tiles, offsets_at),
        (325, long_, tiles, counts_at),
    ]
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, n))
    for tag, kind, count, value in entries:
        if kind == short and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0)
    per_cm = round(1e4 / mpp)
    out += struct.pack("<3H", 8, 8, 8) + struct.pack("<II", per_cm, 1) * 2
    out += bytes(8 * tiles)  # every offset and byte count 0: a sparse file
    path.write_bytes(bytes(out))
    return path


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sparse") / "huge.tif"
    return write_sparse_tiff(path, 10**6, 10**6, 4096, 0.25)


@pytest.fixture(scope="module")
def crop(cmu_crop: Callable[..., Path]) -> Path:
    return cmu_crop("bounds-crop.tif", 256)


def model(tiny_model: Path) -> tuple[str | Path, ...]:
    return ("--model", tiny_model, "--backend", "torch", "-q")


@pytest.mark.parametrize(
    ("mpp", "shown"), [("1000", "--mpp 1000 µm/px"), ("0.00025", "--mpp 0.00025 µm/px")]
)
def test_mpp_from_the_command_line_is_bounded(
    crop: Path, tiny_model: Path, tmp_path: Path, mpp: str, shown: str
) -> None:
    refused(
        (crop, "--mpp", mpp, *model(tiny_model)),
        tmp_path / "r.zarr",
        str(crop),
        shown,
        "0.05..20",
    )


def test_mpp_from_metadata_is_bounded(
    make_slide: Callable[..., Path], tiny_model: Path, tmp_path: Path
) -> None:
    image = np.full((256, 256, 3), 200, np.uint8)
    fine = make_slide("too-fine.tif", image, mpp=2.5e-6)
    refused((fine, *model(tiny_model)), tmp_path / "r.zarr", str(fine), "2.5e-06 µm/px", "--mpp")


def test_non_square_pixels_are_refused_unless_mpp_is_given(
    crop: Path, tiny_model: Path, tmp_path: Path
) -> None:
    import tifffile

    from wsi_infer.reader import open_slide

    with open_slide(crop) as slide:
        image = slide.read_region(0, 0, 0, 256, 256)
    skewed = tmp_path / "skewed.tif"
    tifffile.imwrite(
        skewed,
        image,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    refused(
        (skewed, *model(tiny_model)),
        tmp_path / "r.zarr",
        str(skewed),
        "X and Y resolutions differ (0.25 vs 0.5 µm/px)",
    )
    code, _, err = invoke(
        skewed, "--out", tmp_path / "r.zarr", "--mpp", "0.25", "--tile-size", "256",
        *model(tiny_model),
    )  # fmt: skip
    assert code == 0, err


def test_a_sparse_tiff_declaring_a_million_pixels_a_side_is_refused_before_work(
    huge: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from wsi_infer.model import model_config

    assert huge.stat().st_size < 500_000
    args = (huge, "--backend", "torch", "-q")  # the bundled model, at 0.25 µm/px
    line = refused(args, tmp_path / "a.zarr", str(huge), "more than the 1000000 a run may take")
    config = model_config("default")
    step = config.tile_size - config.overlap  # the bundled model's own tiles
    n = -(-1_000_000 // step)
    assert f"{n} x {n} = {n * n} tiles of {step} px (1000000 x 1000000 px at 0.25 µm/px)" in line
    refused(
        (*args, "--no-tissue-mask"), tmp_path / "b.zarr", f"{n * n} tiles"
    )  # nothing to read first either
    # fewer, larger tiles: then the tissue preview would read the whole level 0
    refused(
        (*args, "--tile-size", "2048", "--batch-size", "1"),
        tmp_path / "c.zarr",
        "tissue preview would decode 1e+12 px from level 0 (1000000 x 1000000 px)",
        "--no-tissue-mask",
    )


@pytest.mark.parametrize("tile", ["8192", "99968"])
def test_a_batch_that_cannot_fit_in_memory_is_refused(
    crop: Path, tmp_path: Path, tile: str
) -> None:
    from wsi_infer.bounds import batch_memory_bytes, memory_limit
    from wsi_infer.model import model_config

    need, have = batch_memory_bytes(model_config("default"), int(tile), 2), memory_limit("cpu")
    if have is None or need <= have:
        pytest.skip(f"this machine has {have} bytes, enough for {need}")
    line = refused(
        (crop, "--backend", "torch", "--tile-size", tile, "--overlap", "0", "-q"),
        tmp_path / "r.zarr",
        str(crop),
        f"a batch of 2 tiles of {tile} px needs about",
        "use a smaller --tile-size or --batch-size",
    )
    assert "probably corrupt" not in line


def test_memory_estimate_grows_with_the_fourth_power_of_the_tile() -> None:
    from wsi_infer.bounds import batch_memory_bytes
    from wsi_infer.config import ModelConfig

    config = ModelConfig(stem_channels=16)
    small, large = batch_memory_bytes(config, 512, 2), batch_memory_bytes(config, 4096, 2)
    assert small < 1 << 30  # the default batch fits any machine
    # stage-1 attention of a 4096 px tile: (1024^2) x (1024^2 / 64) float32, and its softmax
    assert large > 2 * 2 * (1024**2) * (1024**2 // 64) * 4
    assert batch_memory_bytes(config, 512, 4) == 2 * small


def test_windowed_attention_needs_memory_in_proportion_to_the_tile_area() -> None:
    from wsi_infer.bounds import batch_memory_bytes
    from wsi_infer.config import ModelConfig

    config = ModelConfig(stem_channels=16, attention_window=64, tile_size=512)
    small, large = batch_memory_bytes(config, 512, 2), batch_memory_bytes(config, 4096, 2)
    assert large == 64 * small
    assert large < batch_memory_bytes(ModelConfig(stem_channels=16), 4096, 2) / 10
