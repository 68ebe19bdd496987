"""From the model's maps to nucleus instances.

The network gives, per pixel, a foreground probability, a distance map (each
nucleus' normalised distance to its border, 1 at its centre) and class
probabilities.  Instances come from marker-controlled watershed: markers are
the connected regions where the distance exceeds ``marker_threshold``; the
watershed of the inverted distance, restricted to the foreground, grows them
to the nucleus borders.  Foreground regions holding no marker become one
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

__all__ = [
    "MAP_CHANNELS",
    "PostprocessParams",
    "instance_types",
    "logits_to_maps",
    "segment",
]

#: Channels of a compact map: foreground prob, distance, most likely nucleus class (1..K),
#: its probability among the nucleus classes.
MAP_CHANNELS = ("foreground", "distance", "type", "type_prob")


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


def logits_to_maps(logits: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Network output ``(B, C, H, W)`` logits -> compact maps ``(B, H, W, 4)`` uint8.

    Channels: foreground and distance probabilities, then the most likely
    nucleus class (1..K) and its probability among the K nucleus classes.  The
    type head's background logit is left out: whether a pixel is a nucleus is
    the foreground head's call, so every nucleus gets a class.
    """
    logits = np.asarray(logits, dtype=np.float32)
    fg = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    dist = 1.0 / (1.0 + np.exp(-logits[:, 1]))
    t = logits[:, 3:]
    t = np.exp(t - t.max(axis=1, keepdims=True))
    t /= t.sum(axis=1, keepdims=True)
    cls = t.argmax(axis=1)
    prob = np.take_along_axis(t, cls[:, None], axis=1)[:, 0]
    out = np.empty((*fg.shape, 4), dtype=np.uint8)
    out[..., 0] = np.rint(fg * 255)
    out[..., 1] = np.rint(dist * 255)
    out[..., 2] = cls + 1
    out[..., 3] = np.rint(prob * 255)
    return out


def segment(
    maps: NDArray[np.uint8], params: PostprocessParams = PostprocessParams()
) -> NDArray[np.int32]:
    """Compact maps ``(H, W, 4)`` -> instance labels ``(H, W)`` int32, 0 = background.

    Labels are numbered 1..n in raster order of each instance's first pixel.
    """
    fg = maps[..., 0] > round(params.foreground_threshold * 255)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    dist = maps[..., 1]
    # Markers: the cores of nuclei.  Every foreground pixel joins the nearest marker of its
    # own foreground component.  Unlike flooding, whose ties depend on the order pixels are
    # visited, this depends only on the pixel's neighbourhood, so a nucleus comes out the
    # same in every window that holds it whole.
    markers, n_markers = ndi.label(fg & (dist > round(params.marker_threshold * 255)))
    if n_markers and params.min_marker_area > 1:
        # Peaks too small to be a nucleus' core seed nothing: their pixels join a
        # neighbouring core, or their piece of foreground becomes one nucleus.
        sizes = np.bincount(markers.ravel())
        small = sizes < params.min_marker_area
        small[0] = False
        if small.any():
            markers[small[markers]] = 0
            markers, n_markers = ndi.label(markers > 0)
    labels = np.zeros(fg.shape, dtype=np.int32)
    if n_markers:
        comps, _ = ndi.label(fg)
        marker_comp = np.zeros(n_markers + 1, dtype=comps.dtype)
        marker_comp[markers[markers > 0]] = comps[markers > 0]
        labels = markers.astype(np.int32)
        # A pixel whose nearest seed lies in another component waits for seeds of its own
        # component to grow closer: a few rounds settle all but pathological shapes.
        for _ in range(6):
            todo = fg & (labels == 0)
            if not todo.any():
                break
            _, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
            nearest = labels[iy, ix]
            ok = todo & (marker_comp[nearest] == comps)
            if not ok.any():
                break
            labels[ok] = nearest[ok]
    return finish_labels(labels, fg, params.min_area)


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
    cls = maps[..., 2].astype(np.int64)
    prob = maps[..., 3].astype(np.float64) / 255.0
    m = labels > 0
    lab = labels[m].astype(np.int64)
    n_cls = max(int(cls.max()) + 1, 2)
    votes = np.zeros((n + 1, n_cls), dtype=np.float64)
    np.add.at(votes, (lab, cls[m]), prob[m])
    area = np.bincount(lab, minlength=n + 1).astype(np.float64)
    v = votes[1:, 1:]
    best = v.argmax(axis=1)
    conf = v[np.arange(n), best] / np.maximum(area[1:], 1)
    types = np.where(v.max(axis=1) > 0, best + 1, 0).astype(np.uint8)
    return types, conf.astype(np.float32)
