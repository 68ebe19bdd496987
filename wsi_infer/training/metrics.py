"""Instance segmentation metrics, as PanNuke's and HoVer-Net's reference code compute them.

PanNuke (Gamper et al., 2020; github.com/TissueImageAnalytics/PanNuke-metrics):

* per patch, binary PQ on all nuclei (``binarize``); NaN when the patch has no
  ground-truth nucleus;
* per patch and class, PQ of that class' instances; NaN when the ground truth
  has no nucleus of that class in the patch -- predictions of such a class are
  then ignored, as in the reference code;
* a patch's mPQ is the NaN-mean of its class PQs;
* bPQ and mPQ are NaN-means over tissues of the NaN-means over each tissue's
  patches; per-class PQ is the NaN-mean over all patches.

PQ itself is :func:`get_fast_pq`: unique matching at IoU > 0.5,
``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / (TP + 1e-6)``.

Also: AJI (HoVer-Net's ``get_fast_aji``), binary Dice, detection F1 by IoU
matching and by centroid matching within a radius, and the accuracy of the
class of matched nuclei.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

__all__ = [
    "ImageScores",
    "ScoreBoard",
    "aji",
    "binarize",
    "centroid_matches",
    "dice",
    "get_fast_pq",
    "jsonable",
    "remap_label",
    "score_image",
]

logger = logging.getLogger(__name__)

IntArray = NDArray[np.integer[Any]]


def remap_label(inst: IntArray) -> NDArray[np.int64]:
    """Ids 1..n, in increasing order of the old ids (PanNuke's ``remap_label``); 0 and
    negative ids are background."""
    from skimage.segmentation import relabel_sequential

    inst = np.asarray(inst).astype(np.int64)
    out: NDArray[np.int64] = relabel_sequential(np.where(inst > 0, inst, 0))[0]
    return out


def binarize(channels: IntArray) -> NDArray[np.int32]:
    """``(H, W, C)`` per-class instance maps -> one instance map (PanNuke's ``binarize``).

    Each (channel, id) is a separate instance; later channels overwrite earlier
    ones where they overlap.
    """
    out = np.zeros(channels.shape[:2], np.int32)
    count = 1
    for c in range(channels.shape[2]):
        ch = np.asarray(channels[..., c]).astype(np.int64)
        for j in np.unique(ch):
            if j == 0:
                continue
            out[ch == j] = count
            count += 1
    return out


def _overlaps(
    true: NDArray[np.int64], pred: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Intersections ``(T, P)``, true areas ``(T,)`` and pred areas ``(P,)`` of ids 1..T, 1..P."""
    nt, np_ = int(true.max(initial=0)), int(pred.max(initial=0))
    joint = np.bincount((true * (np_ + 1) + pred).ravel(), minlength=(nt + 1) * (np_ + 1))
    joint = joint.reshape(nt + 1, np_ + 1)
    t_area = joint.sum(axis=1)[1:]
    p_area = joint.sum(axis=0)[1:]
    return joint[1:, 1:], t_area, p_area


def _iou(true: NDArray[np.int64], pred: NDArray[np.int64]) -> NDArray[np.float64]:
    inter, ta, pa = _overlaps(true, pred)
    union = ta[:, None] + pa[None, :] - inter
    iou = np.zeros(inter.shape, np.float64)
    np.divide(inter, union, out=iou, where=inter > 0)
    return iou


def get_fast_pq(
    true: IntArray, pred: IntArray, match_iou: float = 0.5
) -> tuple[
    tuple[float, float, float], tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]
]:
    """``[DQ, SQ, PQ], [paired_true, paired_pred, paired_iou]`` of two instance maps.

    Same numbers as the reference ``get_fast_pq`` for ``match_iou >= 0.5`` (where
    matching above the threshold is necessarily unique).  Ids are remapped to
    1..n first; the returned pairs use the remapped ids.
    """
    if match_iou < 0.5:
        raise ValueError("only match_iou >= 0.5 (unique matching) is supported")
    t = remap_label(true)
    p = remap_label(pred)
    iou = _iou(t, p)
    paired_t, paired_p = np.nonzero(iou > match_iou)
    paired_iou = iou[paired_t, paired_p]
    tp = len(paired_t)
    fp = int(p.max(initial=0)) - tp
    fn = int(t.max(initial=0)) - tp
    denom = tp + 0.5 * fp + 0.5 * fn
    dq = tp / denom if denom > 0 else float("nan")
    sq = float(paired_iou.sum()) / (tp + 1.0e-6)
    return (dq, sq, dq * sq), (paired_t + 1, paired_p + 1, paired_iou)


def aji(true: IntArray, pred: IntArray) -> float:
    """Aggregated Jaccard Index (Kumar et al., 2017), as HoVer-Net's ``get_fast_aji``.

    Each true nucleus takes the prediction of highest IoU (a prediction may be
    taken more than once); unpaired true and predicted nuclei add their area to
    the union.  NaN when both maps are empty.
    """
    t = remap_label(true)
    p = remap_label(pred)
    inter, ta, pa = _overlaps(t, p)
    if ta.size == 0 and pa.size == 0:
        return float("nan")
    if ta.size == 0 or pa.size == 0:
        return 0.0
    union = ta[:, None] + pa[None, :] - inter
    iou = inter / (union + 1.0e-6)
    best = iou.argmax(axis=1)
    has = iou.max(axis=1) > 0
    rows = np.nonzero(has)[0]
    cols = best[rows]
    total_inter = float(inter[rows, cols].sum())
    total_union = float(union[rows, cols].sum())
    total_union += float(ta[~has].sum())
    used = np.zeros(pa.size, bool)
    used[cols] = True
    total_union += float(pa[~used].sum())
    return total_inter / total_union if total_union > 0 else float("nan")


def dice(true: IntArray, pred: IntArray) -> float:
    """Binary Dice of the foregrounds; NaN when both are empty."""
    a, b = np.asarray(true) > 0, np.asarray(pred) > 0
    denom = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / denom if denom else float("nan")


def centroids(inst: IntArray) -> NDArray[np.float64]:
    """``(n, 2)`` centroids (row, col) of ids 1..n (after :func:`remap_label`)."""
    t = remap_label(inst)
    n = int(t.max(initial=0))
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones(t.shape), t, np.arange(1, n + 1)), np.float64)


