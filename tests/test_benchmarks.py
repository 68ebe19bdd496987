"""The benchmark tools: the synthetic slide generator and a quick run of the benchmark.

Nothing here asserts a speed: only that the slide is what the benchmark claims and
that every measurement comes out finite and positive.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wsi_infer.benchmarks import bench
from wsi_infer.benchmarks.make_slide import (
    PatchBank,
    SlideSpec,
    level_shapes,
    load_patch_bank,
    make_slide,
    read_sidecar,
)


@pytest.fixture(scope="module")
def bank(data: Path) -> PatchBank:
    return load_patch_bank(data / "nuclei", max_groups=6)


def _tissue_pixels(rgb: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Stained pixels: saturated and not bright (glass is near-white and grey)."""
    img = rgb.astype(np.float32)
    mx, mn = img.max(axis=2), img.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    return (sat > 0.08) & (img.mean(axis=2) < 235)


def test_level_shapes() -> None:
    assert level_shapes(1024, 1024) == [(1024, 1024), (256, 256)]
    assert level_shapes(100_000, 60_000) == [
        (100_000, 60_000),
        (25_000, 15_000),
        (6250, 3750),
        (1563, 938),
        (391, 235),
    ]
    assert level_shapes(1000, 1000, downsample=2) == [(1000, 1000), (500, 500)]
    assert level_shapes(100, 80) == [(100, 80)]


def test_generated_slide_is_a_real_pyramidal_tiff(tmp_path: Path, bank: PatchBank) -> None:
    import openslide
    import tifffile

    from wsi_infer.reader import open_slide

    spec = SlideSpec(width=1024, height=1024, mpp=0.25, seed=3)
    path = make_slide(tmp_path / "s.tif", spec, bank).path
    info = read_sidecar(Path(path))
    assert info is not None and info.spec["seed"] == 3

    with openslide.OpenSlide(path) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert osr.level_dimensions == ((1024, 1024), (256, 256))
        assert osr.level_downsamples == pytest.approx((1.0, 4.0))
        level0 = np.asarray(osr.read_region((0, 0), 0, (1024, 1024)))[..., :3]
        level1 = np.asarray(osr.read_region((0, 0), 1, (256, 256)))[..., :3]
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)  # type: ignore[union-attr]
            assert page.compression == tifffile.COMPRESSION.JPEG
    with open_slide(path) as slide:
        assert slide.backend == "openslide" and slide.mpp == pytest.approx(0.25)

    # Tissue covers 30-50 % (the generator's own count and the pixels agree); glass is near-white.
    assert 0.25 <= info.tissue_fraction <= 0.55
    tissue = _tissue_pixels(level0)
    assert abs(tissue.mean() - info.tissue_fraction) < 0.12
    glass = level0[~tissue]
    assert np.median(glass) > 230 and glass.std() < 12
    # Stained tissue: H&E is pink/purple, so red and blue exceed green.
    stained = level0[tissue].astype(float).mean(axis=0)
    assert stained[0] > stained[1] and stained[2] > stained[1]
    # The 4x level is the level-0 image, smaller.
    small = level0.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(small - level1).mean() < 6


def test_generation_is_deterministic(tmp_path: Path, bank: PatchBank) -> None:
    import tifffile

    spec = SlideSpec(width=700, height=500, mpp=1.0, seed=7, tissue_fraction=0.35)
    a = tifffile.imread(make_slide(tmp_path / "a.tif", spec, bank).path)
    b = tifffile.imread(make_slide(tmp_path / "b.tif", spec, bank).path)
    assert a.shape == (500, 700, 3)
    np.testing.assert_array_equal(a, b)
    c = tifffile.imread(make_slide(tmp_path / "c.tif", SlideSpec(700, 500, 1.0, seed=8), bank).path)
    assert not np.array_equal(a, c)


def test_engine_finds_the_tissue(tmp_path: Path, bank: PatchBank) -> None:
    from wsi_infer.reader import open_slide
    from wsi_infer.tissue import detect_tissue, read_thumbnail

    spec = SlideSpec(width=2048, height=2048, mpp=1.0, seed=1, tissue_fraction=0.4)
    info = make_slide(tmp_path / "t.tif", spec, bank)
    with open_slide(info.path) as slide:
        mask = detect_tissue(read_thumbnail(slide, 1.0, 8.0), 8.0)
    # dilated by 32 µm and blurred at 8 µm/px: somewhat more than the true 40 %
    assert 0.3 <= mask.mean() <= 0.7


def test_fit_line() -> None:
    fit = bench.fit_line([1, 2, 3, 4], [3, 5, 7, 9])
    assert fit["slope"] == pytest.approx(2) and fit["intercept"] == pytest.approx(1)
    assert fit["r2"] == pytest.approx(1)
    noisy = bench.fit_line([1, 2, 3, 4], [3, 6, 6, 9])
    assert noisy["r2"] is not None and 0 < noisy["r2"] < 1
    assert bench.fit_line([5], [1])["r2"] is None


