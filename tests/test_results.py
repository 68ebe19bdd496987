"""Results people can look at: GeoJSON, overlay pictures, statistics, OME-NGFF readers.

Geometry is checked on stores whose labels are known (written by hand into a
store made by ``create_store``: a ring with a hole, a nucleus in two pieces,
nuclei across chunk seams) and on a real engine run of the bundled model.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import zarr
from helpers import invoke, one_line_error
from numpy.typing import NDArray

from wsi_infer.config import CLASS_COLOURS, CLASS_NAMES, ModelConfig
from wsi_infer.geojson import _Band
from wsi_infer.store import ATTR, append_table, create_store, read_table
from wsi_infer.verify import seal_complete

CHUNK = 64


# --------------------------------------------------------------------------- known labels


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> NDArray[np.bool_]:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def known_labels() -> tuple[NDArray[np.uint32], dict[int, int]]:
    """Labels on a 200 x 300 grid (chunks of 64) and each id's class (0 = unclassified)."""
    shape = (200, 300)
    lab = np.zeros(shape, np.uint32)
    # 1: a disk centred on the chunk corner (64, 64): four chunks
    lab[_disk(shape, 64, 64, 9)] = 1
    # 2: a ring (annulus) across the column seam at x = 128: one hole
    lab[_disk(shape, 40, 128, 12) & ~_disk(shape, 40, 128, 5)] = 2
    # 3: two separate pieces (a MultiPolygon), across the row seam at y = 128
    lab[120:126, 200:206] = 3
    lab[130:134, 212:220] = 3
    # 4: pixels touching only at corners (a diagonal staircase)
    for k in range(6):
        lab[160 + k, 40 + k] = 4
    # 5: a C closed by a corner contact: a hole touching the outside at a point
    c = np.array([[1, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 0]], bool)
    lab[150:153, 100:104][c] = 5
    # 6: a square with two holes, on the slide's bottom-right corner
    lab[188:200, 286:300] = 6
    lab[190:193, 290:293] = 0
    lab[194:197, 294:297] = 0
    # 7..: small disks along the row seam y = 192 and the column seam x = 256
    ident = 7
    for cx in range(20, 280, 37):
        lab[_disk(shape, 192, cx, 3.5) & (lab == 0)] = ident
        ident += 1
    for cy in range(10, 180, 29):
        lab[_disk(shape, cy, 256, 4) & (lab == 0)] = ident
        ident += 1
    classes = {i: (i % 6) for i in range(1, ident)}  # 0 (unclassified) .. 5
    return lab, classes


