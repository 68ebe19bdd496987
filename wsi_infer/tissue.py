"""Tissue detection on a low-resolution view of the slide, so glass costs nothing.

Stained tissue is coloured, glass and empty background are bright and grey:
a pixel is tissue when its saturation exceeds a threshold (Otsu's, clipped to
a sane range, unless one is given) and it is not near-white.  The mask is
closed, filled and cleaned of specks.  It is computed at ``mpp`` micrometres
per pixel, read block by block so that even a slide without a pyramid is
never loaded whole.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from wsi_infer.reader import GridReader, Slide

__all__ = ["TissueParams", "detect_tissue", "read_thumbnail"]


@dataclass(frozen=True)
class TissueParams:
    """Tissue-mask settings. ``enabled=False`` treats the whole slide as tissue."""

    enabled: bool = True
    mpp: float = 8.0
    saturation_threshold: float | None = None
    min_area_um2: float = 20_000.0
    dilate_um: float = 32.0

    def __post_init__(self) -> None:
        if self.mpp <= 0:
            raise ValueError("tissue mpp must be positive")
        if self.saturation_threshold is not None and not 0 <= self.saturation_threshold <= 1:
            raise ValueError("saturation threshold must lie in 0..1")
        if self.min_area_um2 < 0 or self.dilate_um < 0:
            raise ValueError("tissue areas and distances must be non-negative")


def read_thumbnail(
    slide: Slide, slide_mpp: float, mpp: float, max_block: int = 4096, threads: int = 2
) -> NDArray[np.uint8]:
    """The slide resampled to ``mpp`` (never finer than level 0), read in blocks; a
    slide without a coarse enough level is decoded on ``threads`` threads."""
    scale = max(mpp / slide_mpp, 1.0)
    grid = GridReader(slide, scale)
    step = max(1, int(max_block / max(grid.factor, 1.0)))
    out = np.empty((grid.height, grid.width, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="wsi-infer-thumbnail") as pool:
        for y in range(0, grid.height, step):
            for x in range(0, grid.width, step):
                h, w = min(step, grid.height - y), min(step, grid.width - x)
                out[y : y + h, x : x + w] = grid.read(x, y, w, h, pool)
    return out


def detect_tissue(
    rgb: NDArray[np.uint8], mpp: float, params: TissueParams = TissueParams()
) -> NDArray[np.bool_]:
    """Boolean tissue mask of an RGB thumbnail at ``mpp`` micrometres per pixel."""
    if not params.enabled:
        return np.ones(rgb.shape[:2], dtype=bool)
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_objects

    img = rgb.astype(np.float32) / 255.0
    mx, mn = img.max(axis=2), img.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    bright = img.mean(axis=2)
    if params.saturation_threshold is not None:
        thr = params.saturation_threshold
    elif np.ptp(sat) > 0:
        thr = float(np.clip(threshold_otsu(sat), 0.05, 0.3))
    else:
        thr = 0.05
    mask = (sat > thr) & (bright < 0.92)
    if not mask.any():
        return mask
    mask = ndi.binary_closing(mask, structure=disk(2), border_value=0)
    mask = ndi.binary_fill_holes(mask)
    min_px = params.min_area_um2 / (mpp * mpp)
    if min_px >= 1:
        mask = remove_small_objects(mask, max_size=math.ceil(min_px) - 1)
    r = round(params.dilate_um / mpp)
    if r > 0 and mask.any():
        mask = ndi.binary_dilation(mask, structure=disk(r))
    return np.asarray(mask, dtype=bool)