def test_stage_accounting_of_overlapping_stages() -> None:
    """Stages overlap: each is charged the busy time its threads measured, not a slice
    of the run, and the run is bound by the stage that fills most of its threads."""
    timings = {
        "tissue_s": 0.5,
        "predict_s": 9.0,
        "segment_s": 6.0,
        "write_s": 0.5,
        "predict_read_s": 3.0,
        "predict_read_cpu_s": 2.5,
        "predict_wait_s": 1.0,
        "predict_model_s": 5.0,
        "predict_write_s": 1.0,
        "predict_write_cpu_s": 0.8,
        "segment_busy_s": 16.0,
        "segment_cpu_s": 15.0,
        "stitch_paint_s": 0.4,
    }
    acc = bench.stage_accounting(timings, 10.0, workers=2)
    assert acc["busy_s"]["model"] == 5.0 and acc["model_busy_share"] == pytest.approx(0.5)
    assert acc["share"]["segment"] == pytest.approx(1.6)  # two threads, overlapping the model
    assert acc["load"]["segment"] == pytest.approx(0.8) and acc["load"]["read"] == 0.15
    assert acc["cpu_s"]["segment"] == 15.0 and acc["model_wait_s"] == 1.0
    assert acc["bound"] == "segment"
    busy_model = bench.stage_accounting({**timings, "predict_model_s": 9.5}, 10.0, workers=2)
    assert busy_model["bound"] == "model"  # the model busy 95 % of the run
    one_thread = bench.stage_accounting({**timings, "segment_busy_s": 6.0}, 10.0, workers=1)
    assert one_thread["load"]["segment"] == pytest.approx(0.6)
    assert one_thread["bound"] == "segment"
    reading = bench.stage_accounting(
        {**timings, "segment_busy_s": 2.0, "predict_read_s": 17.0}, 10.0, workers=2
    )
    assert reading["bound"] == "read"
    # the plausibility checks (which may run the model) are a stage of their own, not writing
    probed = bench.stage_accounting(
        {**timings, "segment_busy_s": 2.0, "plausibility_s": 6.0}, 10.0, workers=2
    )
    assert probed["busy_s"]["plausibility"] == 6.0 and probed["busy_s"]["write"] == 0.5
    assert probed["bound"] == "plausibility"
    # on a cluster of processes the model and reading have every process' threads
    cluster = bench.stage_accounting(
        {**timings, "predict_model_s": 9.5, "model_slots": 1}, 10.0, workers=2, processes=2
    )
    assert cluster["load"]["model"] == pytest.approx(0.475)
    assert cluster["load"]["read"] == pytest.approx(0.075)
    assert cluster["load"]["segment"] == pytest.approx(0.8) and cluster["bound"] == "segment"