def write_known_store(
    path: Path,
    labels: NDArray[np.uint32],
    classes: dict[int, int],
    *,
    scale: float = 2.0,
    run_mpp: float = 0.5,
    status: str = "complete",
    slide: Path | None = None,
) -> Path:
    """A store holding ``labels`` and a table consistent with them (the engine's conventions)."""
    from scipy import ndimage as ndi

    h, w = labels.shape
    tissue = np.zeros((h // 8, w // 8), bool)
    tissue[2:-2, 2:-2] = True
    attrs: dict[str, Any] = {
        "model": {
            "name": "known",
            "class_names": list(CLASS_NAMES),
            "class_colours": [list(c) for c in CLASS_COLOURS],
        },
        "slide": {"path": str(slide or path.with_suffix(".svs")), "mpp": run_mpp / scale},
        "run_mpp": run_mpp,
        "grid_shape": [h, w],
        "grid_to_level0": scale,
        "tissue": {"mpp": run_mpp * 8, "fraction": float(tissue.mean())},
    }
    root = create_store(
        path,
        grid_shape=(h, w),
        chunk=CHUNK,
        map_chunk=CHUNK,
        tissue=tissue,
        tissue_mpp=run_mpp * 8,
        run_mpp=run_mpp,
        class_names=CLASS_NAMES,
        class_colours=CLASS_COLOURS,
        head=ModelConfig().head,
        attrs=attrs,
    )
    ids = np.arange(1, int(labels.max()) + 1)
    type_of = np.array([0, *[classes[int(i)] for i in ids]], np.uint8)
    nuclei, types = root["labels/nuclei/0"], root["labels/types/0"]
    assert isinstance(nuclei, zarr.Array) and isinstance(types, zarr.Array)
    nuclei[:] = labels
    types[:] = type_of[labels]
    objects = ndi.find_objects(labels.astype(np.int64))
    area = ndi.sum_labels(np.ones_like(labels), labels, ids)
    cy, cx = np.array(ndi.center_of_mass(np.ones_like(labels), labels, ids)).T
    bbox = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in objects if s])
    append_table(
        root,
        {
            "id": ids.astype(np.uint32),
            "centroid": np.stack([(cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5], 1),
            "bbox": np.concatenate(
                [np.floor(bbox[:, :2] * scale), np.ceil(bbox[:, 2:] * scale)], 1
            ).astype(np.int32),
            "area_um2": area * run_mpp**2,
            "type": type_of[1:],
            "type_prob": np.linspace(0.5, 1.0, len(ids)),
        },
    )
    if status == "complete":  # as the engine finishes a store: digests, then the status
        seal_complete(path, root, nuclei=len(ids))
    else:
        info = dict(root.attrs[ATTR])  # type: ignore[arg-type]
        root.attrs[ATTR] = {**info, "status": status, "nuclei": len(ids)}
    return path


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NDArray[np.uint32]]:
    labels, classes = known_labels()
    path = write_known_store(tmp_path_factory.mktemp("known") / "known.zarr", labels, classes)
    return path, labels


def load_geojson(path: Path) -> dict[str, Any]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def check_collection(data: dict[str, Any], table: Any, area_tol: float) -> dict[int, Any]:
    """Structure, one feature per table row, valid outlines within ``area_tol``; id -> geometry."""
    assert data["type"] == "FeatureCollection"
    features = data["features"]
    ids = [f["properties"]["measurements"]["id"] for f in features]
    assert sorted(ids) == sorted(table["id"].tolist())
    rows = table.set_index("id")
    geoms: dict[int, Any] = {}
    for f in features:
        assert f["type"] == "Feature"
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] == "detection"
        ident = props["measurements"]["id"]
        row = rows.loc[ident]
        assert np.float32(props["measurements"]["area_um2"]) == row["area_um2"]
        assert np.float32(props["measurements"]["type_prob"]) == row["type_prob"]
        if row["type"] == 0:
            assert "classification" not in props
        else:
            cls = props["classification"]
            assert cls["name"] == CLASS_NAMES[row["type"] - 1] == row["type_name"]
            assert cls["color"] == list(CLASS_COLOURS[row["type"] - 1])
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        geoms[ident] = geom
        x0, y0, x1, y1 = geom.bounds
        assert row["bbox_x0"] <= x0 and row["bbox_y0"] <= y0
        assert x1 <= row["bbox_x1"] and y1 <= row["bbox_y1"]
    return geoms


