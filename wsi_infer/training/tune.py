"""Choose a model's post-processing on its validation split, and describe its training nuclei.

The engine turns maps into nuclei with a few thresholds (see
:class:`wsi_infer.postprocess.PostprocessParams`).  They belong to the model: a
better- or worse-calibrated model wants other ones.  :func:`tune_postprocess`
predicts the validation images once, then searches the thresholds by coordinate
ascent on validation bPQ (ties broken by mPQ), each candidate scored by the
engine's own post-processing.  :func:`nucleus_area_percentiles` gives the 5th,
50th and 95th percentiles of the training nuclei's areas in µm², stored with the
model for plausibility checks of runs (a wrong ``--mpp`` shows as nuclei far
smaller or larger than these).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from wsi_infer.config import ModelConfig
from wsi_infer.postprocess import PostprocessParams
from wsi_infer.training.data import Sample, Source
from wsi_infer.training.evaluate import maps_to_prediction, predict_maps
from wsi_infer.training.metrics import ScoreBoard

__all__ = ["SEARCH_SPACE", "apply_postprocess", "nucleus_area_percentiles", "tune_postprocess"]

logger = logging.getLogger(__name__)

#: Candidate values per model-config field, searched one field at a time.
SEARCH_SPACE: dict[str, tuple[float, ...]] = {
    "foreground_threshold": (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65),
    "marker_threshold": (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8),
    "min_marker_area_um2": (0.0, 0.5, 1.0, 2.0, 3.0, 5.0),
    "min_nucleus_area_um2": (3.0, 4.0, 6.0, 9.0, 12.0),
}
#: No candidate lets through a fragment under 3 µm² (a disc of 2 µm diameter): the smallest
#: nuclei of H&E (lymphocytes, about 5 µm across) are several times larger.


def apply_postprocess(config: ModelConfig, values: dict[str, Any]) -> ModelConfig:
    """``config`` with post-processing fields replaced."""
    return dataclasses.replace(config, **values)


def _score(
    items: Sequence[tuple[Sample, NDArray[np.uint8]]], params: PostprocessParams
) -> dict[str, Any]:
    board = ScoreBoard()
    for sample, maps in items:
        inst, types = maps_to_prediction(maps, params)
        board.add_prediction(sample.inst, sample.types, inst, types, sample.tissue)
    return board.summary()


def _key(summary: dict[str, Any]) -> tuple[float, float]:
    b, m = summary["bPQ"], summary["mPQ"]
    return (-1.0 if math.isnan(b) else b, -1.0 if math.isnan(m) else m)


@torch.no_grad()
def tune_postprocess(
    module: torch.nn.Module,
    config: ModelConfig,
    sources: Sequence[Source],
    *,
    device: torch.device | str = "cpu",
    rounds: int = 2,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post-processing values maximising validation bPQ; returns them and a report.

    The report holds the validation scores before and after, and every candidate
    tried with its bPQ and mPQ, so the choice can be checked.
    """
    was_training = module.training
    module.eval()
    items: list[tuple[Sample, NDArray[np.uint8]]] = []
    try:
        for src in sources:
            for i in range(len(src)):
                sample = src[i]
                items.append((sample, predict_maps(module, config, [sample.image], device)[0]))
    finally:
        module.train(was_training)
    current: dict[str, Any] = {k: float(getattr(config, k)) for k in SEARCH_SPACE}

    def evaluate(values: dict[str, float]) -> dict[str, Any]:
        return _score(items, PostprocessParams.for_model(apply_postprocess(config, values)))

    start = evaluate(current)
    best, best_summary = dict(current), start
    tried: list[dict[str, Any]] = [{**current, "bPQ": start["bPQ"], "mPQ": start["mPQ"]}]
    for r in range(rounds):
        changed = False
        for field, candidates in SEARCH_SPACE.items():
            for value in candidates:
                if value == best[field]:
                    continue
                values = {**best, field: value}
                summary = evaluate(values)
                tried.append({**values, "bPQ": summary["bPQ"], "mPQ": summary["mPQ"]})
                if _key(summary) > _key(best_summary):
                    best, best_summary, changed = values, summary, True
            logger.info("round %d, %s = %s: bPQ %.4f", r, field, best[field], best_summary["bPQ"])
        if not changed:
            break
    report = {
        "images": len(items),
        "before": {"values": current, "scores": start},
        "after": {"values": best, "scores": best_summary},
        "tried": tried,
    }
    return best, report


def nucleus_area_percentiles(
    sources: Sequence[Source], mpp: float, max_per_source: int = 200
) -> tuple[float, float, float]:
    """5th, 50th and 95th percentile of nucleus areas (µm²) over up to ``max_per_source``
    samples of each source (at the model's resolution ``mpp``); nuclei cut by an image's
    border are left out, being partial."""
    areas: list[NDArray[np.int64]] = []
    for src in sources:
        n = min(len(src), max_per_source)
        for i in np.linspace(0, len(src) - 1, n).round().astype(int) if n else []:
            inst = np.asarray(src[int(i)].inst)
            if not inst.any():
                continue
            border = np.unique(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]]))
            counts = np.bincount(inst.ravel().astype(np.int64))
            keep = np.ones(counts.size, bool)
            keep[0] = False
            keep[border] = False
            areas.append(counts[keep & (counts > 0)])
    if not areas or not np.concatenate(areas).size:
        raise ValueError("no whole nucleus in the training data")
    a = np.concatenate(areas).astype(np.float64) * mpp * mpp
    p5, p50, p95 = np.percentile(a, [5, 50, 95])
    return float(p5), float(p50), float(p95)