def centroid_matches(
    true_xy: NDArray[np.float64], pred_xy: NDArray[np.float64], radius: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Unique pairs (true index, pred index) minimising total distance, each within ``radius``.

    HoVer-Net's ``pair_coordinates``: Hungarian matching on Euclidean distance,
    then pairs farther than ``radius`` are dropped.
    """
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = np.linalg.norm(true_xy[:, None, :] - pred_xy[None, :, :], axis=-1)
    ti, pi = linear_sum_assignment(d)
    keep = d[ti, pi] <= radius
    return ti[keep].astype(np.int64), pi[keep].astype(np.int64)


def _instance_classes(inst: NDArray[np.int64], types: IntArray) -> NDArray[np.int64]:
    """Majority class of ids 1..n (0 for none; 255 = unknown counts as a class)."""
    n = int(inst.max(initial=0))
    if n == 0:
        return np.zeros(0, np.int64)
    m = inst > 0
    t = np.asarray(types).astype(np.int64)[m]
    votes = np.zeros((n + 1, 256), np.int64)
    np.add.at(votes, (inst[m], t), 1)
    return votes[1:].argmax(axis=1)


@dataclass
class ImageScores:
    """Scores of one patch."""

    tissue: str
    bpq: float
    class_pq: list[float]
    aji: float
    dice: float
    tp: int
    fp: int
    fn: int
    c_tp: int
    c_fp: int
    c_fn: int
    type_correct: int
    type_known: int

    @property
    def mpq(self) -> float:
        return _nanmean(self.class_pq)


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, np.float64)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(arr))


def score_image(
    true_inst: IntArray,
    true_types: IntArray | None,
    pred_inst: IntArray,
    pred_types: IntArray | None,
    tissue: str = "unknown",
    n_classes: int = 5,
    radius: float = 12.0,
) -> ImageScores:
    """All per-patch scores.  ``*_types`` are per-pixel class maps (0 background,
    class index + 1 on nuclei; any other value, e.g. 255, is an unknown class).

    Class PQs follow PanNuke: a class absent from the ground truth gets NaN; a
    patch without any ground-truth class gets NaN for every class.
    """
    t = remap_label(true_inst)
    p = remap_label(pred_inst)
    if t.max(initial=0) == 0:
        bpq = float("nan")
    else:
        (_, _, bpq), _ = get_fast_pq(t, p)
    class_pq: list[float] = []
    for c in range(1, n_classes + 1):
        if true_types is None:
            class_pq.append(float("nan"))
            continue
        tc = np.where(np.asarray(true_types) == c, t, 0)
        if not tc.any():
            class_pq.append(float("nan"))
            continue
        pc = np.where(np.asarray(pred_types) == c, p, 0) if pred_types is not None else 0 * p
        (_, _, pq_c), _ = get_fast_pq(tc, pc)
        class_pq.append(pq_c)
    # Detection by IoU > 0.5 and type accuracy of those matches.
    _, (pt, pp, _) = get_fast_pq(t, p)
    nt, npred = int(t.max(initial=0)), int(p.max(initial=0))
    correct = known = 0
    if true_types is not None and pred_types is not None and len(pt):
        tcls = _instance_classes(t, true_types)[pt - 1]
        pcls = _instance_classes(p, pred_types)[pp - 1]
        ok = (tcls >= 1) & (tcls <= n_classes)
        known = int(ok.sum())
        correct = int((tcls[ok] == pcls[ok]).sum())
    ci, _ = centroid_matches(centroids(t), centroids(p), radius)
    return ImageScores(
        tissue=tissue,
        bpq=bpq,
        class_pq=class_pq,
        aji=aji(t, p),
        dice=dice(t, p),
        tp=len(pt),
        fp=npred - len(pt),
        fn=nt - len(pt),
        c_tp=len(ci),
        c_fp=npred - len(ci),
        c_fn=nt - len(ci),
        type_correct=correct,
        type_known=known,
    )


def _f1(tp: int, fp: int, fn: int) -> float:
    d = tp + 0.5 * (fp + fn)
    return tp / d if d else float("nan")


@dataclass
class ScoreBoard:
    """Collects :class:`ImageScores` and summarises them the PanNuke way."""

    class_names: Sequence[str] = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
    images: list[ImageScores] = field(default_factory=list)

    def add_prediction(
        self,
        true_inst: IntArray,
        true_types: IntArray,
        pred_inst: IntArray,
        pred_types: IntArray | None,
        tissue: str = "unknown",
    ) -> None:
        """Score one patch and add it.  Its classes count when the ground truth is typed:
        some nucleus has a class, or none is marked unknown (255), so a typed patch without
        nuclei still counts the classes predicted on it."""
        typed = bool(((true_types > 0) & (true_types < 255)).any()) or not bool(
            (true_types == 255).any()
        )
        self.add(
            score_image(
                true_inst,
                true_types if typed else None,
                pred_inst,
                pred_types,
                tissue=tissue,
                n_classes=len(self.class_names),
            )
        )

    def add(self, scores: ImageScores) -> None:
        self.images.append(scores)

    def _per_tissue(self, values: Sequence[float]) -> tuple[float, dict[str, float]]:
        tissues = sorted({s.tissue for s in self.images})
        per = {
            tissue: _nanmean(
                [v for v, s in zip(values, self.images, strict=True) if s.tissue == tissue]
            )
            for tissue in tissues
        }
        return _nanmean(list(per.values())), per

    def summary(self) -> dict[str, Any]:
        """bPQ, mPQ (tissue-averaged, PanNuke), per-class PQ, mean per-patch PQ/AJI/Dice, F1s."""
        imgs = self.images
        bpq, bpq_t = self._per_tissue([s.bpq for s in imgs])
        mpq, mpq_t = self._per_tissue([s.mpq for s in imgs])
        per_class = {
            name: _nanmean([s.class_pq[k] for s in imgs]) for k, name in enumerate(self.class_names)
        }
        tp, fp, fn = (sum(getattr(s, a) for s in imgs) for a in ("tp", "fp", "fn"))
        ctp, cfp, cfn = (sum(getattr(s, a) for s in imgs) for a in ("c_tp", "c_fp", "c_fn"))
        known = sum(s.type_known for s in imgs)
        correct = sum(s.type_correct for s in imgs)
        return {
            "n_images": len(imgs),
            "bPQ": bpq,
            "mPQ": mpq,
            "PQ": _nanmean([s.bpq for s in imgs]),
            "AJI": _nanmean([s.aji for s in imgs]),
            "Dice": _nanmean([s.dice for s in imgs]),
            "F1_iou": _f1(tp, fp, fn),
            "F1_centroid": _f1(ctp, cfp, cfn),
            "type_accuracy": correct / known if known else float("nan"),
            "class_PQ": per_class,
            "tissue_bPQ": bpq_t,
            "tissue_mPQ": mpq_t,
            "counts": {"tp": tp, "fp": fp, "fn": fn, "centroid_tp": ctp},
        }


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN floats replaced by ``None`` (JSON ``null``), recursively."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
