"""Plausibility warnings and the batch report, on real slides at right and wrong resolutions.

One batch (a manifest of crops of the three shared slides, each at its true resolution
and two at a wrong one) is run once by the command line; the tests read what it left:
warnings in the stores, the summary and the output, ``--strict``, and ``report.html``
(looked at by headless Chromium when it is installed).

The TCGA slide's file carries no resolution; its nuclei (lymphocytes 6-8 px across) say
about 1 µm/px.  The wrong resolutions are off by 2x, the usual mistake (a 20x slide taken
for 40x, or the reverse).  Version 3 of the bundled model does not reveal every wrong
resolution: the CMU crop at 0.125 (4x) gives blobs of training-like size (median 1.23x), and
the TCGA crop at 0.5 gives 12 nuclei at 239 per mm², above the 200 that triggers a probe (see
the README's "Plausibility warnings").
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import invoke

from wsi_infer.benchmarks import report_screenshot
from wsi_infer.benchmarks.report_screenshot import find_chromium, screenshot
from wsi_infer.config import ModelConfig
from wsi_infer.plausibility import FALLBACK_AREA_UM2, assess, candidate_mpps, reference_areas

RUN_OPTIONS = ("--backend", "torch", "--tile-size", "256", "--batch-size", "2", "--no-tissue-mask")
#: name -> (which slide, crop edge in level-0 px, --mpp or None, expected suggestion or None)
CASES: dict[str, tuple[str, int, float | None, float | None]] = {
    "cmu": ("cmu", 384, None, None),
    "cmu-at-0.25": ("cmu", 1024, 0.25, 0.5),
    "tma": ("tma", 384, None, None),
    "tcga-at-1": ("tcga", 192, 1.0, None),
    "tcga-at-2": ("tcga", 192, 2.0, 1.0),
    "tcga-at-0.5": ("tcga", 192, 0.5, 1.0),  # few nuclei: the probe finds the others
}


# ------------------------------------------------------------------------- the rules alone


def test_reference_areas_come_from_the_model_config_or_the_documented_fallback() -> None:
    assert reference_areas(ModelConfig()) == (FALLBACK_AREA_UM2, reference_areas(ModelConfig())[1])
    assert "config gives none" in reference_areas(ModelConfig())[1]
    trained = ModelConfig(train_area_um2=(8.0, 30.0, 90.0))
    assert reference_areas(trained)[0] == (8.0, 30.0, 90.0)
    assert candidate_mpps(0.125, 0.05, 20) == [0.25, 0.0625, 0.5]  # 0.03125 is no microscope's


def _assess(areas: list[float], **kw: object) -> list[str]:
    args: dict[str, object] = {
        "areas": np.asarray(areas),
        "type_prob": np.full(len(areas), 0.9),
        "n_classes": 5,
        "tissue_fraction": 0.5,
        "density_per_mm2": 3000.0,
        "config": ModelConfig(train_area_um2=(8.0, 30.0, 90.0)),
        "mpp": 0.5,
        "mpp_source": "--mpp",
    }
    args.update(kw)
    return [f.code for f in assess(**args)]  # type: ignore[arg-type]


def test_each_rule_fires_on_its_own_and_only_there() -> None:
    ok = list(np.linspace(10, 50, 100))  # median 30
    assert _assess(ok) == []
    assert _assess([a / 3 for a in ok]) == ["nucleus_area"]  # median 10: 0.33x
    assert _assess([a * 3 for a in ok]) == ["nucleus_area"]  # median 90: 3x
    assert _assess(ok[:40]) == []  # too few nuclei to judge
    assert _assess(ok, tissue_fraction=0.001) == ["little_tissue"]
    assert _assess(ok, tissue_fraction=None) == []  # --no-tissue-mask: not judged
    assert _assess(ok, density_per_mm2=50.0) == ["density"]
    assert _assess(ok, density_per_mm2=40_000.0) == ["density"]
    assert _assess(ok, type_prob=np.full(100, 0.3)) == ["low_confidence"]  # under 2/5


def test_the_probe_names_the_candidate_closest_to_training_within_the_band() -> None:
    ok = list(np.linspace(1, 5, 100))  # median 3: 0.1x of 30
    medians = {1.0: 12.0, 0.25: None, 2.0: 28.0, 0.125: 2.0}
    seen: list[float] = []

    def probe(mpp: float) -> tuple[float | None, int]:
        seen.append(mpp)
        m = medians[mpp]
        return m, 0 if m is None else 200

    (finding,) = assess(
        areas=np.asarray(ok),
        type_prob=np.full(100, 0.9),
        n_classes=5,
        tissue_fraction=0.5,
        density_per_mm2=3000.0,
        config=ModelConfig(train_area_um2=(8.0, 30.0, 90.0)),
        mpp=0.5,
        mpp_source="--mpp",
        probe=probe,
        candidates=candidate_mpps(0.5, 0.05, 20),
    )
    assert seen == [1.0, 0.25, 2.0]  # 2.0 is within 1.25x of training: no need for 0.125
    assert finding.suggested_mpp == 2.0 and "run again with --mpp 2" in finding.message
    assert "not 0.5 µm/px (from --mpp)" in finding.message

    (none_fit,) = assess(
        areas=np.asarray(ok),
        type_prob=np.full(100, 0.9),
        n_classes=5,
        tissue_fraction=0.5,
        density_per_mm2=3000.0,
        config=ModelConfig(train_area_um2=(8.0, 30.0, 90.0)),
        mpp=0.5,
        mpp_source="metadata",
        probe=lambda mpp: (3.0, 200),
        candidates=[1.0, 0.25],
    )
    assert (
        none_fit.suggested_mpp is None and "no resolution tried (1, 0.25 µm/px)" in none_fit.message
    )


# ------------------------------------------------------------------------ real runs, one batch


def _crop(shared: Path, which: str, size: int) -> np.ndarray:
    import openslide
    import tifffile

    if which == "tma":
        img = tifffile.imread(shared / "slides" / "he-tma-core-0.5mpp.ome.tif")
        return np.ascontiguousarray(img[400 : 400 + size, 400 : 400 + size])
    name, (x, y) = {
        "cmu": ("CMU-1-Small-Region.svs", (700, 1100)),
        "tcga": ("tcga-cr-7395-01a-01-ts1.svs", (1800, 1400)),
    }[which]
    with openslide.OpenSlide(str(shared / "slides" / name)) as osr:
        return np.ascontiguousarray(
            np.asarray(osr.read_region((x, y), 0, (size, size)).convert("RGB"))
        )


@pytest.fixture(scope="module")
def batch(
    shared: Path, make_slide: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The manifest's batch, run once (without --strict)."""
    true_mpp = {"cmu": 0.499, "tma": 0.50008, "tcga": None}
    lines = ["path,mpp,name"]
    for name, (which, size, mpp, _) in CASES.items():
        slide = make_slide(f"plausible-{name}.tif", _crop(shared, which, size), mpp=true_mpp[which])
        lines.append(f"{slide},{'' if mpp is None else mpp},{name}")
    folder = tmp_path_factory.mktemp("plausibility")
    (folder / "slides.csv").write_text("\n".join(lines) + "\n")
    out = folder / "results"
    code, stdout, stderr = invoke(
        "--manifest", folder / "slides.csv", "--out", out, *RUN_OPTIONS, "-q"
    )
    assert code == 0, stderr  # warnings never change the exit status
    (folder / "stdout.txt").write_text(stdout)
    (folder / "stderr.txt").write_text(stderr)
    return out


