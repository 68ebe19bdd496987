"""Is a finished result plausible?  Warnings for results that are probably wrong.

A run can finish without error and still be wrong: a slide run at the wrong
resolution (``--mpp``) gives nuclei of the wrong size, or none, and the model then
misses most of them.  After every run these checks look at the result:

* **nucleus_area** -- the median nucleus area against the median of the nuclei the
  model was trained on (``train_area_um2`` in the model's config, else
  :data:`FALLBACK_AREA_UM2`): below :data:`AREA_RATIO_LOW` or above
  :data:`AREA_RATIO_HIGH` times it is the usual sign of a wrong ``--mpp``.  Which
  resolution would fit is then measured, not guessed: the model is run on a few
  tiles of the slide (:data:`PROBE_TILES`, around nuclei it found) read as if the
  slide's pixels were 2, 1/2, 4 and 1/4 times the size it was run at (stopping at
  one within :data:`PROBE_GOOD_ENOUGH` of training), and the one whose median
  nucleus area comes closest to training (within the plausible band) is named.  (The areas themselves cannot say it: a model shown nuclei twice their
  trained size splits them into small pieces, so too-small areas come from both a
  too-coarse and a too-fine ``--mpp``.)
* **little_tissue** -- tissue under :data:`MIN_TISSUE_FRACTION` of the slide (a
  blank or out-of-focus scan, a failed tissue detection).
* **density** -- nuclei per mm² of tissue outside :data:`DENSITY_RANGE`.
* **low_confidence** -- more than :data:`LOW_CONFIDENCE_SHARE` of the nuclei with a
  class probability under twice chance (2 / number of classes).

Warnings are recorded in the store's statistics (``statistics.warnings``), the batch
summary and report, and printed; they never change the result or the exit status
(``--strict`` turns them into failures).  The thresholds were set on runs of the
project's real slides at their true resolutions and at wrong ones (README, "Plausibility
warnings"), with margins so that correct runs give none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FALLBACK_AREA_UM2",
    "Finding",
    "Probe",
    "assess",
    "candidate_mpps",
    "reference_areas",
]

logger = logging.getLogger(__name__)

#: 5th, 50th and 95th percentile (µm²) of the 40,427 labelled nuclei of CoNSeP (train and
#: test), MoNuSeg 2018 train, TNBC and CPM-15 at their own resolutions: the reference for a
#: model whose config has no ``train_area_um2``.
FALLBACK_AREA_UM2: tuple[float, float, float] = (2.9, 15.1, 59.2)
#: The median nucleus area may lie between these multiples of the training median.
AREA_RATIO_LOW = 0.5
AREA_RATIO_HIGH = 2.5
#: Within these multiples a median is taken as it is; between them and the outer band above
#: (a model may merge the small nuclei of a wrong resolution into blobs of plausible size)
#: a warning needs a probe that finds a resolution fitting training better.
AREA_RATIO_SURE = (0.65, 1.45)
#: How much closer (a factor) a probed resolution must bring the median to count as better.
PROBE_BETTER = 1.3
#: Fewer nuclei than this say nothing about their size or classes.
MIN_NUCLEI = 50
#: Tissue below this share of the slide is "almost none".
MIN_TISSUE_FRACTION = 0.005
#: Plausible nuclei per mm² of tissue.
DENSITY_RANGE = (200.0, 25_000.0)
#: Largest plausible share of nuclei whose class probability is under twice chance.
LOW_CONFIDENCE_SHARE = 0.6
#: Too few nuclei to judge their size (under :data:`MIN_NUCLEI`) at under this many per mm² of
#: tissue: the probe looks for nuclei at other resolutions.  Set above the lowest density of
#: the wrong resolutions seen (a 192 px TCGA region read at 0.5 µm/px instead of 1 found 5
#: nuclei at 542 per mm² with version 3 of the bundled model); correct runs of real tissue
#: find far more than 50 nuclei, and the probe names a resolution only where it finds some.
PROBE_DENSITY = 1000.0
#: Tiles the model is run on per candidate resolution.
PROBE_TILES = 4
#: Resolution multiples tried, the most common mistakes (20x for 40x and back) first.
PROBE_FACTORS = (2.0, 0.5, 4.0, 0.25)
#: A candidate whose median lies within this factor of the training median ends the probe.
PROBE_GOOD_ENOUGH = 1.25

#: A probe: candidate slide mpp -> (median nucleus area in µm², nuclei measured).
Probe = Callable[[float], tuple[float | None, int]]


@dataclass(frozen=True)
class Finding:
    """One warning: a code, a one-line message and the figures behind it."""

    code: str
    message: str
    figures: dict[str, float | None] = field(default_factory=dict)
    suggested_mpp: float | None = None

    def __post_init__(self) -> None:
        if not self.code or not self.message or "\n" in self.message:
            raise ValueError("a finding needs a code and a one-line message")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_areas(config: Any) -> tuple[tuple[float, float, float], str]:
    """The training nucleus areas (5th, 50th, 95th percentile, µm²) and where they come from."""
    train = getattr(config, "train_area_um2", None)
    if train is not None:
        return (float(train[0]), float(train[1]), float(train[2])), "the nuclei it was trained on"
    return FALLBACK_AREA_UM2, "typical labelled H&E nuclei, as the model's config gives none"


def candidate_mpps(mpp: float, low: float, high: float) -> list[float]:
    """The resolutions a probe tries: ``mpp`` times :data:`PROBE_FACTORS`, within bounds."""
    return [round(mpp * f, 6) for f in PROBE_FACTORS if low <= mpp * f <= high]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def assess(
    *,
    areas: NDArray[np.floating[Any]],
    type_prob: NDArray[np.floating[Any]],
    n_classes: int,
    tissue_fraction: float | None,
    density_per_mm2: float | None,
    config: Any,
    mpp: float,
    mpp_source: str,
    probe: Probe | None = None,
    candidates: Sequence[float] = (),
) -> list[Finding]:
    """The warnings for one result (empty when it looks plausible).

    ``mpp`` is the slide resolution the run used (``mpp_source``: "metadata" or
    "--mpp"); ``tissue_fraction`` is None when the tissue mask was off.
    ``probe`` measures the median area at other resolutions (``candidates``).
    """
    findings: list[Finding] = []
    n = len(areas)
    (p5, p50, p95), source = reference_areas(config)
    reference = (p5, p50, p95)
    if n >= MIN_NUCLEI:
        median = float(np.median(areas))
        ratio = median / p50
        head = (
            f"median nucleus area {_fmt(median)} µm² is {ratio:.2g}x the median of {source} "
            f"({_fmt(p50)} µm², 5th-95th percentile {_fmt(p5)}-{_fmt(p95)}): the slide's "
            f"resolution is probably not {_fmt(mpp)} µm/px (from {mpp_source})"
        )
        figures: dict[str, float | None] = {"median_area_um2": median, "area_ratio": ratio}
        if not AREA_RATIO_LOW <= ratio <= AREA_RATIO_HIGH:
            findings.append(_area_finding(head, figures, reference, mpp, probe, candidates))
        elif probe is not None and not AREA_RATIO_SURE[0] <= ratio <= AREA_RATIO_SURE[1]:
            beat = abs(math.log(ratio)) - math.log(PROBE_BETTER)
            found = _area_finding(head, figures, reference, mpp, probe, candidates, beat)
            if found.suggested_mpp is not None:
                findings.append(found)
    elif (
        n > 0
        and probe is not None
        and density_per_mm2 is not None
        and density_per_mm2 < PROBE_DENSITY
    ):
        # too few nuclei to judge their size: do others appear at another resolution?
        head = (
            f"only {n} nuclei found ({density_per_mm2:.0f} per mm² of tissue): the slide's "
            f"resolution is probably not {_fmt(mpp)} µm/px (from {mpp_source})"
        )
        found = _area_finding(head, {"nuclei": n}, reference, mpp, probe, candidates, math.inf)
        if found.suggested_mpp is not None:
            findings.append(found)
    if tissue_fraction is not None and tissue_fraction < MIN_TISSUE_FRACTION:
        findings.append(
            Finding(
                "little_tissue",
                f"almost no tissue found: {100 * tissue_fraction:.2g} % of the slide (plausible: "
                f"at least {100 * MIN_TISSUE_FRACTION:.2g} %); a blank or out-of-focus scan, or "
                "tissue too pale for the detection (--tissue-threshold, --no-tissue-mask)",
                {"tissue_fraction": tissue_fraction},
            )
        )
    lo, hi = DENSITY_RANGE
    if density_per_mm2 is not None and (
        (tissue_fraction is None or tissue_fraction >= MIN_TISSUE_FRACTION)
        and not lo <= density_per_mm2 <= hi
    ):
        findings.append(
            Finding(
                "density",
                f"{density_per_mm2:.0f} nuclei per mm² of tissue, outside the plausible "
                f"{lo:.0f}..{hi:.0f}; check the resolution (--mpp) and the tissue mask",
                {"density_per_mm2": density_per_mm2},
            )
        )
    if n >= MIN_NUCLEI and n_classes > 1:
        below = 2.0 / n_classes
        share = float(np.mean(np.asarray(type_prob) < below))
        if share > LOW_CONFIDENCE_SHARE:
            findings.append(
                Finding(
                    "low_confidence",
                    f"{100 * share:.0f} % of the nuclei have a class probability under "
                    f"{below:.2g} (plausible: at most {100 * LOW_CONFIDENCE_SHARE:.0f} %): "
                    "the classes are unreliable here (stain, tissue or resolution unlike "
                    "training)",
                    {"low_confidence_share": share, "probability_below": below},
                )
            )
    return findings


def _area_finding(
    head: str,
    figures: dict[str, float | None],
    reference: tuple[float, float, float],
    mpp: float,
    probe: Probe | None,
    candidates: Sequence[float],
    beat: float | None = None,
) -> Finding:
    """A ``nucleus_area`` finding; with ``beat`` (a log distance to the training median)
    only a probed resolution closer than that is suggested, and every candidate is tried."""
    _, p50, _ = reference
    figures = {**figures, "mpp": mpp}
    best: tuple[float, float, float] | None = None  # (distance, mpp, median)
    tried: list[str] = []
    if probe is not None:
        for cand in candidates:
            cand_median, count = probe(cand)
            tried.append(_fmt(cand))
            figures[f"probe_median_area_um2@{_fmt(cand)}"] = cand_median
            if cand_median is None or count < MIN_NUCLEI // 5:
                continue
            r = cand_median / p50
            if not AREA_RATIO_LOW <= r <= AREA_RATIO_HIGH:
                continue
            distance = abs(math.log(r))
            if beat is not None and distance >= beat:
                continue
            if best is None or distance < best[0]:
                best = (distance, cand, cand_median)
            if beat is None and distance < math.log(PROBE_GOOD_ENOUGH):
                break
    if best is not None:
        _, cand, cand_median = best
        figures["suggested_mpp"] = cand
        return Finding(
            "nucleus_area",
            f"{head}; read at {_fmt(cand)} µm/px the median is {_fmt(cand_median)} µm²: the "
            f"likely resolution is {_fmt(cand)} µm/px, run again with --mpp {_fmt(cand)}",
            figures,
            suggested_mpp=cand,
        )
    tail = (
        f"; no resolution tried ({', '.join(tried)} µm/px) fits better: check the resolution, "
        "the stain and the tissue"
        if tried
        else "; check the resolution (--mpp)"
    )
    return Finding("nucleus_area", head + tail, figures)


def probe_centres(
    centroids: NDArray[np.floating[Any]], k: int = PROBE_TILES
) -> NDArray[np.float64]:
    """``k`` of the nuclei's level-0 centroids, spread evenly through the table."""
    c = np.asarray(centroids, np.float64).reshape(-1, 2)
    if len(c) == 0:
        return c
    idx = np.unique(np.linspace(0, len(c) - 1, min(k, len(c))).round().astype(np.int64))
    return c[idx]


