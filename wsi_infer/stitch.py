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

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer.params import RunParams
from wsi_infer.postprocess import PostprocessParams, pixel_types, segment_sparse
from wsi_infer.tiling import windows

__all__ = ["OnRows", "WindowNuclei", "segment_window", "stitch"]

#: Receives a run of final label rows: ``(first row, labels, types)``.
OnRows = Callable[[int, NDArray[np.uint32], NDArray[np.uint8]], None]


@dataclass
class WindowNuclei:
    """Nuclei owned by one window, in raster order of their first pixel.

    Their pixels are listed, not drawn: ``pixels_y``/``pixels_x`` (grid
    coordinates) with ``pixel_nucleus`` the row of the nucleus each belongs to.
    """

    bbox: NDArray[np.int64]  # (n, 4) grid y0 y1 x0 x1
    centroid: NDArray[np.float64]  # (n, 2) grid y x
    area: NDArray[np.int64]
    types: NDArray[np.uint8]
    probs: NDArray[np.float32]
    pixels_y: NDArray[np.intp]
    pixels_x: NDArray[np.intp]
    pixel_nucleus: NDArray[np.intp]

    def __len__(self) -> int:
        return len(self.area)

    @classmethod
    def empty(cls) -> WindowNuclei:
        none = np.zeros(0, np.intp)
        return cls(
            np.zeros((0, 4), np.int64),
            np.zeros((0, 2)),
            np.zeros(0, np.int64),
            np.zeros(0, np.uint8),
            np.zeros(0, np.float32),
            none,
            none,
            none,
        )


def segment_window(
    maps: zarr.Array[Any] | NDArray[np.uint8],
    core: tuple[int, int, int, int],
    margin: int,
    post: PostprocessParams,
) -> WindowNuclei:
    """Segment ``core`` plus ``margin`` of ``maps``; keep the nuclei whose centroid is in ``core``.

    Everything per nucleus (area, centroid, box, class) is computed from the
    list of labelled pixels that :func:`segment_sparse` returns, never from
    whole-window passes.
    """
    height, width = maps.shape[:2]
    y0, y1, x0, x1 = core
    wy0, wy1 = max(0, y0 - margin), min(height, y1 + margin)
    wx0, wx1 = max(0, x0 - margin), min(width, x1 + margin)
    window = np.ascontiguousarray(maps[wy0:wy1, wx0:wx1])
    seg = segment_sparse(window, post)
    n = seg.n
    if n == 0:
        return WindowNuclei.empty()
    labelled = seg.ids > 0
    ids = seg.ids[labelled].astype(np.intp)
    pixels = seg.pixels[labelled]
    yy, xx = np.divmod(pixels, window.shape[1])
    area = np.bincount(ids, minlength=n + 1)[1:]
    cy = np.bincount(ids, weights=yy, minlength=n + 1)[1:] / area + wy0
    cx = np.bincount(ids, weights=xx, minlength=n + 1)[1:] / area + wx0
    iy, ix = np.floor(cy), np.floor(cx)
    top = np.full(n + 1, window.shape[0], np.intp)
    left = np.full(n + 1, window.shape[1], np.intp)
    bottom = np.zeros(n + 1, np.intp)
    right = np.zeros(n + 1, np.intp)
    np.minimum.at(top, ids, yy)
    np.minimum.at(left, ids, xx)
    np.maximum.at(bottom, ids, yy)
    np.maximum.at(right, ids, xx)
    box = np.stack([top, bottom + 1, left, right + 1], 1)[1:]
    extent = np.maximum(box[:, 1] - box[:, 0], box[:, 3] - box[:, 2])
    # An object wider than the margin is no nucleus (and could not be seen whole): drop it.
    owned = np.flatnonzero((iy >= y0) & (iy < y1) & (ix >= x0) & (ix < x1) & (extent <= margin))
    if owned.size == 0:
        return WindowNuclei.empty()
    types, probs = pixel_types(ids, window.reshape(-1, window.shape[-1])[pixels], n)
    row = np.full(n + 1, -1, np.intp)
    row[owned + 1] = np.arange(owned.size)
    mine = row[ids]
    keep = mine >= 0
    bbox = box[owned].astype(np.int64) + np.array([wy0, wy0, wx0, wx0])
    return WindowNuclei(
        bbox,
        np.stack([cy[owned], cx[owned]], 1),
        area[owned].astype(np.int64),
        types[owned],
        probs[owned],
        yy[keep] + wy0,
        xx[keep] + wx0,
        mine[keep],
    )


