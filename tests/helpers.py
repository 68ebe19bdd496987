"""Comparison helpers for label images (shared by tests)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def match_instances(a: NDArray[np.integer], b: NDArray[np.integer]) -> tuple[int, int, int]:
    """Pairs of instances of ``a`` and ``b`` with IoU > 0.5 (unique by construction).

    Returns ``(matched, instances in a, instances in b)``.
    """
    a = a.astype(np.int64).ravel()
    b = b.astype(np.int64).ravel()
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a = np.bincount(a)
    area_b = np.bincount(b)
    union = area_a[pairs[0]] + area_b[pairs[1]] - inter
    iou = inter / union
    good = pairs[:, iou > 0.5]
    # IoU > 0.5 pairs are one-to-one: no instance appears twice
    assert len(np.unique(good[0])) == good.shape[1] == len(np.unique(good[1]))
    return good.shape[1], int((area_a[1:] > 0).sum()), int((area_b[1:] > 0).sum())


def panoptic_quality(a: NDArray[np.integer], b: NDArray[np.integer]) -> float:
    """PQ of ``b`` against ``a``: matched IoU sum / (TP + FP/2 + FN/2), IoU > 0.5 matching."""
    a = a.astype(np.int64).ravel()
    b = b.astype(np.int64).ravel()
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a, area_b = np.bincount(a), np.bincount(b)
    iou = inter / (area_a[pairs[0]] + area_b[pairs[1]] - inter)
    tp = int((iou > 0.5).sum())
    na, nb = int((area_a[1:] > 0).sum()), int((area_b[1:] > 0).sum())
    denom = tp + 0.5 * (na - tp) + 0.5 * (nb - tp)
    return float(iou[iou > 0.5].sum() / denom) if denom else 1.0


def assert_same_store(a: object, b: object, min_nuclei: int = 100) -> None:
    """Two complete stores hold identical labels (every level) and tables."""
    import zarr

    from wsi_infer.store import TABLE_COLUMNS

    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    ia, ib = ra.attrs["wsi_infer"], rb.attrs["wsi_infer"]
    assert ia["status"] == ib["status"] == "complete"
    for group in ("labels/nuclei", "labels/types"):
        levels = sorted(ra[group].array_keys())
        assert levels == sorted(rb[group].array_keys())
        for level in levels:
            np.testing.assert_array_equal(ra[f"{group}/{level}"][:], rb[f"{group}/{level}"][:])
    for col in TABLE_COLUMNS:
        np.testing.assert_array_equal(ra[f"tables/nuclei/{col}"][:], rb[f"tables/nuclei/{col}"][:])
    ids = ra["tables/nuclei/id"][:]
    assert ids.tolist() == list(range(1, len(ids) + 1))  # no nucleus twice, none lost
    assert ia["nuclei"] == ib["nuclei"] == len(ids) >= min_nuclei
