"""Segmentation speed per core, and agreement with the previous segmentation.

The model's maps of a slide's tissue tiles are made once, exactly as the engine
makes them (its predict path into an in-memory array; ``--maps`` reuses a saved
``.npy``), then cut into the engine's post-processing windows (core plus
margin).  On those windows:

* :func:`wsi_infer.postprocess.segment` and the previous algorithm
  (:mod:`wsi_infer.benchmarks.segment_reference`) are timed by the CPU time of the thread
  running them (``time.thread_time``): megapixels of window per CPU-second, which
  is what "per core" means and stays meaningful on a busy machine;
* the whole stage (:func:`wsi_infer.stitch.stitch`, one thread: segmentation,
  per-nucleus statistics, painting) is timed in grid megapixels per CPU-second of
  the process;
* panoptic quality (IoU > 0.5 matching) of the new against the previous
  segmentation of the whole grid, for the model's post-processing parameters and
  with ``--min-marker-area`` pixels.

``python -m wsi_infer.benchmarks.segment_speed --slide wsi_infer/data/CMU-1-Small-Region.svs``
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
from numpy.typing import NDArray

from wsi_infer.benchmarks.bench import DEFAULT_OUT_DIR, machine_info, package_versions
from wsi_infer.benchmarks.segment_reference import segment_reference
from wsi_infer.cli.options import (
    backend_option,
    entry_point,
    model_option,
    out_option,
    path_option,
    threads_option,
    tile_size_option,
)

__all__ = ["main", "segment_speed_command", "slide_maps", "speed"]

logger = logging.getLogger(__name__)


def slide_maps(
    slide_path: str, backend_name: str, model: str, tile_size: int | None, threads: int
) -> tuple[NDArray[np.uint8], Any, dict[str, Any]]:
    """The compact maps of the slide's tissue tiles (zeros elsewhere), its run parameters
    and facts about the prediction."""
    from wsi_infer.engine import _scale_for
    from wsi_infer.params import RunParams
    from wsi_infer.predict import PredictJob, predict_tiles
    from wsi_infer.reader import GridReader, open_slide, resolve_mpp
    from wsi_infer.recipe import BackendRecipe
    from wsi_infer.tiling import TileGrid
    from wsi_infer.tissue import detect_tissue, read_thumbnail

    probe = BackendRecipe(backend_name, model, threads=threads).build()
    params = RunParams.for_model(probe.config, tile_size=tile_size, workers=1)
    with open_slide(slide_path) as slide:
        mpp = resolve_mpp(slide, None)
        scale = _scale_for(mpp, probe.config.mpp)
        reader = GridReader(slide, scale)
        grid = TileGrid(reader.height, reader.width, params.tile_size, params.overlap)
        thumb = read_thumbnail(slide, mpp, params.tissue.mpp)
        tiles = grid.select(detect_tissue(thumb, params.tissue.mpp, params.tissue))
        maps = np.zeros((grid.height, grid.width, 4), np.uint8)
        # maps in memory and the caller's reader: a local task never opens the store fields
        where = Path(slide_path).absolute()
        job = PredictJob(
            str(where), "", str(where.parent), "", scale, grid, maps, BackendRecipe.of(probe)
        )
        lock = threading.Lock()
        t0 = time.perf_counter()
        bs = params.batch_size
        for k in range(0, len(tiles), bs):
            predict_tiles(job, tiles[k : k + bs], (probe, lock, reader))
        seconds = time.perf_counter() - t0
    return maps, params, {"tiles": len(tiles), "predict_seconds": seconds, "grid": grid.shape}


def _windows(maps: NDArray[np.uint8], params: Any) -> list[NDArray[np.uint8]]:
    from wsi_infer.tiling import windows

    h, w = maps.shape[:2]
    m = params.margin
    out = []
    for _, cores in windows(h, w, params.label_chunk, params.window_cols):
        for y0, y1, x0, x1 in cores:
            win = maps[max(0, y0 - m) : min(h, y1 + m), max(0, x0 - m) : min(w, x1 + m)]
            out.append(np.ascontiguousarray(win))
    return out


def speed(
    fn: Callable[[NDArray[np.uint8], Any], Any],
    wins: Sequence[NDArray[np.uint8]],
    post: Any,
    repeats: int,
) -> dict[str, float]:
    """Megapixels of window per CPU-second of this thread running ``fn`` on every window
    (median and best of ``repeats`` passes)."""
    mpx = sum(w.shape[0] * w.shape[1] for w in wins) / 1e6
    rates = []
    for _ in range(repeats):
        t = time.thread_time()
        for w in wins:
            fn(w, post)
        rates.append(mpx / (time.thread_time() - t))
    return {"mpx": mpx, "mpx_per_cpu_s": statistics.median(rates), "best": max(rates)}


def run(args: SimpleNamespace) -> dict[str, Any]:
    from wsi_infer.compare import compare_labels
    from wsi_infer.params import RunParams
    from wsi_infer.postprocess import segment
    from wsi_infer.stitch import stitch

    info: dict[str, Any] = {}
    if args.maps is not None:
        maps = np.load(args.maps)
        from wsi_infer.model import model_config

        params = RunParams.for_model(model_config(args.model), tile_size=args.tile_size, workers=1)
    else:
        maps, params, info = slide_maps(
            str(args.slide), args.backend, args.model, args.tile_size, args.threads
        )
        if args.save_maps is not None:
            np.save(args.save_maps, maps)
    wins = _windows(maps, params)
    results: dict[str, Any] = {}
    for label, post in (
        ("model", params.post),
        ("min_marker_area", replace(params.post, min_marker_area=args.min_marker_area)),
    ):
        new = speed(segment, wins, post, args.repeats)
        old = speed(segment_reference, wins, post, 1 if args.quick else max(1, args.repeats // 2))
        whole_new = segment(maps, post)
        whole_old = segment_reference(maps, post)
        results[label] = {
            "post": asdict(post),
            "segment": new,
            "reference": old,
            "speedup": new["mpx_per_cpu_s"] / old["mpx_per_cpu_s"],
            "nuclei": int(whole_new.max()),
            "nuclei_reference": int(whole_old.max()),
            "pq_vs_reference": compare_labels(whole_old, whole_new).pq,
            "identical": bool(np.array_equal(whole_new, whole_old)),
        }
    out = np.zeros(maps.shape[:2], np.uint32)
    types = np.zeros(maps.shape[:2], np.uint8)
    c0 = time.process_time()
    n = stitch(maps, out, types, params)
    stitch_cpu = time.process_time() - c0
    grid_mpx = maps.shape[0] * maps.shape[1] / 1e6
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": package_versions(),
        "settings": {
            "slide": None if args.slide is None else args.slide.name,
            "maps": None if args.maps is None else args.maps.name,
            "model": args.model,
            "backend": args.backend,
            "tile_size": params.tile_size,
            "label_chunk": params.label_chunk,
            "window_cols": params.window_cols,
            "margin": params.margin,
            "repeats": args.repeats,
        },
        "prediction": info,
        "grid_mpx": grid_mpx,
        "windows": len(wins),
        "foreground_fraction": float(
            (maps[..., 0] > round(params.post.foreground_threshold * 255)).mean()
        ),
        "segmentation": results,
        "stitch": {
            "nuclei": n,
            "cpu_seconds": stitch_cpu,
            "grid_mpx_per_cpu_s": grid_mpx / stitch_cpu,
        },
    }


@click.command(
    "python -m wsi_infer.benchmarks.segment_speed",
    help=__doc__,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@path_option("--slide", help="slide whose tissue tiles the model predicts")
@path_option("--maps", help="saved maps (H, W, 4) uint8 .npy")
@path_option("--save-maps", help="keep the predicted maps here (.npy)")
@model_option()
@backend_option(default="onnxruntime")
@tile_size_option(default=512)
@threads_option(default=2, help="inference threads")
@click.option(
    "--min-marker-area", type=int, default=16, show_default=True, help="px, the second setting"
)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--quick", is_flag=True, help="one timing pass of the reference")
@out_option(default=DEFAULT_OUT_DIR / "segment-speed.json", help="the report (JSON)")
def segment_speed_command(**options: Any) -> int:
    args = SimpleNamespace(**options)
    if (args.slide is None) == (args.maps is None):
        raise click.UsageError("give one of --slide and --maps")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for label, r in result["segmentation"].items():
        logger.info(
            "%s: segment %.1f Mpx per CPU-s (previous %.1f, x%.1f); %d nuclei (previous %d), "
            "PQ %.4f",
            label,
            r["segment"]["mpx_per_cpu_s"],
            r["reference"]["mpx_per_cpu_s"],
            r["speedup"],
            r["nuclei"],
            r["nuclei_reference"],
            r["pq_vs_reference"],
        )
    logger.info("stitch stage: %.1f grid Mpx per CPU-s", result["stitch"]["grid_mpx_per_cpu_s"])
    logger.info("wrote %s", args.out)
    return 0


main = entry_point(segment_speed_command, "python -m wsi_infer.benchmarks.segment_speed")


if __name__ == "__main__":
    sys.exit(main())