def make_probe(slide: Any, backend: Any, params: Any, centres: NDArray[np.float64]) -> Probe:
    """A :data:`Probe` running ``backend`` on tiles of ``slide`` centred on ``centres``.

    For a candidate slide resolution it reads the tiles as a run at that ``--mpp``
    would (resampled to the model's resolution), segments them with the run's
    post-processing and returns the median area (µm²) of the nuclei that do not
    touch a tile's border, and their number.
    """
    from wsi_infer.postprocess import segment
    from wsi_infer.reader import GridReader

    cfg = backend.config
    t = int(params.tile_size)

    def probe(mpp: float) -> tuple[float | None, int]:
        scale = cfg.mpp / mpp  # level-0 pixels per model pixel, as a run at this mpp
        reader = GridReader(slide, scale)
        tiles = [
            reader.read(round(x / scale) - t // 2, round(y / scale) - t // 2, t, t)
            for x, y in centres
        ]
        areas: list[NDArray[np.int64]] = []
        for k in range(0, len(tiles), params.batch_size):
            # uint8 tiles in, the compact maps out (normalised inside the model's graph)
            for m in backend(np.stack(tiles[k : k + params.batch_size])):
                labels = segment(m, params.post)
                counts = np.bincount(labels.ravel())
                edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
                counts[np.unique(edge)] = 0
                counts[0] = 0
                areas.append(counts[counts > 0])
        found = np.concatenate(areas) if areas else np.zeros(0, np.int64)
        logger.info("probe at %.4g µm/px: %d nuclei", mpp, len(found))
        if len(found) == 0:
            return None, 0
        return float(np.median(found)) * cfg.mpp**2, len(found)

    return probe