def test_geojson_of_known_labels_is_exact(
    known: tuple[Path, NDArray[np.uint32]], tmp_path: Path
) -> None:
    store, labels = known
    out = tmp_path / "nuclei.geojson"
    code, stdout, _ = invoke("export", "geojson", store, out)
    assert code == 0 and "nuclei" in stdout
    data = load_geojson(out)
    table = read_table(store)
    geoms = check_collection(data, table, 0.05)
    scale, run_mpp = 2.0, 0.5
    for ident, geom in geoms.items():
        # level-0 px -> grid px -> µm²: the outline covers exactly the nucleus' pixels
        area_um2 = geom.area / scale**2 * run_mpp**2
        expected = float(table.set_index("id").loc[ident, "area_um2"])
        assert area_um2 == pytest.approx(expected, rel=0.05)
        assert area_um2 == pytest.approx(expected, rel=1e-6)
        rows, cols = np.nonzero(labels == ident)
        y0, x0 = max(rows.min() - 1, 0), max(cols.min() - 1, 0)
        y1, x1 = min(rows.max() + 2, labels.shape[0]), min(cols.max() + 2, labels.shape[1])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = shapely.contains_xy(geom, (xx + 0.5) * scale, (yy + 0.5) * scale)
        assert np.array_equal(inside, labels[y0:y1, x0:x1] == ident)
    assert geoms[2].geom_type == "Polygon" and len(geoms[2].interiors) == 1  # the ring
    assert geoms[3].geom_type == "MultiPolygon" and len(geoms[3].geoms) == 2
    assert geoms[6].geom_type == "Polygon" and len(geoms[6].interiors) == 2
    assert geoms[6].bounds == (286 * scale, 188 * scale, 300 * scale, 200 * scale)
    assert geoms[4].geom_type == "MultiPolygon" and len(geoms[4].geoms) == 6  # corners only


def test_geojson_gzip_holds_the_same_features(
    known: tuple[Path, NDArray[np.uint32]], tmp_path: Path
) -> None:
    store, _ = known
    plain, packed, by_name = tmp_path / "a.geojson", tmp_path / "b.json", tmp_path / "c.geojson.gz"
    assert invoke("export", "geojson", store, plain, "-q")[0] == 0
    assert invoke("export", "geojson", store, packed, "--gzip", "-q")[0] == 0
    assert invoke("export", "geojson", store, by_name, "-q")[0] == 0
    assert packed.read_bytes()[:2] == by_name.read_bytes()[:2] == b"\x1f\x8b"
    with gzip.open(packed, "rt", encoding="utf-8") as fh:
        assert json.load(fh) == load_geojson(plain) == load_geojson(by_name)
    assert not list(tmp_path.glob("*.partial"))