class _Canvas:
    """Rolling label/type buffer over grid rows ``[base, base + rows)``, full width."""

    def __init__(self, width: int, chunk: int, margin: int) -> None:
        self.chunk = chunk
        self.rows = 2 * chunk + margin
        self.base = -chunk
        self.labels = np.zeros((self.rows, width), np.uint32)
        self.types = np.zeros((self.rows, width), np.uint8)

    def paint(self, part: WindowNuclei, first_id: int) -> None:
        """Paint a window's nuclei as ids ``first_id``, ``first_id + 1``, ...

        A window's nuclei never share a pixel; where one of an earlier window
        holds a pixel already, the first painted wins (deterministic, as ids
        follow raster order).
        """
        flat = (part.pixels_y - self.base) * self.labels.shape[1] + part.pixels_x
        labels, types = self.labels.ravel(), self.types.ravel()
        free = labels[flat] == 0
        flat = flat[free]
        labels[flat] = (part.pixel_nucleus[free] + first_id).astype(np.uint32)
        types[flat] = part.types[part.pixel_nucleus[free]]

    def flush(self, nuclei: Any, types: Any, height: int, on_rows: OnRows | None) -> None:
        """Write the first ``chunk`` rows (now final), hand them to ``on_rows``, and roll
        the buffer by ``chunk`` rows."""
        c = self.chunk
        y0, y1 = max(self.base, 0), min(self.base + c, height)
        if y1 > y0:
            labels = self.labels[y0 - self.base : y1 - self.base]
            types_ = self.types[y0 - self.base : y1 - self.base]
            nuclei[y0:y1] = labels
            types[y0:y1] = types_
            if on_rows is not None:
                on_rows(y0, labels, types_)
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
    busy: dict[str, float] | None = None,
    on_rows: OnRows | None = None,
) -> int:
    """Segment seamless ``maps`` window by window into ``nuclei_out``/``types_out``.

    Each nucleus is taken once, by the window holding its centroid, numbered in
    raster order of windows and of its first pixel; ``on_band`` receives each
    band's table rows.  ``before_band(y)`` is called before a band is read and
    may block until the maps' rows above ``y`` are final.  ``busy`` receives
    the windows' summed wall and thread-CPU seconds (``segment_busy_s``,
    ``segment_cpu_s``, measured in the threads that segment them) and the
    painting's (``stitch_paint_s``).  ``on_rows(y0, labels, types)`` receives the
    final rows as they are written, top to bottom (for the pyramids' coarser levels;
    the arrays are reused after the call).  Returns the number of nuclei.
    """
    height, width = maps.shape[:2]
    chunk = params.label_chunk
    canvas = _Canvas(width, chunk, params.margin)
    next_id = 1
    segment = functools.partial(_timed_window, maps, margin=params.margin, post=params.post)
    # A band's windows are segmented side by side, on threads kept for the whole slide.
    with ThreadPoolExecutor(params.threads, thread_name_prefix="wsi-infer-segment") as pool:
        for _, cores in windows(height, width, chunk, params.window_cols):
            if before_band is not None:
                before_band(min(cores[0][1] + params.margin, height))
            timed = list(pool.map(segment, cores))
            parts = tuple(part for part, _, _ in timed)
            t0 = time.perf_counter()
            rows = _paint_band(canvas, parts, next_id, scale, run_mpp)
            if busy is not None:
                busy["segment_busy_s"] = busy.get("segment_busy_s", 0.0) + sum(
                    w for _, w, _ in timed
                )
                busy["segment_cpu_s"] = busy.get("segment_cpu_s", 0.0) + sum(c for _, _, c in timed)
                busy["stitch_paint_s"] = busy.get("stitch_paint_s", 0.0) + time.perf_counter() - t0
            if on_band is not None:
                on_band(rows)
            next_id += len(rows["id"])
            canvas.flush(nuclei_out, types_out, height, on_rows)
    canvas.flush(nuclei_out, types_out, height, on_rows)  # the last band's rows
    return next_id - 1


def _timed_window(
    maps: Any, core: tuple[int, int, int, int], margin: int, post: PostprocessParams
) -> tuple[WindowNuclei, float, float]:
    """:func:`segment_window` with its wall and thread-CPU seconds."""
    t, c = time.perf_counter(), time.thread_time()
    part = segment_window(maps, core, margin, post)
    return part, time.perf_counter() - t, time.thread_time() - c


def _paint_band(
    canvas: _Canvas, parts: tuple[WindowNuclei, ...], first_id: int, scale: float, run_mpp: float
) -> dict[str, NDArray[Any]]:
    ident = first_id
    for part in parts:
        canvas.paint(part, ident)
        ident += len(part)
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
