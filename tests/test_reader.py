"""Reading real slides, unusual ones and broken ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_infer.errors import (
    MissingMppError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
    WsiInferError,
)
from wsi_infer.reader import GridReader, open_slide, resolve_mpp, rgb_on_white
from wsi_infer.tissue import read_thumbnail

#: (file, reader, dimensions, mpp) of the test data every clone has
GEOMETRY = [
    ("slides/CMU-1-Small-Region.svs", "openslide", (2220, 2967), 0.499),
    ("slides/he-tma-core-0.5mpp.ome.tif", "tifffile", (1380, 1484), 0.50008),
    ("slides/no-mpp.tif", "openslide", (1000, 760), None),
    ("edge/boxes.tiff", "openslide", (300, 250), 352.78),
    ("edge/small.svs", "openslide", (16, 16), 0.499),
]
#: the same of files only the optional shared data holds (the originals of edge/ and bad/)
SHARED_GEOMETRY = [
    ("slides/tcga-cr-7395-01a-01-ts1.svs", "openslide", (4443, 3567), None),
    ("edge/boxes.tiff", "openslide", (300, 250), 352.78),
    ("edge/small.svs", "openslide", (16, 16), 0.499),
]
BAD = [
    ("bad/unreadable.svs", SlideReadError, "Bogus marker"),
    ("bad/unopenable.tiff", SlideReadError, "52479"),
    ("bad/not-a-tiff.svs", UnsupportedSlideError, "not a slide"),
    ("bad/no-such-file.svs", SlideNotFoundError, "no such file"),
    ("bad", SlideNotFoundError, "directory"),
]


@pytest.mark.parametrize(("name", "reader", "dims", "mpp"), GEOMETRY)
def test_real_slides_open_with_their_geometry(
    data: Path, name: str, reader: str, dims: tuple[int, int], mpp: float | None
) -> None:
    assert_geometry(data / name, reader, dims, mpp)


@pytest.mark.parametrize(("name", "reader", "dims", "mpp"), SHARED_GEOMETRY)
def test_shared_slides_open_with_their_geometry(
    shared: Path, name: str, reader: str, dims: tuple[int, int], mpp: float | None
) -> None:
    assert_geometry(shared / name, reader, dims, mpp)


def assert_geometry(path: Path, reader: str, dims: tuple[int, int], mpp: float | None) -> None:
    with open_slide(path) as slide:
        assert slide.backend == reader
        assert slide.dimensions == dims
        if mpp is None:
            assert slide.mpp is None
        else:
            assert slide.mpp == pytest.approx(mpp, rel=1e-3)
        region = slide.read_region(0, 0, 0, 64, 48)
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8


@pytest.mark.parametrize("name", ["no-mpp.tif", "tcga-cr-7395-01a-01-ts1.svs"])
def test_missing_mpp_says_to_pass_mpp(request: pytest.FixtureRequest, name: str) -> None:
    folder = request.getfixturevalue("data" if name == "no-mpp.tif" else "shared")
    with open_slide(folder / "slides" / name) as slide:
        with pytest.raises(MissingMppError, match="--mpp"):
            resolve_mpp(slide, None)
        assert resolve_mpp(slide, 0.5) == 0.5


def test_mpp_override_wins_over_metadata(data: Path) -> None:
    with open_slide(data / "slides/CMU-1-Small-Region.svs") as slide:
        assert resolve_mpp(slide, 0.25) == 0.25


@pytest.mark.parametrize("folder", ["data", "shared"])
@pytest.mark.parametrize(("name", "error", "cause"), BAD)
def test_bad_inputs_raise_one_line_errors_naming_the_file(
    request: pytest.FixtureRequest, folder: str, name: str, error: type[WsiInferError], cause: str
) -> None:
    path = request.getfixturevalue(folder) / name
    with pytest.raises(error) as info, open_slide(path) as slide:
        slide.read_region(0, 0, 0, 16, 16)
    message = str(info.value)
    assert str(path) in message and cause in message and "\n" not in message


def test_grid_reader_resamples_to_the_model_grid(data: Path) -> None:
    with open_slide(data / "slides/CMU-1-Small-Region.svs") as slide:
        half = GridReader(slide, 0.5)  # 0.25 mpp grid on a 0.5 mpp slide: twice the pixels
        assert (half.width, half.height) == (4440, 5934)
        same = GridReader(slide, 1.0)
        assert same.exact and (same.width, same.height) == (2220, 2967)
        a = half.read(1000, 1000, 64, 64).astype(float)
        b = same.read(500, 500, 32, 32).astype(float)
        # the upsampled region shows the same tissue as the original, pixel block for block
        assert abs(a.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)) - b).mean() < 8


@pytest.mark.parametrize(
    ("folder", "name", "downsample"),
    [("data", "no-mpp.tif", 2.0), ("shared", "tcga-cr-7395-01a-01-ts1.svs", 2.0005055500659967)],
)
def test_pyramid_level_chosen_for_coarse_grids(
    request: pytest.FixtureRequest, folder: str, name: str, downsample: float
) -> None:
    with open_slide(request.getfixturevalue(folder) / "slides" / name) as slide:
        g = GridReader(slide, downsample)
        assert g.level == 1 and g.exact
        g = GridReader(slide, 4.0)
        assert g.level == 1 and g.factor == pytest.approx(2.0, rel=1e-3)


def test_outside_the_slide_is_white(data: Path) -> None:
    with open_slide(data / "edge/small.svs") as slide:
        region = slide.read_region(-8, -8, 0, 32, 32)
        assert (region[:8] == 255).all() and (region[:, 24:] == 255).all()
    with open_slide(data / "slides/he-tma-core-0.5mpp.ome.tif") as slide:
        region = slide.read_region(1370, 1470, 0, 32, 32)
        assert (region[20:, :] == 255).all() and not (region[:10, :10] == 255).all()


def test_a_region_across_the_edge_keeps_the_pixels_inside(data: Path) -> None:
    # opaque regions skip compositing; one across the edge is composited: the same pixels
    with open_slide(data / "slides/CMU-1-Small-Region.svs") as slide:
        across = slide.read_region(-16, -24, 0, 64, 64)
        inside = slide.read_region(0, 0, 0, 48, 40)
    assert across.dtype == inside.dtype == np.uint8 and across.flags.c_contiguous
    assert inside.flags.c_contiguous and inside.shape == (40, 48, 3)
    assert (across[:24] == 255).all() and (across[:, :16] == 255).all()
    np.testing.assert_array_equal(across[24:, 16:], inside)


def test_transparent_pixels_are_painted_over_white_as_pillow_composites_them() -> None:
    # only the pixels that are not opaque are composited: opaque, clear and partly
    # transparent ones side by side, against Pillow's alpha compositing over white
    from PIL import Image

    rgba = np.random.default_rng(1).integers(0, 256, (64, 96, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 255
    rgba[20:30, :, 3] = 0
    white = Image.new("RGBA", (96, 64), (255, 255, 255, 255))
    expected = np.asarray(
        Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB")
    )
    got = rgb_on_white(rgba)
    assert got.flags.c_contiguous and got.shape == (64, 96, 3)
    np.testing.assert_array_equal(got, expected)
    assert (got[20:30] == 255).all() and (got[:20] == rgba[:20, :, :3]).all()


@pytest.mark.parametrize("scale", [1.0, 0.5, 3.0])
def test_regions_decoded_in_strips_on_threads_are_the_same_pixels(data: Path, scale: float) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with open_slide(data / "slides/CMU-1-Small-Region.svs") as slide:
        grid = GridReader(slide, scale)
        # across the slide's top-left corner: white outside, more rows than one strip
        x, y, w, h = -7, -5, round(900 / scale), round(1700 / scale)
        alone = grid.read(x, y, w, h)
        with ThreadPoolExecutor(2) as pool:
            threaded = grid.read(x, y, w, h, pool)
    np.testing.assert_array_equal(threaded, alone)
    assert (alone[:2] == 255).all() and not (alone[100:] == 255).all()


def test_a_thumbnail_read_on_threads_is_the_one_read_on_one(data: Path) -> None:
    # a slide without a pyramid: the thumbnail decodes level 0, in strips on two threads
    with open_slide(data / "slides/CMU-1-Small-Region.svs") as slide:
        one = read_thumbnail(slide, 0.499, 8.0, threads=1)
        two = read_thumbnail(slide, 0.499, 8.0, threads=2)
        small_blocks = read_thumbnail(slide, 0.499, 8.0, max_block=1000, threads=2)
    assert one.shape == (185, 138, 3)  # 2967 x 2220 px at 0.499 µm/px, at 8 µm/px
    np.testing.assert_array_equal(two, one)
    # blocks meet without seams: the thumbnail read in 1000 px blocks is nearly the same
    assert np.abs(small_blocks.astype(int) - one).max() <= 1


def test_implausible_metadata_resolution_asks_for_mpp(data: Path) -> None:
    with open_slide(data / "edge/boxes.tiff") as slide:  # 72 dpi: 352.8 µm/px
        with pytest.raises(MissingMppError, match="--mpp"):
            resolve_mpp(slide, None)
        assert resolve_mpp(slide, 0.5) == 0.5
