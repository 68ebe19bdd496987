"""Nucleus outlines as GeoJSON (QuPath, geopandas, GIS tools), streamed from a result store.

One ``Feature`` per row of ``tables/nuclei``.  Its geometry is traced from
``labels/nuclei/0``: the exact outline of the nucleus' pixels along pixel
edges (the union of its pixel squares), so the polygon's area is its pixel
count and holes become interior rings.  A nucleus whose pixels form several
pieces (which touch, if at all, only at corners) is a ``MultiPolygon`` of
all of them, never just the largest, so nothing of the label image is lost.

Coordinates are slide level-0 pixels, pixel edges at integers: grid pixel
``(row, col)`` covers ``[col, col + 1) x [row, row + 1)`` grid pixels, times
``grid_to_level0`` -- the convention of the table's ``bbox``, which each
polygon's bounds lie within.  Exterior rings run counter-clockwise, holes
clockwise (RFC 7946, in the numeric sense: y grows downwards on a slide).

``properties`` follow QuPath's GeoJSON: ``objectType: "detection"``,
``classification: {name, color: [r, g, b]}`` from the model's classes and
``measurements`` (``id``, ``area_um2``, ``type_prob``).

The label image is never loaded whole: rows of the table are visited in order
of their top edge and the labels are read in full-width bands of whole zarr
chunks that slide down the slide, so memory is one chunk row plus the tallest
nucleus, times the width.  Features are therefore written in order of their
top edge (nearly id order), each as soon as it is traced.
"""

from __future__ import annotations

import gzip as gzip_module
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer.errors import OutputExistsError, OutputWriteError
from wsi_infer.files import atomic_write
from wsi_infer.location import RemotePath, StorePath, parse_location
from wsi_infer.store import ATTR, open_result, refuse_existing, refuse_inside_store

__all__ = ["GeoJsonSummary", "NucleusShape", "export_geojson", "iter_nucleus_shapes"]

logger = logging.getLogger(__name__)

#: Relative difference between a polygon's area and the table's ``area_um2`` that is reported.
AREA_TOLERANCE = 0.05
#: Decimals of the level-0 pixel coordinates written (1/1000 px).
DECIMALS = 3


@dataclass
class NucleusShape:
    """One nucleus: its table row and its outline in grid pixels (shapely geometry)."""

    row: int
    id: int
    geometry: Any  # shapely Polygon or MultiPolygon, grid pixel edges
    repaired: bool


