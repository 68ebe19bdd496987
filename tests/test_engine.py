"""The engine end to end on real and synthetic slides, with real zarr stores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from localmodel import DarkNucleiBackend
from testdata import cmu_region

from wsi_infer.backends import create_backend
from wsi_infer.compare import compare_labels
from wsi_infer.engine import RunParams, plan_tiles, run_slide
from wsi_infer.reader import open_slide
from wsi_infer.store import TABLE_COLUMNS, read_table
from wsi_infer.tissue import TissueParams


@pytest.fixture(scope="module")
def tiny(tiny_model: Path):  # type: ignore[no-untyped-def]
    return create_backend("torch", tiny_model)


#: a region of the CMU slide (level-0 x, y, width, height): glass on its left, tissue on its right
CMU_REGION = (200, 1000, 1200, 768)


@pytest.fixture(scope="module")
def cmu_slide(make_slide: Callable[..., Path]) -> Path:
    """Real H&E at 0.499 µm/px, as the CMU slide's metadata says: a 1200 x 768 region of it
    (grid 599 x 383: more than one 512 px label chunk, so a pyramid level)."""
    return make_slide("cmu-region.tif", cmu_region(*CMU_REGION), mpp=0.499)


@pytest.fixture(scope="module")
def cmu_store(tiny, cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cmu") / "r.zarr"
    run_slide(cmu_slide, out, tiny, RunParams(tile_size=256))
    return out


def test_store_layout_contract(cmu_store: Path, tiny_model: Path) -> None:
    root = zarr.open_group(str(cmu_store), mode="r")
    info = root.attrs["wsi_infer"]
    assert info["status"] == "complete"
    # 0.499 mpp slide, 1.0 mpp model: the grid is the slide scaled by 0.499
    assert info["grid_to_level0"] == pytest.approx(1.0 / 0.499)
    h, w = info["grid_shape"]
    assert (h, w) == (round(CMU_REGION[3] * 0.499), round(CMU_REGION[2] * 0.499))
    nuclei, types = root["labels/nuclei/0"], root["labels/types/0"]
    assert nuclei.shape == types.shape == (h, w)
    assert nuclei.dtype == np.uint32 and types.dtype == np.uint8
    assert root["labels/nuclei/1"].shape == ((h + 1) // 2, (w + 1) // 2)
    ms = root["labels/nuclei"].attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(len(ms["datasets"]))]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [info["run_mpp"]] * 2
    assert root["labels"].attrs["ome"]["labels"] == ["nuclei", "types", "tissue"]
    assert "_scratch" not in root
    for col, (dtype, ncols) in TABLE_COLUMNS.items():
        arr = root[f"tables/nuclei/{col}"]
        assert arr.dtype == np.dtype(dtype)
        assert arr.shape[1:] == (() if ncols is None else (ncols,))
    for key in ("software", "model", "parameters", "slide", "run_mpp", "started", "finished"):
        assert key in info
    assert info["model"]["sha256"] and info["slide"]["mpp"] == pytest.approx(0.499)
    assert info["nuclei"] == root["tables/nuclei/id"].shape[0]


def test_table_agrees_with_label_image(cmu_store: Path) -> None:
    root = zarr.open_group(str(cmu_store), mode="r")
    labels = root["labels/nuclei/0"][:]
    types = root["labels/types/0"][:]
    table = read_table(cmu_store)
    n = len(table)
    assert n > 0
    assert table["id"].tolist() == list(range(1, n + 1))
    present = np.unique(labels[labels > 0])
    assert set(present.tolist()) <= set(table["id"].tolist())
    # every id is painted (a pixel or more; painting loses pixels only to seam conflicts)
    assert len(present) >= 0.99 * n
    info = root.attrs["wsi_infer"]
    s, mpp = info["grid_to_level0"], info["run_mpp"]
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    np.testing.assert_allclose(table["area_um2"], area * mpp**2, rtol=0.05)
    for row in table.itertuples():
        ys, xs = np.nonzero(labels == row.id)
        assert row.bbox_x0 <= xs.min() * s + 1 and (xs.max() + 1) * s <= row.bbox_x1 + 1
        assert row.bbox_x0 <= row.centroid_x <= row.bbox_x1
        assert row.bbox_y0 <= row.centroid_y <= row.bbox_y1
        assert (types[ys, xs] == row.type).all()


def test_runs_are_deterministic(tiny, cmu_slide: Path, cmu_store: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    again = tmp_path / "again.zarr"
    run_slide(cmu_slide, again, tiny, RunParams(tile_size=256))
    a, b = zarr.open_group(str(cmu_store), mode="r"), zarr.open_group(str(again), mode="r")
    for name in ("labels/nuclei/0", "labels/nuclei/1", "labels/types/0", "labels/tissue/0"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    for col in TABLE_COLUMNS:
        np.testing.assert_array_equal(a[f"tables/nuclei/{col}"][:], b[f"tables/nuclei/{col}"][:])


def test_slide_at_model_mpp_gives_level0_shape_not_multiple_of_tile(
    tiny,
    make_slide: Callable[..., Path],
    he_mosaic: np.ndarray,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    image = np.ascontiguousarray(he_mosaic[:523, :700])
    slide = make_slide("odd.tif", image, mpp=1.0)
    out = tmp_path / "odd.zarr"
    summary = run_slide(slide, out, tiny, RunParams(tile_size=256, overlap=64))
    root = zarr.open_group(str(out), mode="r")
    assert root["labels/nuclei/0"].shape == (523, 700)
    assert root.attrs["wsi_infer"]["grid_to_level0"] == 1.0
    assert summary.tiles == 3 * 4  # ceil(523 / 192) x ceil(700 / 192): all tissue


def test_slide_without_tissue_completes_empty(
    tiny,
    make_slide: Callable[..., Path],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 3, size=(900, 1200, 3)), 0, 255).astype(np.uint8)
    slide = make_slide("glass.tif", glass, mpp=1.0)
    out = tmp_path / "glass.zarr"
    summary = run_slide(slide, out, tiny, RunParams(tile_size=256))
    assert summary.tiles == 0 and summary.nuclei == 0
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["wsi_infer"]["status"] == "complete"
    assert not root["labels/tissue/0"][:].any()
    assert root["tables/nuclei/id"].shape == (0,)


def test_slide_smaller_than_one_tile(tiny, data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "small.zarr"
    params = RunParams(tile_size=256, tissue=TissueParams(enabled=False), mpp=1.0)
    summary = run_slide(data / "edge/small.svs", out, tiny, params)
    root = zarr.open_group(str(out), mode="r")
    assert root["labels/nuclei/0"].shape == (16, 16)
    assert summary.tiles == 1
    assert root.attrs["wsi_infer"]["status"] == "complete"


def test_tissue_mask_skips_glass(tiny, cmu_slide: Path, cmu_store: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = zarr.open_group(str(cmu_store), mode="r")
    masked_tiles = root.attrs["wsi_infer"]["tiles"]
    out = tmp_path / "all.zarr"
    params = RunParams(tile_size=256, tissue=TissueParams(enabled=False))
    summary = run_slide(cmu_slide, out, tiny, params)
    assert 0 < masked_tiles < summary.tiles == 2 * 4  # ceil(383/192) x ceil(599/192)


@pytest.mark.parametrize("enabled", [True, False])
def test_planned_tiles_are_the_tiles_a_run_predicts(  # type: ignore[no-untyped-def]
    tiny, cmu_slide: Path, cmu_store: Path, tmp_path: Path, enabled: bool
) -> None:
    params = RunParams(tile_size=256, tissue=TissueParams(enabled=enabled))
    with open_slide(cmu_slide) as slide:
        reader, grid, planned = plan_tiles(slide, tiny.config, params)
    if enabled:
        root = zarr.open_group(str(cmu_store), mode="r")
    else:
        run_slide(cmu_slide, tmp_path / "all.zarr", tiny, params)
        root = zarr.open_group(str(tmp_path / "all.zarr"), mode="r")
    assert len(planned) == root.attrs["wsi_infer"]["tiles"]
    assert (reader.height, reader.width) == tuple(root.attrs["wsi_infer"]["grid_shape"])
    assert planned == grid.select(np.asarray(root["labels/tissue/0"][:]).astype(bool))
    assert (len(planned) < 2 * 4) is enabled  # the glass on the region's left is left out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "tiles"),
    [
        ("slides/he-tma-core-0.5mpp.ome.tif", (256, 512)),
        ("slides/CMU-1-Small-Region.svs", (256, 512)),
        ("slides/CMU-1-Small-Region.svs", (320, 768)),
    ],
)
def test_two_tile_sizes_give_the_same_nuclei(
    data: Path, tmp_path: Path, name: str, tiles: tuple[int, int]
) -> None:
    """Tiling and stitching lose, cut or double no nucleus: with a model that sees no further
    than the tiles' halo, two tilings of a real slide give the same nuclei."""
    backend = DarkNucleiBackend()
    stores = []
    for tile in tiles:
        out = tmp_path / f"t{tile}.zarr"
        run_slide(data / name, out, backend, RunParams(tile_size=tile, overlap=64))
        stores.append(zarr.open_group(str(out), mode="r")["labels/nuclei/0"][:])
    m = compare_labels(stores[0], stores[1])
    assert m.nuclei_a > 1000 and m.nuclei_b > 1000
    assert m.matched >= 0.99 * max(m.nuclei_a, m.nuclei_b)