@pytest.mark.slow
def test_wrong_resolutions_are_named_and_correct_runs_give_no_warning(batch: Path) -> None:
    stderr = (batch.parent / "stderr.txt").read_text()
    summary = {
        r["store"].rpartition("/")[2].removesuffix(".zarr"): r
        for r in json.loads((batch / "summary.json").read_text())
    }
    for name, (_, _, mpp, suggested) in CASES.items():
        row = summary[name]
        assert row["status"] == "complete" and row["error"] is None
        stats = zarr.open_group(str(batch / f"{name}.zarr"), mode="r").attrs["wsi_infer"][
            "statistics"
        ]
        warnings = stats["warnings"]
        assert [w["message"] for w in warnings] == row["warnings"]
        if suggested is None:
            assert warnings == [], (name, warnings)
            assert f"{name}.tif" not in stderr
            continue
        (w,) = [w for w in warnings if w["code"] == "nucleus_area"]
        assert w["suggested_mpp"] == suggested, w
        assert f"probably not {mpp:g} µm/px (from --mpp)" in w["message"]
        assert (
            f"the likely resolution is {suggested:g} µm/px, run again with --mpp {suggested:g}"
            in w["message"]
        )
        line = f"wsi-infer: warning: {row['slide']}: {w['message']}"
        assert line in stderr.splitlines()
    csv = (batch / "summary.csv").read_text()
    assert "run again with --mpp 0.5" in csv and "warnings" in csv.splitlines()[0]


