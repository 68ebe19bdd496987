"""Per-slide statistics: how many nuclei of each class, how dense, how large.

Density is per mm² of tissue, the tissue area being the pixels of
``labels/tissue/0`` times the tissue mask's pixel area (``tissue.mpp``²).  The
mask is generous by design (closed, filled, dilated by 32 µm), and with
``--no-tissue-mask`` it is the whole slide.  Everything returned is plain JSON
(``None`` where a value is undefined), so it can be stored in the store's
attributes as ``wsi_infer.statistics``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import zarr

from wsi_infer.errors import IncompleteStoreError
from wsi_infer.storeinfo import StoreInfo, group_location

__all__ = ["slide_statistics", "tissue_area_mm2"]

logger = logging.getLogger(__name__)

UNCLASSIFIED = "unclassified"


def tissue_area_mm2(root: zarr.Group) -> float:
    """Area of the tissue mask in mm², summed chunk row by chunk row."""
    tissue = StoreInfo.read(root).tissue
    if tissue is None:
        raise IncompleteStoreError(
            f"{group_location(root)}: its attribute records no tissue mask; run the slide again with --overwrite"
        )
    mpp = float(tissue.mpp)
    mask = root["labels/tissue/0"]
    assert isinstance(mask, zarr.Array)
    step = int(mask.chunks[0])
    pixels = 0
    for y in range(0, int(mask.shape[0]), step):
        pixels += int(np.count_nonzero(np.asarray(mask[y : y + step])))
    return pixels * mpp * mpp / 1e6


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def slide_statistics(root: zarr.Group) -> dict[str, Any]:
    """Counts, densities and mean areas per class of the store ``root`` (any status).

    ::

        {"nuclei": n, "tissue_area_mm2": a, "density_per_mm2": n / a,
         "mean_area_um2": ..., "classes": {name: {"count", "fraction",
         "density_per_mm2", "mean_area_um2"}, ...}}

    ``classes`` lists the model's classes in order, then ``"unclassified"``
    when some nuclei have type 0.
    """
    names = list(StoreInfo.read(root).model.class_names)
    table: Any = root["tables/nuclei"]
    types = np.asarray(table["type"][:]).astype(np.int64)
    area = np.asarray(table["area_um2"][:], np.float64)
    n = len(types)
    tissue = tissue_area_mm2(root)
    k = len(names) + 1
    counts = np.bincount(types, minlength=k)
    sums = np.bincount(types, weights=area, minlength=k)
    classes: dict[str, dict[str, Any]] = {}
    order = [*range(1, len(names) + 1), *([0] if counts[0] else [])]
    for t in order:
        c = int(counts[t])
        classes[names[t - 1] if t else UNCLASSIFIED] = {
            "count": c,
            "fraction": _ratio(c, n),
            "density_per_mm2": _ratio(c, tissue),
            "mean_area_um2": _ratio(float(sums[t]), c),
        }
    return {
        "nuclei": n,
        "tissue_area_mm2": tissue,
        "density_per_mm2": _ratio(n, tissue),
        "mean_area_um2": _ratio(float(area.sum()), n),
        "classes": classes,
    }