@pytest.mark.slow
def test_bundled_model_gives_the_same_nuclei_at_its_tile_size_and_twice_that(
    data: Path, make_slide: Callable[..., Path], tmp_path: Path
) -> None:
    """The bundled model attends within windows on one slide-wide grid, so its nuclei do not
    depend on the tile size: its own tile and twice that agree on >= 95 % of nuclei."""
    import openslide

    with openslide.OpenSlide(str(data / "slides/CMU-1-Small-Region.svs")) as s:
        mpp = float(s.properties[openslide.PROPERTY_NAME_MPP_X])
        region = np.asarray(s.read_region((900, 1200), 0, (512, 512)).convert("RGB"))
    slide = make_slide("cmu-crop-invariance.tif", region, mpp=mpp)
    backend = create_backend("torch", "default", threads=2)
    tile = backend.config.tile_size
    labels = []
    for size in (tile, 2 * tile):
        out = tmp_path / f"t{size}.zarr"
        params = RunParams.for_model(backend.config, tile_size=size)
        run_slide(slide, out, backend, params)
        labels.append(zarr.open_group(str(out), mode="r")["labels/nuclei/0"][:])
    m = compare_labels(labels[0], labels[1])
    assert m.nuclei_a > 100, m
    assert m.agreement >= 0.95, m