@pytest.mark.slow
def test_strict_fails_implausible_results_and_changes_nothing_else(
    batch: Path, tmp_path: Path
) -> None:
    manifest = batch.parent / "slides.csv"
    store = batch / "cmu-at-0.25.zarr"
    before = zarr.open_group(str(store), mode="r").attrs["wsi_infer"]["digests"]
    code, _, stderr = invoke("--manifest", manifest, "--out", batch, *RUN_OPTIONS, "--strict", "-q")
    assert code == 3  # some slides failed
    rows = {Path(r["store"]).stem: r for r in json.loads((batch / "summary.json").read_text())}
    assert {k: r["status"] for k, r in rows.items()} == {
        "cmu": "skipped",
        "cmu-at-0.25": "failed",
        "tma": "skipped",
        "tcga-at-1": "skipped",
        "tcga-at-2": "failed",
        "tcga-at-0.5": "failed",
    }
    assert (
        "--strict" in rows["cmu-at-0.25"]["error"] and "--mpp 0.5" in rows["cmu-at-0.25"]["error"]
    )
    errors = [ln for ln in stderr.splitlines() if ln.startswith("wsi-infer: error:")]
    assert len(errors) == 3
    # the result itself is the same complete, verified store
    assert zarr.open_group(str(store), mode="r").attrs["wsi_infer"]["digests"] == before
    code, _, err = invoke("inspect", store)
    assert code == 0
    # a single run: the warning on stderr, exit 0; with --strict one line and exit 1
    slide = rows["cmu-at-0.25"]["slide"]
    code, _, err = invoke(slide, "--out", store, "--mpp", "0.25", *RUN_OPTIONS, "-q")
    assert code == 0 and err.startswith("wsi-infer: warning:") and "--mpp 0.5" in err
    code, _, err = invoke(slide, "--out", store, "--mpp", "0.25", *RUN_OPTIONS, "-q", "--strict")
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("wsi-infer: error:") and "--strict" in lines[-1]
    # put the summary back as the first run left it, for the other tests
    code, _, _ = invoke("--manifest", manifest, "--out", batch, *RUN_OPTIONS, "-q")
    assert code == 0


@pytest.mark.slow
def test_the_report_shows_every_slide_and_the_batch(batch: Path, tmp_path: Path) -> None:
    page = (batch / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    summary = json.loads((batch / "summary.json").read_text())
    for row in summary:
        name = Path(row["store"]).stem
        assert f'id="{name}"' in page
        for w in row["warnings"]:
            assert html.escape(w, quote=True) in page
    # two pictures per slide (overlay and zoom), each a real PNG
    pictures = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pictures) == 2 * len(summary)
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    assert page.count("<svg") == 3  # class composition, density, time per slide
    for heading in ("Class composition", "Nucleus density", "Time per slide"):
        assert heading in page
    for cls in ("neoplastic", "inflammatory", "connective", "dead", "epithelial"):
        assert cls in page
    assert "nuclei per mm² of tissue" in page and "tiles/s" in page
    # `wsi-infer report` rebuilds it; a failure shows its error
    rows = [
        *summary,
        {
            **summary[0],
            "status": "failed",
            "nuclei": None,
            "store": str(batch / "gone.zarr"),
            "error": "gone.svs: cannot read pixels at level 0",
        },
    ]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    code, _, err = invoke("report", tmp_path, "--no-pictures")
    assert code == 0, err
    again = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "gone.svs: cannot read pixels at level 0" in again and "badge failed" in again
    assert "data:image/png" not in again