def test_band_reader_holds_one_chunk_row_plus_the_request(tmp_path: Path) -> None:
    data = np.arange(300 * 40, dtype=np.uint32).reshape(300, 40)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(32, 16))
    band = _Band(arr)
    held = 0
    for y0 in range(0, 290, 7):
        y1 = min(300, y0 + 11)
        assert np.array_equal(band.rows(y0, y1), data[y0:y1])
        held = max(held, band.data.shape[0])
    assert held <= 2 * 32
    assert band.rows_read == 300  # every row read once


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def real_store(
    he_mosaic: NDArray[np.uint8],
    make_slide: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The bundled model on real H&E, 512 wide x 768 high at 0.25 µm/px."""
    from wsi_infer.backends import create_backend
    from wsi_infer.engine import RunParams, run_slide

    slide = make_slide("results-he.tiff", np.ascontiguousarray(he_mosaic[:768, :512]), mpp=0.25)
    out = tmp_path_factory.mktemp("real") / "he.zarr"
    run_slide(slide, out, create_backend("torch", "default"), RunParams(tile_size=256))
    return out


def test_geojson_of_a_real_run(real_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "he.geojson.gz"
    code, _, _ = invoke("export", "geojson", real_store, out)
    assert code == 0
    table = read_table(real_store)
    assert len(table) > 50  # real nuclei
    geoms = check_collection(load_geojson(out), table, 0.05)
    areas = table.set_index("id")["area_um2"]
    info: Any = zarr.open_group(str(real_store), mode="r").attrs[ATTR]
    mpp = info["slide"]["mpp"]
    for ident, geom in geoms.items():
        assert geom.area * mpp**2 == pytest.approx(float(areas[ident]), rel=0.05)


def _png_shape(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.height, img.width


def test_overlay_pictures(real_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "qc"
    code, stdout, _ = invoke("export", "overlay", real_store, "--out", out, "--max-size", "300")
    assert code == 0 and "nuclei" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["he.overlay.png", "he.overlay_zoom.png"]
    h, w = _png_shape(out / "he.overlay.png")
    assert max(h, w) <= 300
    assert abs(w - h * 512 / 768) <= 1.5  # the slide's aspect ratio
    assert _png_shape(out / "he.overlay_zoom.png") == (512, 512)
    # the nuclei's class colours are drawn
    zoom = np.asarray(Image.open(out / "he.overlay_zoom.png").convert("RGB"))
    table = read_table(real_store)
    present = {CLASS_COLOURS[t - 1] for t in table["type"].unique() if t}
    assert present
    for colour in present:
        assert (zoom == np.array(colour, np.uint8)).all(axis=2).any()
    # default names: beside the store
    code, _, _ = invoke("export", "overlay", real_store, "-q")
    assert code == 0
    beside = real_store.parent / "he.overlay.png"
    h2, w2 = _png_shape(beside)
    assert abs(w2 - h2 * 512 / 768) <= 1.5 and max(h2, w2) == 768
    assert _png_shape(real_store.parent / "he.overlay_zoom.png") == (512, 512)


def test_ome_zarr_reads_the_labels(real_store: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    root: Any = zarr.open_group(str(real_store), mode="r")
    loc = parse_url(str(real_store / "labels"))
    assert loc is not None
    nodes = {n.zarr.basename(): n for n in Reader(loc)()}
    for name in ("nuclei", "types", "tissue"):
        group = root[f"labels/{name}"]
        shapes = [tuple(group[str(k)].shape) for k in range(len(list(group.array_keys())))]
        node = nodes[name]
        assert [tuple(d.shape) for d in node.data] == shapes
    assert len(nodes["nuclei"].data) >= 2  # the pyramid
    assert nodes["nuclei"].data[0].shape == (768, 512)
    props = nodes["types"].metadata["properties"]
    assert [props[i + 1]["class"] for i in range(5)] == list(CLASS_NAMES)
    assert np.array_equal(np.asarray(nodes["nuclei"].data[0]), root["labels/nuclei/0"][:])


def test_inspect_agrees_with_the_table(real_store: Path) -> None:
    code, stdout, _ = invoke("inspect", real_store, "--json")
    assert code == 0
    summary = json.loads(stdout)
    table = read_table(real_store)
    stats = summary["statistics"]
    assert summary["status"] == "complete" and stats["nuclei"] == len(table)
    counts = table["type_name"].value_counts()
    for name in CLASS_NAMES:
        c = stats["classes"][name]
        assert c["count"] == int(counts.get(name, 0))
        if c["count"]:
            mean = table.loc[table["type_name"] == name, "area_um2"].mean()
            assert c["mean_area_um2"] == pytest.approx(mean, rel=1e-5)
            assert c["density_per_mm2"] == pytest.approx(c["count"] / stats["tissue_area_mm2"])
    assert stats["classes"].get("unclassified", {"count": 0})["count"] == int(
        (table["type"] == 0).sum()
    )
    root: Any = zarr.open_group(str(real_store), mode="r")
    info = root.attrs[ATTR]
    tissue = root["labels/tissue/0"][:]
    assert stats["tissue_area_mm2"] == pytest.approx(
        tissue.astype(bool).sum() * info["tissue"]["mpp"] ** 2 / 1e6
    )
    code, text, _ = invoke("inspect", real_store)
    assert code == 0 and "complete" in text
    for name in CLASS_NAMES:
        assert name in text
    assert f"{len(table)} (" in text


def test_inspect_prefers_stored_statistics(
    known: tuple[Path, NDArray[np.uint32]], tmp_path: Path
) -> None:
    store, labels = known
    code, stdout, _ = invoke("inspect", store, "--json")
    computed = json.loads(stdout)["statistics"]
    assert code == 0 and computed["nuclei"] == int(labels.max())
    assert computed["classes"]["unclassified"]["count"] == sum(
        1 for i in range(1, int(labels.max()) + 1) if i % 6 == 0
    )
    copy = tmp_path / "stored.zarr"
    write_known_store(copy, labels, dict.fromkeys(range(1, int(labels.max()) + 1), 1))
    root = zarr.open_group(str(copy), mode="r+")
    root.attrs[ATTR] = {**root.attrs[ATTR], "statistics": {**computed, "nuclei": -1}}  # type: ignore[dict-item]
    code, stdout, _ = invoke("inspect", copy, "--json")
    assert code == 0 and json.loads(stdout)["statistics"]["nuclei"] == -1


# --------------------------------------------------------------------------- errors


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    labels, classes = known_labels()
    store = write_known_store(tmp_path / "run.zarr", labels, classes, status="running")
    out = tmp_path / "x.geojson"
    code, _, stderr = invoke("export", "geojson", store, out)
    one_line_error(code, stderr, str(store), "running")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    code, _, stderr = invoke("export", "overlay", store, "--out", tmp_path / "qc")
    one_line_error(code, stderr, "running")
    assert not (tmp_path / "qc").exists()
    code, _, stderr = invoke("export", "geojson", tmp_path / "nothing.zarr", out)
    one_line_error(code, stderr, "nothing.zarr")
    # inspect shows what is there, status included
    code, stdout, _ = invoke("inspect", store, "--json")
    assert code == 0 and json.loads(stdout)["status"] == "running"


def test_existing_output_is_not_overwritten(
    known: tuple[Path, NDArray[np.uint32]], tmp_path: Path
) -> None:
    store, _ = known
    out = tmp_path / "x.geojson"
    out.write_text("mine")
    code, _, stderr = invoke("export", "geojson", store, out)
    one_line_error(code, stderr, str(out), "--overwrite")
    assert out.read_text() == "mine"
    assert invoke("export", "geojson", store, out, "--overwrite", "-q")[0] == 0
    assert load_geojson(out)["type"] == "FeatureCollection"
    qc = tmp_path / "qc"
    qc.mkdir()
    (qc / "known.overlay.png").write_text("mine")
    code, _, stderr = invoke("export", "overlay", store, "--out", qc)
    one_line_error(code, stderr, "known.overlay.png", "--overwrite")
    assert (qc / "known.overlay.png").read_text() == "mine"


def test_overlay_without_the_slide_says_so(
    known: tuple[Path, NDArray[np.uint32]], tmp_path: Path
) -> None:
    store, _ = known
    code, _, stderr = invoke("export", "overlay", store, "--out", tmp_path)
    one_line_error(code, stderr, "--slide")


def test_overlay_aligns_labels_finer_than_the_slide(
    make_slide: Callable[..., Path], tmp_path: Path
) -> None:
    """Labels at 0.5 µm/px over a 1 µm/px slide: the overview is the slide's, nuclei in place."""
    from wsi_infer.overlay import write_overlay

    labels, classes = known_labels()  # 200 x 300 grid
    image = np.full((100, 150, 3), (200, 170, 200), np.uint8)
    slide = make_slide("plain.tiff", image, mpp=1.0)
    store = write_known_store(
        tmp_path / "fine.zarr", labels, classes, scale=0.5, run_mpp=0.5, slide=slide
    )
    result = write_overlay(store, tmp_path / "o.png", tmp_path / "z.png", zoom_size=128)
    assert result.overview.shape == (100, 150, 3)
    assert result.zoom.shape == (128, 128, 3)
    over = result.overview
    # nucleus 8 (inflammatory, green) at grid (192, 57), 9 (connective, blue) at (192, 94)
    green = (over[93:100, 24:34] == CLASS_COLOURS[1]).all(axis=2)
    blue = (over[93:100, 42:52] == CLASS_COLOURS[2]).all(axis=2)
    assert green.any() and blue.any()
    assert not (over[93:100, 24:34] == CLASS_COLOURS[2]).all(axis=2).any()
