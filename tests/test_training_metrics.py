"""Metrics on hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from wsi_infer.training.metrics import (
    ScoreBoard,
    aji,
    binarize,
    centroid_matches,
    dice,
    get_fast_pq,
    remap_label,
    score_image,
)

IntMap = NDArray[np.integer]


def square(
    shape: tuple[int, int], y: int, x: int, h: int, w: int, value: int, out: IntMap | None = None
) -> IntMap:
    a = np.zeros(shape, np.int32) if out is None else out
    a[y : y + h, x : x + w] = value
    return a


def reference_get_fast_pq(true: IntMap, pred: IntMap, match_iou: float = 0.5) -> list[float]:
    """PanNuke-metrics' get_fast_pq, verbatim in logic (loops over instances)."""
    true = np.copy(true)
    pred = np.copy(pred)
    true_id_list = list(np.unique(true))
    pred_id_list = list(np.unique(pred))
    true_masks = [None] + [np.array(true == t, np.uint8) for t in true_id_list[1:]]
    pred_masks = [None] + [np.array(pred == p, np.uint8) for p in pred_id_list[1:]]
    pairwise_iou = np.zeros([len(true_id_list) - 1, len(pred_id_list) - 1], dtype=np.float64)
    for true_id in true_id_list[1:]:
        t_mask = true_masks[true_id]
        for pred_id in list(np.unique(pred[t_mask > 0])):
            if pred_id == 0:
                continue
            p_mask = pred_masks[pred_id]
            total = (t_mask + p_mask).sum()
            inter = (t_mask * p_mask).sum()
            pairwise_iou[true_id - 1, pred_id - 1] = inter / (total - inter)
    pairwise_iou[pairwise_iou <= match_iou] = 0.0
    paired_true, paired_pred = np.nonzero(pairwise_iou)
    paired_iou = pairwise_iou[paired_true, paired_pred]
    paired_true += 1
    paired_pred += 1
    unpaired_true = [i for i in true_id_list[1:] if i not in paired_true]
    unpaired_pred = [i for i in pred_id_list[1:] if i not in paired_pred]
    tp, fp, fn = len(paired_true), len(unpaired_pred), len(unpaired_true)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return [dq, sq, dq * sq]


def test_perfect_prediction_scores_one() -> None:
    true = square((32, 32), 2, 2, 6, 6, 1)
    square((32, 32), 15, 15, 8, 5, 2, true)
    pred = np.where(true == 1, 7, np.where(true == 2, 3, 0))  # other ids, same nuclei
    (dq, _sq, pq), _ = get_fast_pq(true, pred)
    assert dq == 1.0
    assert pq == pytest.approx(1.0, abs=1e-5)
    assert aji(true, pred) == pytest.approx(1.0)
    assert dice(true, pred) == 1.0


def test_partial_overlap_worked_by_hand() -> None:
    # Nucleus A 4x4 (16 px) predicted by a 4x3 subset: IoU 12/16 = 0.75 -> matched.
    # Nucleus B 4x4 predicted shifted by 2 columns: IoU 8/24 = 1/3 -> FN and FP.
    # One more predicted nucleus far away: FP.
    true = square((20, 30), 0, 0, 4, 4, 1)
    square((20, 30), 10, 10, 4, 4, 2, true)
    pred = square((20, 30), 0, 0, 4, 3, 1)
    square((20, 30), 10, 12, 4, 4, 2, pred)
    square((20, 30), 16, 25, 3, 3, 3, pred)
    (dq, sq, pq), (pt, pp, piou) = get_fast_pq(true, pred)
    # TP 1, FP 2, FN 1: DQ = 1 / (1 + 1 + 0.5) = 0.4; SQ = 0.75.
    assert dq == pytest.approx(0.4)
    assert sq == pytest.approx(0.75, abs=1e-5)
    assert pq == pytest.approx(0.3, abs=1e-5)
    assert list(pt) == [1] and list(pp) == [1] and piou[0] == pytest.approx(0.75)
    # Same numbers as PanNuke's reference implementation.
    assert [dq, sq, pq] == pytest.approx(reference_get_fast_pq(true, pred))


def test_iou_exactly_half_is_not_a_match() -> None:
    true = square((10, 10), 0, 0, 2, 4, 1)  # 8 px
    pred = square((10, 10), 0, 0, 2, 2, 1)  # 4 px inside: IoU 0.5
    (dq, _, pq), _ = get_fast_pq(true, pred)
    assert dq == 0.0 and pq == 0.0


def test_matches_reference_on_random_blobs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        true = np.zeros((64, 64), np.int32)
        pred = np.zeros((64, 64), np.int32)
        for k in range(1, 12):
            y, x = rng.integers(0, 56, 2)
            h, w = rng.integers(3, 9, 2)
            true[y : y + h, x : x + w] = k
            dy, dx = rng.integers(-2, 3, 2)
            pred[max(0, y + dy) : y + dy + h, max(0, x + dx) : x + dx + w] = k
        t, p = remap_label(true), remap_label(pred)
        assert list(get_fast_pq(t, p)[0]) == pytest.approx(reference_get_fast_pq(t, p))