def _numbers(tree: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(tree, bool) or not isinstance(tree, int | float):
        return []
    return [(path, float(tree))]


def acc_slots(timings: dict[str, float]) -> int:
    """The concurrent model calls of a run: one warm-up call each."""
    return max(1, int(timings.get("model_slots", 1)))


@pytest.mark.slow
def test_quick_benchmark(tmp_path: Path, tiny_model: Path, data: Path) -> None:
    out = tmp_path / "results"
    code = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_model),
            "--tile-size",
            "256",
            "--batch-size",
            "2",
            "--stage-seconds",
            "0.3",
            "--repeats",
            "2",
            "--slides-dir",
            str(tmp_path / "slides"),
            "--nuclei-dir",
            str(data / "nuclei"),
            "--out-dir",
            str(out),
            "--name",
            "quick",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"quick.json", "quick.txt", "quick.png"}
    result = json.loads((out / "quick.json").read_text())
    assert result["schema"] == bench.SCHEMA
    assert result["date"] and result["versions"]["wsi-infer"] and result["versions"]["torch"]
    machine = result["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1 and machine["ram_gb"] > 0
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "cpu family" in cpuinfo.read_text():  # hosts of one model name differ
        assert machine["cpu_generation"].startswith("family ")
        assert machine["cpu_generation"].split(", ")[-1] in {"avx512f", "avx2", "avx", "sse"}
    assert result["settings"]["slide_mpp"] == 1.0  # the tiny model's: no resampling

    runs = result["runs"]
    assert [(r["size"], r["workers"]) for r in runs] == [
        (s, w) for s in bench.QUICK_SIZES for w in (1, 2)
    ]
    required = [
        "stages.read.tiles_per_s",
        "stages.tissue.seconds",
        "stages.model.tiles_per_s",
        "stages.model.tiles_per_s_before_run",
        "stages.model.tiles_per_s_after_run",
        "stages.model.warmup_seconds",
        "timings.predict_model_cpu_s",
        "stages.model_in_run.busy_in_run",
        "stages.postprocess.mpx_per_s",
        "stages.postprocess.mpx_per_cpu_s",
        "stages.write.mb_per_s",
        "end_to_end.tiles_per_s",
        "end_to_end.mpx_per_s",
        "end_to_end.s_per_mm2",
        "end_to_end.peak_rss_mb",
        "end_to_end.cpu_util",
        "efficiency",
        "tissue_area_mm2",
    ]
    for run in runs:
        measured = ("stages", "end_to_end", "timings", "per_tile_s", "time_share")
        t = run["timings"]
        acc = run["stages_busy"]
        # the model runs one batch at a time: busy at most the whole predict stage
        assert 0 < t["predict_model_s"] <= t["predict_s"] * 1.001
        assert acc["model_busy_share"] == pytest.approx(
            t["predict_model_s"] / run["end_to_end"]["seconds"]
        )
        assert run["stages"]["model_in_run"]["busy_in_run"] == acc["model_busy_share"] <= 1
        # a thread's CPU time never exceeds the wall time it was measured over
        assert t["predict_read_cpu_s"] <= t["predict_read_s"] * 1.001 + 1e-3
        assert t["segment_cpu_s"] <= t["segment_busy_s"] * 1.001 + 1e-3
        assert (
            t["predict_model_cpu_s"] <= (t["predict_model_s"] + t["predict_wait_s"]) * 1.001 + 1e-3
        )
        # the model alone, measured before and after the run, pooled: between the two
        model = run["stages"]["model"]
        lo, hi = sorted((model["tiles_per_s_before_run"], model["tiles_per_s_after_run"]))
        assert lo * 0.999 <= model["tiles_per_s"] <= hi * 1.001
        assert model["warmup_calls"] == acc_slots(t)
        assert 0 < run["efficiency_cold"] <= run["efficiency"] * 1.000001
        assert acc["bound"] in bench.STAGES
        assert run["stages"]["model"]["output_bytes_per_tile"] == 256 * 256 * 4
        numbers = dict(_numbers({k: v for k, v in run.items() if k in measured}))
        numbers.update(_numbers({k: run[k] for k in ("efficiency", "predict_efficiency")}))
        numbers.update(_numbers({k: run[k] for k in ("tissue_area_mm2", "grid_mpx", "tiles")}))
        for key in required:
            assert f".{key}" in numbers, key
        for key, value in numbers.items():
            assert math.isfinite(value), key
            assert value > 0, key
        assert run["tiles"] >= 1 and run["bottleneck"] == acc["bound"]
        # two runs, each against the model alone around it; the figures are the median's
        # (of two, the lower efficiency)
        repeats = run["repeats"]
        assert len(repeats) == 2 and result["settings"]["repeats"] == 2
        assert run["efficiency"] == min(r["efficiency"] for r in repeats)
        (chosen,) = [r for r in repeats if r["efficiency"] == run["efficiency"]][:1]
        assert run["end_to_end"]["seconds"] == chosen["seconds"]
        assert run["end_to_end"]["cpu_seconds"] == chosen["cpu_seconds"]
        assert chosen["model_tiles_per_s"] == pytest.approx(model["tiles_per_s"])
        for r in repeats:
            assert r["efficiency"] == pytest.approx(r["tiles_per_s"] / r["model_tiles_per_s"])
        assert 0.25 <= run["slide_info"]["tissue_fraction"] <= 0.55
    for w in (1, 2):
        fit = result["scaling"][f"workers={w}"]
        assert fit["points"] == len(bench.QUICK_SIZES)
        assert math.isfinite(fit["slope"]) and math.isfinite(fit["intercept"])
        assert fit["r2"] is None or math.isfinite(fit["r2"])
    table = (out / "quick.txt").read_text()
    assert "model t/s" in table and "R²" in table
    assert table.count("each run (seconds / eff)") == len(runs)


def test_saved_results_hold_no_path_of_this_machine(tmp_path: Path) -> None:
    here, home = Path.cwd(), Path.home()
    result = {
        "runs": [{"slide": str(here / "wsi_infer/data/s.svs"), "size": 3}],
        "slide_info": {"path": str(home / ".cache/wsi-infer/x.tif")},
        "elsewhere": "/srv/slides/a.svs",
    }
    out = bench.portable(result)
    assert out["runs"][0] == {"slide": "wsi_infer/data/s.svs", "size": 3}
    assert out["slide_info"]["path"] == "~/.cache/wsi-infer/x.tif"
    assert out["elsewhere"] == "/srv/slides/a.svs"  # outside both: kept as it is
    assert result["runs"][0]["slide"].startswith(str(here))  # the result itself unchanged
