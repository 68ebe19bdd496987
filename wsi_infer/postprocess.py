"""From the model's maps to nucleus instances.

The network gives, per pixel, a foreground probability, a distance map (each
nucleus' normalised distance to its border, 1 at its centre) and class
probabilities.  Instances grow from markers: the connected regions where the
distance exceeds ``marker_threshold`` (a nucleus' core); every foreground pixel
joins the nearest core of its own connected piece of foreground (no watershed:
the rule depends only on that piece, so a nucleus comes out the same in every
window holding it whole).  Foreground pieces holding no marker become one
instance each.  Everything here is deterministic.

Maps are kept compact while they travel between stages: one ``uint8`` array
``(H, W, 4)`` per region with channels :data:`MAP_CHANNELS`, probabilities
scaled to 0..255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from wsi_infer.heads import (
    MAP_CLASS,
    MAP_CLASS_PROB,
    MAP_DISTANCE,
    MAP_FOREGROUND,
    NUCLEUS_MAP_CHANNELS,
    NucleusHead,
)

__all__ = [
    "MAP_CHANNELS",
    "PostprocessParams",
    "Segmentation",
    "instance_types",
    "logits_to_maps",
    "pixel_types",
    "segment",
    "segment_sparse",
]

#: Channels of a compact map: foreground prob, distance, most likely nucleus class (1..K),
#: its probability among the nucleus classes (the layout of :class:`NucleusHead`).
MAP_CHANNELS = NUCLEUS_MAP_CHANNELS


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds of the instance extraction (probabilities in 0..1, areas in pixels)."""

    foreground_threshold: float = 0.5
    marker_threshold: float = 0.5
    min_area: int = 12
    min_marker_area: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.foreground_threshold < 1 or not 0 < self.marker_threshold < 1:
            raise ValueError("thresholds must lie strictly between 0 and 1")
        if self.min_area < 1:
            raise ValueError("min_area must be at least 1")
        if self.min_marker_area < 0:
            raise ValueError("min_marker_area must not be negative")

    @classmethod
    def for_model(cls, config: Any, **overrides: Any) -> PostprocessParams:
        """The model's own defaults (thresholds, areas in µm² at its mpp), then ``overrides``
        (``None`` values are ignored)."""
        px = config.mpp**2
        values: dict[str, Any] = {
            "foreground_threshold": config.foreground_threshold,
            "marker_threshold": config.marker_threshold,
            "min_area": max(1, math.ceil(config.min_nucleus_area_um2 / px)),
            "min_marker_area": math.ceil(config.min_marker_area_um2 / px),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def logits_to_maps(
    logits: NDArray[np.floating], head: NucleusHead | None = None
) -> NDArray[np.uint8]:
    """Network output ``(B, C, H, W)`` logits -> compact maps ``(B, H, W, 4)`` uint8.

    ``head``'s step (:meth:`wsi_infer.heads.NucleusHead.logits_to_maps`; the model's
    is ``config.head``); without one, the default layout of ``C`` channels.
    Channels: foreground and distance probabilities, then the most likely
    nucleus class (1..K) and its probability among the K nucleus classes.  The
    type head's background logit is left out: whether a pixel is a nucleus is
    the foreground head's call, so every nucleus gets a class.
    """
    logits = np.asarray(logits, dtype=np.float32)
    if head is None:
        head = NucleusHead.for_logits(logits.shape[1])
    return head.logits_to_maps(logits)


def segment(
    maps: NDArray[np.uint8], params: PostprocessParams = PostprocessParams()
) -> NDArray[np.int32]:
    """Compact maps ``(H, W, 4)`` -> instance labels ``(H, W)`` int32, 0 = background.

    Labels are numbered 1..n in raster order of each instance's first pixel.
    """
    return segment_sparse(maps, params).labels


@dataclass(frozen=True)
class Segmentation:
    """Instance labels and the same labels as a list of foreground pixels.

    ``pixels`` are the flat (raster) indices of the foreground pixels in
    increasing order and ``ids`` their labels (0 where a piece fell under
    ``min_area``): everything per instance is computed on these few pixels, not
    on the whole window.
    """

    labels: NDArray[np.int32]
    n: int
    pixels: NDArray[np.intp]
    ids: NDArray[np.int32]


def segment_sparse(
    maps: NDArray[np.uint8], params: PostprocessParams = PostprocessParams()
) -> Segmentation:
    """:func:`segment`, also returning the labelled pixels (see :class:`Segmentation`).

    Markers are the cores of nuclei: 4-connected regions where the distance map
    exceeds ``marker_threshold`` inside the foreground; cores under
    ``min_marker_area`` pixels seed nothing.  Every foreground pixel joins the
    nearest core (Euclidean distance, ties broken by scipy's feature transform)
    of its own 4-connected piece of foreground; a piece holding no core is one
    instance.  The rule depends only on the piece of foreground itself, so a
    nucleus comes out the same in every window that holds it whole.  Pieces with
    one core (most nuclei) need no distance work at all; the distance transform
    runs on the bounding box of each piece with several cores only.  The
    whole-window passes are scipy.ndimage's C loops (two labellings, which
    release the GIL); the rest works on the foreground pixels alone.
    """
    fg = maps[..., MAP_FOREGROUND] > round(params.foreground_threshold * 255)
    shape = fg.shape
    labels = np.zeros(shape, dtype=np.int32)
    comps, n_comps = ndi.label(fg, output=np.int32)
    if n_comps == 0:
        return Segmentation(labels, 0, np.zeros(0, np.intp), np.zeros(0, np.int32))
    cores = fg & (maps[..., MAP_DISTANCE] > round(params.marker_threshold * 255))
    markers, n_markers = ndi.label(cores, output=np.int32)
    pixels = np.flatnonzero(fg)
    comp_of = comps.ravel()[pixels]
    core_px = np.flatnonzero(cores)
    core_id = markers.ravel()[core_px]
    keep = np.ones(n_markers + 1, dtype=bool)
    keep[0] = False
    if n_markers and params.min_marker_area > 1:
        # Peaks too small to be a nucleus' core seed nothing: their pixels join a
        # neighbouring core, or their piece of foreground becomes one nucleus.
        keep &= np.bincount(core_id, minlength=n_markers + 1) >= params.min_marker_area
        dropped = ~keep[core_id]
        if dropped.any():
            markers.ravel()[core_px[dropped]] = 0
            core_px, core_id = core_px[~dropped], core_id[~dropped]
    core_comp = np.zeros(n_markers + 1, dtype=np.int32)
    core_comp[core_id] = comps.ravel()[core_px]
    kept_ids = np.flatnonzero(keep)
    cores_in = np.bincount(core_comp[kept_ids], minlength=n_comps + 1)
    # One id per piece: its only core's id, or a new one past the cores' ids.
    lut = np.arange(n_markers, n_markers + n_comps + 1, dtype=np.int32)
    single = kept_ids[cores_in[core_comp[kept_ids]] == 1]
    lut[core_comp[single]] = single
    lut[0] = 0
    labels.ravel()[pixels] = lut[comp_of]
    multi = np.flatnonzero(cores_in > 1)
    if multi.size:
        _nearest_core(labels, comps, markers, pixels, comp_of, multi, n_comps)
    ids = labels.ravel()[pixels]
    areas = np.bincount(ids)
    areas[0] = 0
    kept = areas >= params.min_area
    # renumber 1..n in raster order of each instance's first pixel
    first = np.full(areas.size, pixels.size, dtype=np.intp)
    np.minimum.at(first, ids, np.arange(pixels.size))
    order = np.flatnonzero(kept)
    order = order[np.argsort(first[order], kind="stable")]
    renum = np.zeros(areas.size, dtype=np.int32)
    renum[order] = np.arange(1, order.size + 1, dtype=np.int32)
    ids = renum[ids]
    labels.ravel()[pixels] = ids
    return Segmentation(labels, int(order.size), pixels, ids)


def _nearest_core(
    labels: NDArray[np.int32],
    comps: NDArray[np.int32],
    markers: NDArray[np.int32],
    pixels: NDArray[np.intp],
    comp_of: NDArray[np.int32],
    multi: NDArray[np.intp],
    n_comps: int,
) -> None:
    """Label each pixel of the pieces ``multi`` with its nearest core in the same piece."""
    is_multi = np.zeros(n_comps + 1, dtype=bool)
    is_multi[multi] = True
    sel = is_multi[comp_of]
    px, cp = pixels[sel], comp_of[sel]
    ys, xs = np.divmod(px, labels.shape[1])
    big = np.iinfo(np.intp).max
    y0 = np.full(n_comps + 1, big, np.intp)
    x0 = np.full_like(y0, big)
    y1 = np.zeros_like(y0)
    x1 = np.zeros_like(y0)
    np.minimum.at(y0, cp, ys)
    np.minimum.at(x0, cp, xs)
    np.maximum.at(y1, cp, ys)
    np.maximum.at(x1, cp, xs)
    for c in multi.tolist():
        sl = np.s_[y0[c] : y1[c] + 1, x0[c] : x1[c] + 1]
        piece = comps[sl] == c
        seeds = np.where(piece, markers[sl], 0)
        iy, ix = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
        labels[sl][piece] = seeds[iy[piece], ix[piece]]


def finish_labels(
    labels: NDArray[np.int32], foreground: NDArray[np.bool_], min_area: int
) -> NDArray[np.int32]:
    """Foreground left unlabelled becomes one instance per connected piece; instances under
    ``min_area`` pixels are dropped; the rest are numbered 1..n in raster order."""
    rest = foreground & (labels == 0)
    if rest.any():
        extra, _ = ndi.label(rest)
        labels[rest] = extra[rest] + labels.max()
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return renumber_raster(labels)


def renumber_raster(labels: NDArray[np.integer]) -> NDArray[np.int32]:
    """Renumber labels 1..n in raster order of each label's first pixel."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first, kind="stable")]
    lut = np.zeros(int(flat.max()) + 1 if flat.size else 1, dtype=np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def instance_types(
    labels: NDArray[np.integer], maps: NDArray[np.uint8], n: int | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Class and confidence of instances 1..n: the class whose summed per-pixel
    probability over the nucleus is largest, background excluded; confidence is
    that sum over the nucleus' area."""
    n = int(labels.max()) if n is None else n
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.float32)
    flat = labels.ravel()
    pixels = np.flatnonzero(flat)
    return pixel_types(flat[pixels], maps.reshape(-1, maps.shape[-1])[pixels], n)


def pixel_types(
    ids: NDArray[np.integer], values: NDArray[np.uint8], n: int
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """:func:`instance_types` from the labelled pixels alone: their instance ids (1..n,
    in raster order) and their map values ``(pixels, 4)``."""
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.float32)
    cls = values[:, MAP_CLASS].astype(np.intp)
    n_cls = max(int(cls.max()) + 1, 2) if cls.size else 2
    lab = ids.astype(np.intp)
    votes = np.bincount(
        lab * n_cls + cls, weights=values[:, MAP_CLASS_PROB] / 255.0, minlength=(n + 1) * n_cls
    ).reshape(n + 1, n_cls)
    area = np.bincount(lab, minlength=n + 1).astype(np.float64)
    v = votes[1:, 1:]
    best = v.argmax(axis=1)
    conf = v[np.arange(n), best] / np.maximum(area[1:], 1)
    types = np.where(v.max(axis=1) > 0, best + 1, 0).astype(np.uint8)
    return types, conf.astype(np.float32)