def test_aji_known_value() -> None:
    # True A (16 px); pred A' a 12 px subset, plus a disjoint 4 px prediction.
    # AJI = 12 / (16 + 4) = 0.6.
    true = square((20, 20), 0, 0, 4, 4, 1)
    pred = square((20, 20), 0, 0, 4, 3, 1)
    square((20, 20), 10, 10, 2, 2, 2, pred)
    assert aji(true, pred) == pytest.approx(0.6, abs=1e-6)
    # A missed nucleus adds its area to the union: 12 / (16 + 4 + 9).
    square((20, 20), 15, 0, 3, 3, 2, true)
    assert aji(true, pred) == pytest.approx(12 / 29, abs=1e-6)
    assert math.isnan(aji(np.zeros((4, 4), int), np.zeros((4, 4), int)))


def test_dice_known_value() -> None:
    a = square((10, 10), 0, 0, 2, 5, 1)  # 10 px
    b = square((10, 10), 1, 0, 2, 5, 1)  # 10 px, 5 shared
    assert dice(a, b) == pytest.approx(0.5)


def test_empty_class_is_nan_and_false_positives_of_it_are_ignored() -> None:
    true = square((20, 20), 0, 0, 4, 4, 1)
    square((20, 20), 10, 10, 4, 4, 2, true)
    true_types = np.where(true == 1, 1, np.where(true == 2, 2, 0))  # neoplastic, inflammatory
    pred = true.copy()
    square((20, 20), 16, 0, 3, 3, 3, pred)
    # A: right class; B: wrong class (connective); extra nucleus: dead (absent from truth).
    pred_types = np.where(pred == 1, 1, np.where(pred == 2, 3, np.where(pred == 3, 4, 0)))
    s = score_image(true, true_types, pred, pred_types)
    assert s.class_pq[0] == pytest.approx(1.0, abs=1e-5)  # neoplastic: perfect
    assert s.class_pq[1] == 0.0  # inflammatory present in truth, never predicted
    assert math.isnan(s.class_pq[2])  # connective absent from truth: NaN despite a prediction
    assert math.isnan(s.class_pq[3])  # dead: NaN, its false positive is ignored
    assert math.isnan(s.class_pq[4])
    assert s.mpq == pytest.approx(0.5, abs=1e-5)
    # Binary PQ sees 2 TP and 1 FP: DQ = 2 / 2.5.
    assert s.bpq == pytest.approx(0.8, abs=1e-5)
    assert (s.tp, s.fp, s.fn) == (2, 1, 0)
    assert (s.type_correct, s.type_known) == (1, 2)


def test_empty_truth_gives_nan_bpq() -> None:
    pred = square((10, 10), 0, 0, 3, 3, 1)
    s = score_image(np.zeros((10, 10), int), np.zeros((10, 10), int), pred, pred)
    assert math.isnan(s.bpq) and all(math.isnan(v) for v in s.class_pq)


def test_scoreboard_averages_per_tissue_then_over_tissues() -> None:
    true = square((20, 20), 0, 0, 4, 4, 1)
    perfect = true.copy()
    miss = np.zeros_like(true)
    board = ScoreBoard()
    # Tissue A: two patches, PQ 1 and 0 -> 0.5; tissue B: one patch with PQ 1 -> 1.
    board.add(score_image(true, true, perfect, true, tissue="A"))
    board.add(score_image(true, true, miss, miss, tissue="A"))
    board.add(score_image(true, true, perfect, true, tissue="B"))
    summary = board.summary()
    assert summary["bPQ"] == pytest.approx(0.75, abs=1e-5)  # not the patch mean 2/3
    assert summary["PQ"] == pytest.approx(2 / 3, abs=1e-5)
    assert summary["mPQ"] == pytest.approx(0.75, abs=1e-5)
    assert summary["tissue_bPQ"]["A"] == pytest.approx(0.5, abs=1e-5)
    assert summary["class_PQ"]["neoplastic"] == pytest.approx(2 / 3, abs=1e-5)
    assert math.isnan(summary["class_PQ"]["inflammatory"])
    assert summary["F1_iou"] == pytest.approx(2 / (2 + 0.5))


def test_binarize_keeps_restarting_ids_apart() -> None:
    ch = np.zeros((6, 6, 5), np.int32)
    ch[0:2, 0:2, 0] = 1
    ch[3:5, 3:5, 1] = 1  # same id, other class: another nucleus
    out = binarize(ch)
    assert sorted(np.unique(out)) == [0, 1, 2]


def test_centroid_matching_within_radius() -> None:
    t = np.array([[10.0, 10.0], [50.0, 50.0]])
    p = np.array([[12.0, 11.0], [80.0, 80.0], [49.0, 50.0]])
    ti, pi = centroid_matches(t, p, radius=5.0)
    assert sorted(zip(ti.tolist(), pi.tolist(), strict=False)) == [(0, 0), (1, 2)]
    ti, _ = centroid_matches(t, p, radius=1.5)
    assert list(ti) == [1]