@pytest.mark.slow
@pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (Debian: apt-get install chromium): report not opened",
)
def test_the_report_opens_in_headless_chromium(batch: Path, tmp_path: Path) -> None:
    """The README's screenshot script, on this batch: the page renders, offline."""
    from PIL import Image

    shot = screenshot(batch / "report.html", tmp_path / "report.png", width=1400, height=2000)
    with Image.open(shot) as im:
        img = np.asarray(im.convert("RGB")).astype(int)
    assert img.shape[:2] == (2000, 1400)
    # not a blank page: the overlays and the plots put colour on it
    assert img.std() > 20 and (np.abs(img[..., 0] - img[..., 2]) > 60).mean() > 0.01
    # the script's command line: a batch folder in, a picture out
    assert (
        report_screenshot.main(
            ["--results", str(batch), "--out", str(tmp_path / "cli.png"), "--height", "600"]
        )
        == 0
    )
    with Image.open(tmp_path / "cli.png") as im:
        assert im.size == (1400, 600)


def test_a_median_inside_the_outer_band_warns_only_when_a_probe_fits_better() -> None:
    """Between the inner and the outer band (a model may merge the nuclei of a too-fine --mpp
    into blobs of plausible size) only a resolution that fits training better is a warning;
    too few nuclei at a low density are probed likewise."""
    config = ModelConfig(train_area_um2=(5.0, 20.0, 70.0))
    common = {
        "type_prob": np.full(100, 0.9),
        "n_classes": 5,
        "tissue_fraction": 0.5,
        "config": config,
        "mpp": 0.125,
        "mpp_source": "--mpp",
        "candidates": [0.25, 0.0625, 0.5],
    }
    blobs = np.full(100, 32.0)  # 1.6x the training median: inside 0.5..2.5x
    medians = {0.25: 26.0, 0.0625: 60.0, 0.5: 21.0}
    (found,) = assess(
        areas=blobs,
        density_per_mm2=3000.0,
        probe=lambda mpp: (medians[mpp], 200),
        **common,
    )
    assert found.code == "nucleus_area" and found.suggested_mpp == 0.5  # all tried, closest
    assert "run again with --mpp 0.5" in found.message
    # nothing fits 1.3x better (26/20 = 1.3x vs 1.6x), so nothing is said
    assert assess(areas=blobs, density_per_mm2=3000.0, probe=lambda m: (26.0, 200), **common) == []
    # inside the inner band the probe is not even run
    assert assess(areas=np.full(100, 25.0), density_per_mm2=3000.0, probe=None, **common) == []

    few = assess(
        areas=np.full(10, 6.0), density_per_mm2=150.0, probe=lambda m: (19.0, 40), **common
    )
    assert [f.code for f in few] == ["nucleus_area", "density"]
    assert few[0].message.startswith("only 10 nuclei found (150 per mm² of tissue)")
    assert few[0].suggested_mpp == 0.25
    # a plausible density, yet few nuclei under PROBE_DENSITY per mm²: the probe still looks
    sparse = assess(
        areas=np.full(5, 6.0), density_per_mm2=543.0, probe=lambda m: (20.4, 30), **common
    )
    assert [(f.code, f.suggested_mpp) for f in sparse] == [("nucleus_area", 0.25)]
    assert sparse[0].message.startswith("only 5 nuclei found (543 per mm² of tissue)")
    probed: list[float] = []

    def recording(mpp: float) -> tuple[float, int]:
        probed.append(mpp)
        return 20.4, 30

    dense = assess(areas=np.full(5, 6.0), density_per_mm2=1500.0, probe=recording, **common)
    assert dense == [] and probed == []  # few nuclei, but as dense as tissue: not probed
