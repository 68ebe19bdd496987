"""Stage 2, segment and stitch: seamless maps in, every nucleus once out.

The maps are cut into windows (bands of ``label_chunk`` rows, ``window_cols``
wide) read with a margin on every side.  A nucleus belongs to the window whose
core holds its centroid, so each one is taken exactly once and whole; objects
wider than ``margin`` are no nuclei and are dropped, so whatever is kept was
seen whole.  Each band's nuclei are numbered in raster order (deterministic ids
1..n) and painted into a rolling canvas of ``2 * label_chunk + margin`` rows,
written out band by band: memory is bounded by the slide's width, never its area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer.params import RunParams
from wsi_infer.postprocess import PostprocessParams, instance_types, segment
from wsi_infer.tiling import windows

__all__ = ["WindowNuclei", "segment_window", "stitch"]


@dataclass
class WindowNuclei:
    """Nuclei owned by one window, in raster order of their first pixel."""

    bbox: NDArray[np.int64]  # (n, 4) grid y0 y1 x0 x1
    masks: list[NDArray[np.bool_]]
    centroid: NDArray[np.float64]  # (n, 2) grid y x
    area: NDArray[np.int64]
    types: NDArray[np.uint8]
    probs: NDArray[np.float32]

    @classmethod
    def empty(cls) -> WindowNuclei:
        return cls(
            np.zeros((0, 4), np.int64),
            [],
            np.zeros((0, 2)),
            np.zeros(0, np.int64),
            np.zeros(0, np.uint8),
            np.zeros(0, np.float32),
        )


def segment_window(
    maps: zarr.Array[Any] | NDArray[np.uint8],
    core: tuple[int, int, int, int],
    margin: int,
    post: PostprocessParams,
) -> WindowNuclei:
    """Segment ``core`` plus ``margin`` of ``maps``; keep the nuclei whose centroid is in ``core``."""
    from scipy import ndimage as ndi

    height, width = maps.shape[:2]
    y0, y1, x0, x1 = core
    wy0, wy1 = max(0, y0 - margin), min(height, y1 + margin)
    wx0, wx1 = max(0, x0 - margin), min(width, x1 + margin)
    window = np.asarray(maps[wy0:wy1, wx0:wx1])
    labels = segment(window, post)
    n = int(labels.max())
    if n == 0:
        return WindowNuclei.empty()
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    yy, xx = np.divmod(np.arange(flat.size), labels.shape[1])
    cy = np.bincount(flat, weights=yy, minlength=n + 1)[1:] / area + wy0
    cx = np.bincount(flat, weights=xx, minlength=n + 1)[1:] / area + wx0
    iy, ix = np.floor(cy), np.floor(cx)
    objects = ndi.find_objects(labels)
    extent = np.array(
        [
            max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
            for sl in objects
            if sl is not None
        ]
    )
    # An object wider than the margin is no nucleus (and could not be seen whole): drop it.
    owned = np.flatnonzero((iy >= y0) & (iy < y1) & (ix >= x0) & (ix < x1) & (extent <= margin))
    if owned.size == 0:
        return WindowNuclei.empty()
    types, probs = instance_types(labels, window, n)
    bbox = np.zeros((owned.size, 4), np.int64)
    masks = []
    for r, k in enumerate(owned):
        sl = objects[k]
        assert sl is not None
        masks.append(labels[sl] == k + 1)
        bbox[r] = (sl[0].start + wy0, sl[0].stop + wy0, sl[1].start + wx0, sl[1].stop + wx0)
    return WindowNuclei(
        bbox, masks, np.stack([cy[owned], cx[owned]], 1), area[owned], types[owned], probs[owned]
    )


class _Canvas:
    """Rolling label/type buffer over grid rows ``[base, base + rows)``, full width."""

    def __init__(self, width: int, chunk: int, margin: int) -> None:
        self.chunk = chunk
        self.rows = 2 * chunk + margin
        self.base = -chunk
        self.labels = np.zeros((self.rows, width), np.uint32)
        self.types = np.zeros((self.rows, width), np.uint8)

    def paint(self, bbox: NDArray[np.int64], mask: NDArray[np.bool_], ident: int, typ: int) -> None:
        y0, y1, x0, x1 = (int(v) for v in bbox)
        sub = self.labels[y0 - self.base : y1 - self.base, x0:x1]
        free = mask & (sub == 0)  # first painted wins: deterministic, as ids follow raster order
        sub[free] = ident
        self.types[y0 - self.base : y1 - self.base, x0:x1][free] = typ

    def flush(self, nuclei: Any, types: Any, height: int) -> None:
        """Write the first ``chunk`` rows (now final) and roll the buffer by ``chunk`` rows."""
        c = self.chunk
        y0, y1 = max(self.base, 0), min(self.base + c, height)
        if y1 > y0:
            nuclei[y0:y1] = self.labels[y0 - self.base : y1 - self.base]
            types[y0:y1] = self.types[y0 - self.base : y1 - self.base]
        self.labels[:-c] = self.labels[c:]
        self.labels[-c:] = 0
        self.types[:-c] = self.types[c:]
        self.types[-c:] = 0
        self.base += c


def stitch(
    maps: zarr.Array[Any] | NDArray[np.uint8],
    nuclei_out: zarr.Array[Any] | NDArray[np.uint32],
    types_out: zarr.Array[Any] | NDArray[np.uint8],
    params: RunParams,
    *,
    scale: float = 1.0,
    run_mpp: float = 1.0,
    on_band: Callable[[dict[str, NDArray[Any]]], None] | None = None,
    before_band: Callable[[int], None] | None = None,
) -> int:
    """Segment seamless ``maps`` window by window into ``nuclei_out``/``types_out``.

    Each nucleus is taken once, by the window holding its centroid, numbered in
    raster order of windows and of its first pixel; ``on_band`` receives each
    band's table rows.  ``before_band(y)`` is called before a band is read and
    may block until the maps' rows above ``y`` are final.  Returns the number of
    nuclei.
    """
    from dask.base import compute
    from dask.delayed import delayed

    height, width = maps.shape[:2]
    chunk = params.label_chunk
    canvas = _Canvas(width, chunk, params.margin)
    next_id = 1
    for _, cores in windows(height, width, chunk, params.window_cols):
        if before_band is not None:
            before_band(min(cores[0][1] + params.margin, height))
        parts = compute(
            *[delayed(segment_window)(maps, c, params.margin, params.post) for c in cores],
            scheduler="threads",
            num_workers=params.workers,
        )
        rows = _paint_band(canvas, parts, next_id, scale, run_mpp)
        if on_band is not None:
            on_band(rows)
        next_id += len(rows["id"])
        canvas.flush(nuclei_out, types_out, height)
    canvas.flush(nuclei_out, types_out, height)  # the last band's rows
    return next_id - 1


def _paint_band(
    canvas: _Canvas, parts: tuple[WindowNuclei, ...], first_id: int, scale: float, run_mpp: float
) -> dict[str, NDArray[Any]]:
    ident = first_id
    for part in parts:
        for k in range(len(part.masks)):
            canvas.paint(part.bbox[k], part.masks[k], ident, int(part.types[k]))
            ident += 1
    n = ident - first_id
    if n == 0:
        return {"id": np.zeros(0, np.uint32)}
    bbox = np.concatenate([p.bbox for p in parts])
    cen = np.concatenate([p.centroid for p in parts])
    # grid pixel centres -> level-0 pixel coordinates
    cx = (cen[:, 1] + 0.5) * scale - 0.5
    cy = (cen[:, 0] + 0.5) * scale - 0.5
    return {
        "id": np.arange(first_id, first_id + n, dtype=np.uint32),
        "centroid": np.stack([cx, cy], 1).astype(np.float32),
        "bbox": np.stack(
            [
                np.floor(bbox[:, 2] * scale),
                np.floor(bbox[:, 0] * scale),
                np.ceil(bbox[:, 3] * scale),
                np.ceil(bbox[:, 1] * scale),
            ],
            1,
        ).astype(np.int32),
        "area_um2": (np.concatenate([p.area for p in parts]) * run_mpp**2).astype(np.float32),
        "type": np.concatenate([p.types for p in parts]),
        "type_prob": np.concatenate([p.probs for p in parts]),
    }
