"""How far two nucleus segmentations of the same pixels agree.

Used to check that a result does not depend on how the slide was cut into
tiles (``benchmarks/tile_invariance.py``), and useful for comparing any two
runs: nuclei are matched one to one at IoU > 0.5 (the same unique matching as
PQ), and the agreement is the share of nuclei matched, ``2 * matched / (n_a + n_b)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Agreement", "compare_labels"]


@dataclass(frozen=True)
class Agreement:
    """Nuclei in each segmentation, nuclei matched at IoU > 0.5, and the derived scores."""

    nuclei_a: int
    nuclei_b: int
    matched: int
    mean_iou: float

    @property
    def agreement(self) -> float:
        """Share of all nuclei that have their match: ``2 * matched / (n_a + n_b)``."""
        total = self.nuclei_a + self.nuclei_b
        return 1.0 if total == 0 else 2 * self.matched / total

    @property
    def pq(self) -> float:
        """Panoptic quality of b against a: agreement x mean IoU of the matched pairs."""
        return self.agreement * self.mean_iou if self.matched else float(self.nuclei_a == 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement, "pq": self.pq}


def compare_labels(a: NDArray[np.integer], b: NDArray[np.integer]) -> Agreement:
    """Match the instances of label images ``a`` and ``b`` (0 = background) at IoU > 0.5.

    IoU > 0.5 makes matches unique: an instance overlaps more than half of at
    most one other.
    """
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} vs {b.shape}")
    a = np.asarray(a).astype(np.int64, copy=False)
    b = np.asarray(b).astype(np.int64, copy=False)
    ids_a, area_a = np.unique(a[a > 0], return_counts=True)
    ids_b, area_b = np.unique(b[b > 0], return_counts=True)
    both = (a > 0) & (b > 0)
    if not both.any():
        return Agreement(int(ids_a.size), int(ids_b.size), 0, 0.0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    sa = area_a[np.searchsorted(ids_a, pairs[0])]
    sb = area_b[np.searchsorted(ids_b, pairs[1])]
    iou = inter / (sa + sb - inter)
    ok = iou > 0.5
    matched = int(ok.sum())
    return Agreement(
        int(ids_a.size),
        int(ids_b.size),
        matched,
        float(iou[ok].mean()) if matched else 0.0,
    )