@dataclass
class GeoJsonSummary:
    """What :func:`export_geojson` wrote, and what it had to report."""

    path: StorePath
    features: int = 0
    multipolygons: int = 0
    with_holes: int = 0
    repaired: int = 0  # invalid outlines made valid with shapely.make_valid
    empty: int = 0  # table rows without a pixel in the label image (no feature written)
    area_mismatch: int = 0  # outlines whose area differs from the table's by > AREA_TOLERANCE
    max_area_error: float = 0.0

    def line(self) -> str:
        parts = [f"{self.path}: {self.features} nuclei"]
        if self.multipolygons:
            parts.append(f"{self.multipolygons} in several pieces")
        if self.with_holes:
            parts.append(f"{self.with_holes} with holes")
        for count, what in (
            (self.repaired, "repaired"),
            (self.empty, "without pixels, skipped"),
            (self.area_mismatch, f"with area off by > {AREA_TOLERANCE:.0%}"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return ", ".join(parts)


class _Band:
    """Full-width rows ``[y0, y1)`` of a 2-D zarr array, read in whole chunk rows.

    Requests must come with non-decreasing start rows; rows above the start of
    the current request's chunk row are dropped.
    """

    def __init__(self, array: zarr.Array[Any]) -> None:
        self.array = array
        self.height = int(array.shape[0])
        self.step = int(array.chunks[0])
        self.y0 = 0
        self.y1 = 0
        self.data: NDArray[Any] = np.zeros((0, array.shape[1]), dtype=array.dtype)
        self.rows_read = 0

    def rows(self, y0: int, y1: int) -> NDArray[Any]:
        if y0 < self.y0 or y1 > self.y1:
            new_y0 = (y0 // self.step) * self.step
            new_y1 = min(self.height, max(-(-y1 // self.step) * self.step, new_y0 + self.step))
            if self.y0 <= new_y0 < self.y1:
                kept = self.data[new_y0 - self.y0 :]
                fresh = np.asarray(self.array[self.y1 : new_y1])
                self.data = np.concatenate([kept, fresh]) if len(kept) else fresh
                self.rows_read += new_y1 - self.y1
            else:
                self.data = np.asarray(self.array[new_y0:new_y1])
                self.rows_read += new_y1 - new_y0
            self.y0, self.y1 = new_y0, new_y1
        return self.data[y0 - self.y0 : y1 - self.y0]


def mask_outline(mask: NDArray[np.bool_], x0: int = 0, y0: int = 0) -> Any:
    """The outline of ``mask``'s pixels along pixel edges, offset by ``(x0, y0)``.

    A shapely ``Polygon`` (with holes where the mask has them) or, for pixels
    in several pieces, a ``MultiPolygon``; its area is ``mask.sum()``.  Built as
    the union of the mask's row runs, so it is valid by construction.
    """
    import shapely

    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, stops = np.nonzero(step == -1)
    boxes = shapely.box(starts + x0, rows + y0, stops + x0, rows + y0 + 1)
    # tolerance 0 only drops the collinear vertices where row runs met
    return shapely.simplify(shapely.union_all(boxes), 0.0)


def _grid_boxes(bbox: NDArray[np.int32], scale: float, shape: tuple[int, int]) -> NDArray[np.int64]:
    """Grid-pixel ``(y0, y1, x0, x1)`` surely holding each level-0 ``bbox`` (x0 y0 x1 y1)."""
    h, w = shape
    b = bbox.astype(np.float64) / scale
    out = np.empty((len(bbox), 4), np.int64)
    out[:, 0] = np.clip(np.floor(b[:, 1]) - 1, 0, h)
    out[:, 1] = np.clip(np.ceil(b[:, 3]) + 1, 0, h)
    out[:, 2] = np.clip(np.floor(b[:, 0]) - 1, 0, w)
    out[:, 3] = np.clip(np.ceil(b[:, 2]) + 1, 0, w)
    return out


def iter_nucleus_shapes(root: zarr.Group) -> Iterator[NucleusShape | int]:
    """Trace every nucleus of the table, streaming the label image band by band.

    Yields a :class:`NucleusShape` per nucleus, in order of its top edge, or the
    table row index (an ``int``) of a nucleus without a single pixel in the
    label image.
    """
    import shapely

    info: Any = root.attrs[ATTR]
    scale = float(info["grid_to_level0"])
    labels = root["labels/nuclei/0"]
    table: Any = root["tables/nuclei"]
    assert isinstance(labels, zarr.Array)
    ids = np.asarray(table["id"][:])
    if len(ids) == 0:
        return
    h, w = labels.shape
    boxes = _grid_boxes(np.asarray(table["bbox"][:]), scale, (int(h), int(w)))
    band = _Band(labels)
    for row in np.lexsort((ids, boxes[:, 0])):
        y0, y1, x0, x1 = (int(v) for v in boxes[row])
        ident = int(ids[row])
        mask = band.rows(y0, y1)[:, x0:x1] == ident
        if not mask.any():
            yield int(row)
            continue
        geom = mask_outline(mask, x0, y0)
        repaired = False
        if not geom.is_valid:  # not expected: the union of row runs is valid
            geom = shapely.make_valid(geom)
            repaired = True
        yield NucleusShape(int(row), ident, geom, repaired)
    logger.debug("read %d label rows for %d nuclei", band.rows_read, len(ids))


def _feature(
    shape: NucleusShape,
    scale: float,
    area_um2: float,
    typ: int,
    prob: float,
    names: list[str],
    colours: list[list[int]],
) -> str:
    import shapely

    geom = shapely.orient_polygons(shape.geometry, exterior_cw=False)
    geom = shapely.transform(geom, lambda c: np.round(c * scale, DECIMALS))
    properties: dict[str, Any] = {"objectType": "detection"}
    if 1 <= typ <= len(names):
        properties["classification"] = {
            "name": names[typ - 1],
            "color": [int(v) for v in colours[typ - 1]],
        }
    properties["measurements"] = {
        "id": shape.id,
        "area_um2": _f32(area_um2),
        "type_prob": _f32(prob),
    }
    return (
        '{"type":"Feature","geometry":'
        + shapely.to_geojson(geom)
        + ',"properties":'
        + json.dumps(properties, separators=(",", ":"))
        + "}"
    )


def export_geojson(
    store: str | StorePath,
    out: str | StorePath,
    *,
    compress: bool | None = None,
    overwrite: bool = False,
) -> GeoJsonSummary:
    """Write the nuclei of the complete result ``store`` to the GeoJSON file ``out``.

    ``compress`` gzips the file (default: when ``out`` ends in ``.gz``).  The
    file is written under a temporary name and renamed when complete.  Raises
    :class:`~wsi_infer.errors.IncompleteStoreError` for a store that is not
    complete and :class:`~wsi_infer.errors.OutputExistsError` for an existing
    ``out`` unless ``overwrite``.  ``store`` and ``out`` may be URLs (object
    storage): the file is then written locally and put as one object.
    """
    out = parse_location(out)
    root = open_result(store)
    refuse_inside_store(out, "GeoJSON")
    refuse_existing(out, overwrite)
    if out.is_dir():
        raise OutputExistsError(f"{out}: is a directory")
    if compress is None:
        compress = out.suffix == ".gz"
    info: Any = root.attrs[ATTR]
    scale = float(info["grid_to_level0"])
    px_area_um2 = float(info["run_mpp"]) ** 2
    names = list(info["model"]["class_names"])
    colours = [list(c) for c in info["model"]["class_colours"]]
    table: Any = root["tables/nuclei"]
    area = np.asarray(table["area_um2"][:], np.float64)
    types = np.asarray(table["type"][:])
    probs = np.asarray(table["type_prob"][:], np.float64)

    summary = GeoJsonSummary(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with _written(out) as partial, _open_text(partial, compress) as fh:
            fh.write('{"type":"FeatureCollection","features":[\n')
            first = True
            for shape in iter_nucleus_shapes(root):
                if isinstance(shape, int):
                    summary.empty += 1
                    continue
                r = shape.row
                error = float(
                    abs(shape.geometry.area * px_area_um2 - area[r]) / max(area[r], 1e-12)
                )
                summary.max_area_error = max(summary.max_area_error, error)
                summary.area_mismatch += int(error > AREA_TOLERANCE)
                summary.multipolygons += int(shape.geometry.geom_type == "MultiPolygon")
                summary.with_holes += int(_has_holes(shape.geometry))
                summary.repaired += int(shape.repaired)
                if not first:
                    fh.write(",\n")
                fh.write(
                    _feature(
                        shape, scale, float(area[r]), int(types[r]), float(probs[r]), names, colours
                    )
                )
                first = False
                summary.features += 1
            fh.write("\n]}\n")
    except OSError as exc:
        raise OutputWriteError(
            f"{out}: cannot write the GeoJSON ({exc.strerror or exc}); choose a writable folder"
        ) from exc
    if summary.empty:
        logger.warning("%s: %d nuclei have no pixels in the label image", store, summary.empty)
    if summary.repaired:
        logger.warning("%s: %d outlines were invalid and repaired", store, summary.repaired)
    if summary.area_mismatch:
        logger.warning(
            "%s: %d outlines differ in area from the table by more than %.0f%% (max %.1f%%)",
            store,
            summary.area_mismatch,
            AREA_TOLERANCE * 100,
            summary.max_area_error * 100,
        )
    return summary


@contextmanager
def _written(out: StorePath) -> Iterator[Path]:
    """A local file to write that becomes ``out`` when the block ends without an error:
    replaced atomically, or put as one object for a URL."""
    if isinstance(out, RemotePath):
        with tempfile.TemporaryDirectory(prefix="wsi-infer-geojson-") as staging:
            partial = Path(staging) / out.name
            yield partial
            out.upload(partial)
    else:
        with atomic_write(out) as partial:
            yield partial


def _f32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (as stored in the table)."""
    return float(str(np.float32(value)))


def _has_holes(geom: Any) -> bool:
    polys = geom.geoms if geom.geom_type == "MultiPolygon" else [geom]
    return any(len(p.interiors) for p in polys)


@contextmanager
def _open_text(path: Path, compress: bool) -> Iterator[IO[str]]:
    if not compress:
        with path.open("w", encoding="utf-8") as fh:
            yield fh
        return
    # no file name and mtime 0 in the header: identical inputs give identical bytes
    with (
        path.open("wb") as raw,
        gzip_module.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
    ):
        text = io.TextIOWrapper(gz, encoding="utf-8")
        try:
            yield text
        finally:
            text.flush()
            text.detach()  # gz is closed by its own context
