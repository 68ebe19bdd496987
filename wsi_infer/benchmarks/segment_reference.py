"""The segmentation the engine used before it was made fast, kept as a yardstick.

Markers (cores of the distance map) grow over the foreground by rounds of a
whole-window Euclidean feature transform: a pixel takes the label of its
nearest labelled pixel when that pixel lies in its own foreground component,
else it waits for the next round (six at most).  ``benchmarks/segment_speed.py``
and the tests compare :func:`wsi_infer.postprocess.segment` with it (panoptic
quality) and time both.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from wsi_infer.postprocess import PostprocessParams, finish_labels

__all__ = ["segment_reference"]


def segment_reference(
    maps: NDArray[np.uint8], params: PostprocessParams | None = None
) -> NDArray[np.int32]:
    """Compact maps ``(H, W, 4)`` -> instance labels ``(H, W)`` int32, as before issue 12."""
    params = params or PostprocessParams()
    fg = maps[..., 0] > round(params.foreground_threshold * 255)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    dist = maps[..., 1]
    markers, n_markers = ndi.label(fg & (dist > round(params.marker_threshold * 255)))
    if n_markers and params.min_marker_area > 1:
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
