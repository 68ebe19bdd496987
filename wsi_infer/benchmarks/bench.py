"""Stage-by-stage throughput of the engine on realistic synthetic slides.

For each slide size (slides from :mod:`wsi_infer.benchmarks.make_slide`, cached) and each
number of dask workers, one subprocess runs :func:`wsi_infer.engine.run_slide`
exactly as ``wsi-infer`` does (so peak RSS and CPU time are per run), then, on
the same backend, tile selection and slide, measures each stage on its own:

* **read**: read + decode of the engine's tiles through :class:`GridReader` (one thread);
* **tissue**: tissue detection seconds (the run's ``tissue_s``);
* **model**: the backend alone on pre-read batches of the run's tissue tiles (uint8 in,
  compact maps out, as the engine calls it; same batch size, tile size, device and
  concurrent calls), looped for ``--stage-seconds`` just before the run and again just
  after it, pooled (a machine's speed drifts; both sides of the efficiency then move alike);
* **model in run**: the model's busy time inside the run, as the predict tasks
  measure it around each backend call: its speed there and the share of the run
  it was busy;
* **post-processing**: grid Mpx per second of the run's ``segment_s`` (segment +
  stitch, wall) and per CPU-second of the threads that segmented;
* **store write**: MB/s writing the run's label arrays band by band into a zarr store
  with the same chunks and codecs.

The stages of a run overlap (reading beside the model, segmentation of the top
bands while the model predicts lower rows), so they are never timed as if they
ran one after another: each stage's busy time (wall and thread CPU) is measured
by the threads doing it (:func:`stage_accounting`), and the stage that bounds the
run is the one whose busy time fills most of the run given its threads.

End to end: tiles/s, Mpx/s, seconds per mm² of tissue, peak RSS, CPU utilisation,
and the engine's efficiency: end-to-end tiles/s over model-only tiles/s.  Over the sizes: a linear fit of run
time against tissue area (slope, intercept, R²) per worker count.

Results go to ``--out-dir`` (``benchmarks/results/``) as ``bench-<UTC time>.json``
(with machine info and package versions), ``.txt`` (the table) and ``.png`` (plots).

``python -m wsi_infer.benchmarks.bench --sizes 4096 8192 12288 16384 --workers 1 2``
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from wsi_infer.benchmarks.make_slide import (
    DEFAULT_NUCLEI_DIR,
    SlideInfo,
    SlideSpec,
    load_patch_bank,
    make_slide,
    read_sidecar,
)
from wsi_infer.cli.options import (
    backend_option,
    device_option,
    entry_point,
    model_option,
    multi_option,
    overlap_option,
    path_option,
    paths_option,
    tile_size_option,
)
from wsi_infer.options import RunOptions

if TYPE_CHECKING:
    pass

__all__ = [
    "RunConfig",
    "bench_command",
    "fit_line",
    "main",
    "portable",
    "run_benchmark",
    "run_child",
    "stage_accounting",
]

logger = logging.getLogger(__name__)

#: The run's defaults, the same as ``wsi-infer run``'s.
RUN_DEFAULTS = RunOptions()

SCHEMA = "wsi-infer-bench/1"
#: The repository (or install) root, from which ``python -m wsi_infer.benchmarks.bench`` imports.
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT_DIR = Path("benchmarks") / "results"
DEFAULT_SLIDES_DIR = Path.home() / ".cache" / "wsi-infer" / "bench-slides"
DEFAULT_SIZES = (4096, 8192, 12288, 16384)
QUICK_SIZES = (768, 1024)
#: A random, seeded b0 model: same speed as the trained one, for machines without it.
RANDOM_MODEL = "random-b0"
PACKAGES = (
    "wsi-infer",
    "torch",
    "numpy",
    "scipy",
    "scikit-image",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "imagecodecs",
    "zarr",
    "dask",
    "pillow",
    "onnxruntime",
)
#: Stages a run is made of, for :func:`stage_accounting`.
STAGES = ("tissue", "read", "model", "maps_write", "segment", "stitch", "write", "plausibility")
#: A run whose model is busy this share of the time is bound by the model.
MODEL_BOUND = 0.9


@dataclass(frozen=True)
class RunConfig:
    """One engine run: what the parent hands its subprocess (as JSON)."""

    slide: str
    size: int
    workers: int
    model: str
    backend: str
    device: str
    tile_size: int
    overlap: int
    batch_size: int
    stage_seconds: float
    store: str
    #: >0: the run on a local dask cluster of this many processes (``workers`` threads
    #: each, every one with its own model), as ``wsi-infer --processes``; 0: threads here
    processes: int = 0
    #: runs of the slide, each between two model-only measurements; the figures are
    #: those of the run of median efficiency
    repeats: int = 1


# --------------------------------------------------------------------------- helpers


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Least-squares ``y = slope * x + intercept`` and its R² (``None`` where undefined)."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if xa.size < 2 or np.ptp(xa) == 0:
        return {"slope": None, "intercept": None, "r2": None, "points": int(xa.size)}
    slope, intercept = np.polyfit(xa, ya, 1)
    ss_res = float(((ya - (slope * xa + intercept)) ** 2).sum())
    ss_tot = float(((ya - ya.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": r2,
        "points": int(xa.size),
    }


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return fields


def _cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _cpu_generation() -> str | None:
    """Family, model and widest vector unit of the CPU: virtual machines of one name run on
    hosts of several generations (the model ran 2.6x faster on one than another), so
    results are compared only within one."""
    info = _cpuinfo()
    if "cpu family" not in info:
        return None
    flags = set(info.get("flags", "").split())
    vector = next((v for v in ("avx512f", "avx2", "avx") if v in flags), "sse")
    return f"family {info['cpu family']} model {info.get('model', '?')}, {vector}"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python, load average."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    try:
        load: list[float] | None = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_generation": _cpu_generation(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "ram_gb": round(ram / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load,
    }


def _generation_note(machine: dict[str, Any]) -> str:
    generation = machine.get("cpu_generation")  # absent from results of older versions
    return f" ({generation})" if generation else ""


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class _CpuSampler:
    """Samples this process' CPU time (all threads) against wall time in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> _CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def utilisation(self, t0: float, t1: float) -> float:
        """Mean CPU use over ``[t0, t1]`` in cores (1.0 = one core busy)."""
        if t1 <= t0 or len(self.wall) < 2:
            return math.nan
        c0, c1 = np.interp([t0, t1], self.wall, self.cpu)
        return float((c1 - c0) / (t1 - t0))


# --------------------------------------------------------------------------- the child


def stage_accounting(
    timings: dict[str, float], seconds: float, workers: int, processes: int = 1
) -> dict[str, Any]:
    """Per-stage busy time of one run, from what its threads measured, and what bounds it.

    ``timings``: the run's ``RunSummary.timings``.  Busy seconds per stage (``busy_s``: wall
    time the stage's threads spent on it, summed over threads) and its CPU seconds where
    the threads measured them; ``share``: busy time over the run's wall time (stages
    overlap, so shares add up to more than 1); ``load``: share over the threads the stage
    has (the model its ``model_slots``, reading and segmentation ``workers``, the others
    one; reading and the model times ``processes`` on a cluster of processes, whose
    segmentation runs in the client), the fraction of its capacity the stage used.  The run
    is bound by the model when
    the model's load was at least :data:`MODEL_BOUND`, else by the stage of highest load.
    """
    t = timings.get
    busy = {
        "tissue": t("tissue_s", 0.0),
        "read": t("predict_read_s", 0.0),
        "model": t("predict_model_s", 0.0),
        "maps_write": t("predict_write_s", 0.0),
        "segment": t("segment_busy_s", 0.0),
        "stitch": t("stitch_paint_s", 0.0),
        "write": t("write_s", 0.0),
        "plausibility": t("plausibility_s", 0.0),
    }
    cpu = {
        "model": t("predict_model_cpu_s", math.nan),
        "read": t("predict_read_cpu_s", math.nan),
        "maps_write": t("predict_write_cpu_s", math.nan),
        "segment": t("segment_cpu_s", math.nan),
    }
    per = max(1, processes)
    slots = max(1, int(t("model_slots", 1.0))) * per
    threads = {"read": workers * per, "segment": workers, "model": slots}
    share = {k: v / seconds if seconds > 0 else math.nan for k, v in busy.items()}
    load = {k: share[k] / threads.get(k, 1) for k in busy}
    bound = "model" if load["model"] >= MODEL_BOUND else max(load, key=lambda k: load[k])
    return {
        "busy_s": busy,
        "cpu_s": cpu,
        "share": share,
        "load": load,
        "model_busy_share": load["model"],
        "model_wait_s": t("predict_wait_s", 0.0),
        "bound": bound,
    }


def _model_checkpoint(model: str, cache: Path) -> str:
    """``model`` as the backend takes it; ``random-b0`` becomes a seeded random checkpoint."""
    if model != RANDOM_MODEL:
        return model
    out = cache / RANDOM_MODEL
    if not (out / "model.safetensors").is_file():
        import torch

        from wsi_infer.config import ModelConfig
        from wsi_infer.model import save_checkpoint
        from wsi_infer.registry import create_model

        torch.manual_seed(0)
        save_checkpoint(create_model(ModelConfig()), out)
    return str(out)


def _time_concurrent(fn: Any, budget: float, min_calls: int, callers: int) -> tuple[int, float]:
    """:func:`_time_loop` of ``fn`` in ``callers`` threads at once: calls made by all of
    them, and the wall time until the last one ended."""
    if callers <= 1:
        return _time_loop(fn, budget, min_calls, 1_000_000)
    counts = [0] * callers
    errors: list[BaseException] = []

    def caller(c: int) -> None:
        try:
            counts[c] = _time_loop(lambda k: fn(c + k * callers), budget, min_calls, 1_000_000)[0]
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return sum(counts), time.perf_counter() - t0


def _time_loop(fn: Any, budget: float, min_calls: int, max_calls: int) -> tuple[int, float]:
    """Call ``fn(k)`` for k = 0, 1, ... until ``budget`` seconds (at least ``min_calls``)."""
    calls, t0 = 0, time.perf_counter()
    while calls < max_calls:
        fn(calls)
        calls += 1
        if calls >= min_calls and time.perf_counter() - t0 >= budget:
            break
    return calls, time.perf_counter() - t0


def run_child(cfg: RunConfig) -> dict[str, Any]:
    """One engine run and the stage measurements on its tiles (in this process)."""
    from wsi_infer.reader import open_slide

    # the benchmark's own handle on the slide (planning, pre-reading, the read stage); the
    # run opens its own, as the CLI's does
    with open_slide(cfg.slide) as slide:
        return _run_child(cfg, slide)


def _run_child(cfg: RunConfig, slide: Any) -> dict[str, Any]:
    import zarr

    from wsi_infer.cluster import dask_client
    from wsi_infer.engine import RunParams, plan_tiles, run_slide
    from wsi_infer.predict import model_slots
    from wsi_infer.reader import GridReader, open_slide
    from wsi_infer.recipe import BackendRecipe

    params = RunParams(
        tile_size=cfg.tile_size,
        overlap=cfg.overlap,
        batch_size=cfg.batch_size,
        threads=cfg.workers,
    )
    t_load = time.perf_counter()
    # the backend exactly as the CLI makes it for these parameters
    backend = BackendRecipe.for_run(cfg.backend, cfg.model, params, device=cfg.device).build()
    # the model-only figure is measured with as many concurrent calls as the run makes: with
    # processes, each process' own (threads of this process stand in for them)
    slots = model_slots(backend, params.threads) * max(1, cfg.processes)
    load_s = time.perf_counter() - t_load
    torch_threads: int | None = None
    if cfg.backend == "torch":
        import torch

        torch_threads = torch.get_num_threads()
    budget = cfg.stage_seconds
    t = params.tile_size
    bs = params.batch_size

    # ---- the tiles the run will predict, planned as the run plans them; a few batches of
    # them pre-read for the model-only measurement
    reader, grid, tiles = plan_tiles(slide, backend.config, params)
    if not tiles:
        raise RuntimeError(
            f"{cfg.slide}: the engine finds no tissue tile to measure (a slide under ~1 mm "
            "loses its tissue to the minimum tissue area: use larger --sizes)"
        )
    origins = [grid.origin(i, j) for i, j in tiles]
    imgs = [reader.read(x, y, t, t) for y, x in origins[: max(bs, 8 * bs)]]
    while len(imgs) < bs:
        imgs = imgs + imgs
    batches = [np.stack(imgs[k : k + bs]) for k in range(0, len(imgs) - bs + 1, bs)]
    # Warm-up: a backend's first call on each thread costs more (onnxruntime: 1.3x for the
    # bundled model at 1024 px); a batch of slides pays it once per process, so it is
    # measured on its own and the run and the model-only figure both start warm.
    outputs: list[Any] = []
    t_warm = time.perf_counter()
    warm_calls, _ = _time_concurrent(
        lambda k: outputs.append(backend(batches[k % len(batches)])), 0.0, 1, slots
    )
    warmup_s = time.perf_counter() - t_warm
    maps = outputs[0]

    def model_only() -> tuple[int, float, float]:
        """Batches and seconds of back-to-back calls (as many callers as the engine lets
        call the model at once), and their CPU seconds."""
        c = time.process_time()
        n, sec = _time_concurrent(lambda k: backend(batches[k % len(batches)]), budget, 3, slots)
        return n, sec, time.process_time() - c

    # The model alone is measured just before each run and just after it, and the two are
    # pooled: a machine whose speed drifts (a shared VM does, by 10 % within minutes) then
    # moves both sides of the efficiency alike.  With repeats, runs and model-only
    # measurements alternate (the one after a run is the one before the next), and the
    # figures below are those of the run of median efficiency.
    before = model_only()
    repeats: list[dict[str, Any]] = []
    gpu = cfg.device.startswith("cuda")
    for _ in range(cfg.repeats):
        # ---- the run, exactly as the CLI makes it (a cluster is started before the clock
        # and its worker processes' CPU and memory counted once they have ended)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        rc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with (
            dask_client(workers=cfg.processes or None, threads=cfg.workers, gpu=gpu) as client,
            _CpuSampler() as sampler,
        ):
            t0 = time.perf_counter()
            summary = run_slide(
                cfg.slide, cfg.store, backend, params, overwrite=True, client=client
            )
            t1 = time.perf_counter()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if cfg.processes:  # the workers' whole life, their start and model load included
            cpu += (rc1.ru_utime - rc0.ru_utime) + (rc1.ru_stime - rc0.ru_stime)
        after = model_only()
        pooled = tuple(a + b for a, b in zip(before, after, strict=True))
        repeats.append(
            {
                "summary": summary,
                "wall": t1 - t0,
                "cpu": cpu,
                "utilisation": sampler.utilisation(t0, t1),
                "before": before,
                "after": after,
                "model": pooled,
                "efficiency": _rate(summary.tiles, summary.seconds)
                / _rate(pooled[0] * bs, pooled[1]),
            }
        )
        before = after
    ru_end = resource.getrusage(resource.RUSAGE_SELF)
    rc_end = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss = max(ru_end.ru_maxrss, rc_end.ru_maxrss if cfg.processes else 0)
    peak_rss = peak_rss * 1024 if sys.platform != "darwin" else peak_rss
    ranked = sorted(repeats, key=lambda r: float(r["efficiency"]))
    chosen = ranked[(len(ranked) - 1) // 2]  # the median (the lower one of an even count)
    summary, wall, cpu = chosen["summary"], chosen["wall"], chosen["cpu"]
    before, after = chosen["before"], chosen["after"]
    n_model, model_s, model_cpu = chosen["model"]
    cores = os.cpu_count() or 1
    timings = dict(summary.timings)
    accounting = stage_accounting(timings, summary.seconds, cfg.workers, cfg.processes)

    # ---- the run's store: its tissue area, and the proof it predicted the planned tiles
    root = zarr.open_group(cfg.store, mode="r")
    info: dict[str, Any] = dict(root.attrs["wsi_infer"])  # type: ignore[arg-type]
    gh, gw = (int(v) for v in info["grid_shape"])
    tissue_mask = np.asarray(root["labels/tissue/0"][:], dtype=bool)  # type: ignore[index]
    tissue_mpp = float(info["tissue"]["mpp"])
    tissue_mm2 = float(tissue_mask.sum()) * (tissue_mpp * 1e-3) ** 2
    if (
        (gh, gw) != (grid.height, grid.width)
        or grid.select(tissue_mask) != tiles
        or summary.tiles != len(tiles)
    ):
        raise RuntimeError(
            f"{cfg.slide}: the run predicted {summary.tiles} tiles, {len(tiles)} were "
            "planned: the model-only measurement would not be on the run's tiles"
        )

    # ---- read + decode, one thread, the engine's tiles in its order, through a handle of
    # its own (the pre-reads above left tiles in the first one's cache)
    with open_slide(cfg.slide) as fresh:
        fresh_reader = GridReader(fresh, reader.scale)

        def read_one(k: int) -> None:
            y, x = origins[k]
            fresh_reader.read(x, y, t, t)

        n_read, read_s = _time_loop(read_one, budget, 1, len(origins))

    # ---- store write: the run's labels, band by band, into a store like the run's
    write = _measure_store_write(root, params.label_chunk, budget)

    tiles_n = summary.tiles
    model_tps = _rate(n_model * bs, model_s)
    first_call_extra = max(0.0, warmup_s - warm_calls * bs / model_tps)
    grid_mpx = gh * gw / 1e6
    e2e_tps = _rate(tiles_n, summary.seconds)
    predict_tps = _rate(tiles_n, timings.get("predict_s", 0.0))
    stages: dict[str, Any] = {
        "read": {
            "tiles_per_s": _rate(n_read, read_s),
            "mpx_per_s": _rate(n_read * t * t / 1e6, read_s),
            "tiles": n_read,
            "seconds": read_s,
            "threads": 1,
        },
        "tissue": {"seconds": timings.get("tissue_s", math.nan), "area_mm2": tissue_mm2},
        "model": {
            "tiles_per_s": model_tps,
            "tiles_per_s_before_run": _rate(before[0] * bs, before[1]),
            "tiles_per_s_after_run": _rate(after[0] * bs, after[1]),
            "mpx_per_s": _rate(n_model * bs * t * t / 1e6, model_s),
            "batches": n_model,
            "batch_size": bs,
            "seconds": model_s,
            "load_seconds": load_s,
            "warmup_calls": warm_calls,
            "warmup_seconds": warmup_s,
            "torch_threads": torch_threads,
            "concurrent_calls": slots,
            "cpu_cores_busy": _rate(model_cpu, model_s),
            "output_bytes_per_tile": int(maps[0].nbytes),
            "logits_bytes_per_tile": 4 * backend.config.out_channels * t * t,
        },
        "model_in_run": {
            "tiles_per_s": _rate(tiles_n * slots, timings.get("predict_model_s", 0.0)),
            "seconds": timings.get("predict_model_s", math.nan),
            "busy_in_predict": _rate(
                timings.get("predict_model_s", 0.0), timings.get("predict_s", 0.0)
            ),
            "busy_in_run": accounting["model_busy_share"],
        },
        "postprocess": {
            "mpx_per_s": _rate(grid_mpx, timings.get("segment_s", 0.0)),
            "mpx_per_cpu_s": _rate(grid_mpx, timings.get("segment_cpu_s", 0.0)),
            "seconds": timings.get("segment_s", math.nan),
            "cpu_seconds": timings.get("segment_cpu_s", math.nan),
        },
        "write": write,
    }
    # Per tile, the busy time each stage costs in the run (seconds).
    per_tile = {k: v / tiles_n for k, v in accounting["busy_s"].items() if tiles_n}
    return {
        "size": cfg.size,
        "workers": cfg.workers,
        "processes": cfg.processes,
        "slide": cfg.slide,
        "grid_shape": [gh, gw],
        "grid_mpx": grid_mpx,
        "tiles": tiles_n,
        "tissue_fraction": float(info["tissue"]["fraction"]),
        "tissue_area_mm2": tissue_mm2,
        "nuclei": summary.nuclei,
        "timings": timings,
        "stages": stages,
        "end_to_end": {
            "seconds": summary.seconds,
            "tiles_per_s": e2e_tps,
            "mpx_per_s": _rate(tiles_n * t * t / 1e6, summary.seconds),
            "slide_mpx_per_s": _rate(grid_mpx, summary.seconds),
            "s_per_mm2": summary.seconds / tissue_mm2 if tissue_mm2 > 0 else math.nan,
            "peak_rss_mb": peak_rss / 2**20,
            "cpu_seconds": cpu,
            "cpu_cores_busy": cpu / wall if wall > 0 else math.nan,
            "cpu_util": cpu / wall / cores if wall > 0 else math.nan,
            "cpu_util_sampled": chosen["utilisation"] / cores,
        },
        # every run: its seconds and efficiency against the model alone around it
        "repeats": [
            {
                "seconds": r["summary"].seconds,
                "tiles_per_s": _rate(tiles_n, r["summary"].seconds),
                "model_tiles_per_s": _rate(r["model"][0] * bs, r["model"][1]),
                "efficiency": r["efficiency"],
                "cpu_seconds": r["cpu"],
            }
            for r in repeats
        ],
        "efficiency": e2e_tps / model_tps,
        # the same for a run on a cold backend (a single slide): the warm-up's cost beyond
        # one round of steady calls added to the run
        "efficiency_cold": _rate(tiles_n, summary.seconds + first_call_extra) / model_tps,
        "first_call_extra_s": first_call_extra,
        # CPU seconds per tile of the model alone over those of the whole run: what the
        # wall-time efficiency tends to where the model fills every core, and a figure that
        # stays meaningful on a machine shared with other work
        "cpu_efficiency": _rate(model_cpu / (n_model * bs), cpu / tiles_n) if tiles_n else math.nan,
        "predict_efficiency": predict_tps / model_tps,
        "per_tile_s": per_tile,
        "stages_busy": accounting,
        "time_share": accounting["share"],
        "bottleneck": accounting["bound"],
    }


def _measure_store_write(root: Any, chunk: int, budget: float) -> dict[str, Any]:
    import zarr

    raw_bytes, seconds = 0, 0.0
    with tempfile.TemporaryDirectory(prefix="wsi-bench-write-") as tmp:
        for name in ("nuclei", "types"):
            src = root[f"labels/{name}/0"]
            dst = zarr.create_array(
                str(Path(tmp) / f"{name}.zarr"),
                shape=src.shape,
                chunks=src.chunks,
                dtype=src.dtype,
                compressors=src.compressors,
                fill_value=0,
            )
            rows = src.chunks[0]
            for y in range(0, src.shape[0], rows):
                band = np.asarray(src[y : y + rows])
                t0 = time.perf_counter()
                dst[y : y + rows] = band
                seconds += time.perf_counter() - t0
                raw_bytes += band.nbytes
                if seconds >= budget / 2 and name == "nuclei":
                    break
                if seconds >= budget:
                    break
        disk = _dir_bytes(Path(tmp))
    return {
        "mb_per_s": _rate(raw_bytes / 1e6, seconds),
        "disk_mb_per_s": _rate(disk / 1e6, seconds),
        "mb": raw_bytes / 1e6,
        "disk_mb": disk / 1e6,
        "seconds": seconds,
        "band_rows": chunk,
    }


def _child_main(config_path: str, out_path: str) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    cfg = RunConfig(**json.loads(Path(config_path).read_text()))
    result = run_child(cfg)
    Path(out_path).write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------- the parent


def _slide_for(
    size: int, mpp: float, seed: int, fraction: float, slides_dir: Path, bank_args: dict[str, Any]
) -> SlideInfo:
    spec = SlideSpec(width=size, height=size, mpp=mpp, seed=seed, tissue_fraction=fraction)
    path = slides_dir / f"synthetic-{size}px-{mpp:g}mpp-seed{seed}-t{fraction:g}.tif"
    cached = read_sidecar(path)
    if cached is not None and cached.spec == asdict(spec):
        return cached
    logger.info("writing %s", path)
    if "bank" not in bank_args:
        bank_args["bank"] = load_patch_bank(
            bank_args["nuclei_dir"], max_groups=bank_args["max_groups"]
        )
    return make_slide(path, spec, bank_args["bank"])


def _run_subprocess(cfg: RunConfig, work: Path, timeout: float | None) -> dict[str, Any]:
    cfg_path = work / f"run-{cfg.size}-w{cfg.workers}.json"
    out_path = work / f"result-{cfg.size}-w{cfg.workers}.json"
    cfg_path.write_text(json.dumps(asdict(cfg)))
    cmd = [
        sys.executable,
        "-m",
        "wsi_infer.benchmarks.bench",
        "--child",
        str(cfg_path),
        str(out_path),
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"benchmark run {cfg.size} px, {cfg.workers} workers failed:\n{tail}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def run_benchmark(
    *,
    sizes: Sequence[int],
    workers: Sequence[int],
    model: str,
    processes: int = 0,
    backend: str = "torch",
    device: str = "cpu",
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = RUN_DEFAULTS.batch_size,
    slide_mpp: float | None = None,
    tissue_fraction: float = 0.4,
    seed: int = 0,
    stage_seconds: float = 8.0,
    repeats: int = 1,
    slides_dir: Path = DEFAULT_SLIDES_DIR,
    nuclei_dir: Path = DEFAULT_NUCLEI_DIR,
    max_groups: int | None = None,
    keep_stores: Path | None = None,
    timeout: float | None = None,
    quick: bool = False,
    real_slides: Sequence[Path] = (),
) -> dict[str, Any]:
    """Generate (or reuse) the slides, run every (size, workers) in a subprocess, summarise.

    ``real_slides`` replaces the synthetic slides by the given files (keyed by their
    largest level-0 side, in the result's ``size``).
    """
    from wsi_infer.config import ModelConfig
    from wsi_infer.engine import RunParams
    from wsi_infer.reader import open_slide

    started = datetime.now(UTC)
    machine = machine_info()
    checkpoint = _model_checkpoint(model, slides_dir.parent / "bench-models")
    model_cfg = _model_config(checkpoint, ModelConfig)
    # tile size and overlap: the model's unless given (validated early)
    params = RunParams.for_model(
        model_cfg, tile_size=tile_size, overlap=overlap, batch_size=batch_size
    )
    tile_size, overlap = params.tile_size, params.overlap
    mpp = slide_mpp if slide_mpp is not None else model_cfg.mpp
    slides_dir.mkdir(parents=True, exist_ok=True)
    bank_args: dict[str, Any] = {"nuclei_dir": nuclei_dir, "max_groups": max_groups}
    slides: dict[int, Any]
    if real_slides:
        slides = {}
        for path in real_slides:
            with open_slide(path) as opened:
                slides[max(opened.dimensions)] = {"path": str(path), "real": True}
        sizes = sorted(slides)
    else:
        slides = {
            s: _slide_for(s, mpp, seed, tissue_fraction, slides_dir, bank_args) for s in sizes
        }
    bank_args.clear()

    runs: list[dict[str, Any]] = []
    if keep_stores is not None:
        keep_stores.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wsi-bench-") as tmp:
        work = Path(tmp)
        for size in sizes:
            for w in workers:
                store = (keep_stores or work) / f"bench-{size}px-w{w}.zarr"
                cfg = RunConfig(
                    slide=str(Path(_info(slides[size])["path"]).resolve()),
                    size=size,
                    workers=w,
                    processes=processes,
                    model=checkpoint,
                    backend=backend,
                    device=device,
                    tile_size=tile_size,
                    overlap=overlap,
                    batch_size=batch_size,
                    stage_seconds=stage_seconds,
                    store=str(store.resolve()),
                    repeats=repeats,
                )
                logger.info("run: %d px, %d worker(s)", size, w)
                result = _run_subprocess(cfg, work, timeout)
                result["slide_info"] = _info(slides[size])
                runs.append(result)
                logger.info(
                    "  %d tiles in %.1f s: %.2f tiles/s end to end, model only %.2f tiles/s",
                    result["tiles"],
                    result["end_to_end"]["seconds"],
                    result["end_to_end"]["tiles_per_s"],
                    result["stages"]["model"]["tiles_per_s"],
                )
                if keep_stores is None:
                    shutil.rmtree(store, ignore_errors=True)

    scaling = {}
    for w in workers:
        pts = [r for r in runs if r["workers"] == w]
        fit = fit_line(
            [r["tissue_area_mm2"] for r in pts], [r["end_to_end"]["seconds"] for r in pts]
        )
        scaling[f"workers={w}"] = {"x": "tissue_area_mm2", "y": "seconds", **fit}
    return {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_end": machine_info()["load_average"]},
        "versions": package_versions(),
        "settings": {
            "sizes": list(sizes),
            "workers": list(workers),
            "processes": processes,
            "model": model,
            "checkpoint": checkpoint,
            "model_config": {"arch": model_cfg.arch, "mpp": model_cfg.mpp},
            "backend": backend,
            "device": device,
            "tile_size": tile_size,
            "overlap": overlap,
            "batch_size": batch_size,
            "slide_mpp": mpp,
            "tissue_fraction": tissue_fraction,
            "seed": seed,
            "stage_seconds": stage_seconds,
            "repeats": repeats,
            "quick": quick,
        },
        "runs": runs,
        "scaling": scaling,
    }


def _info(slide: Any) -> dict[str, Any]:
    return slide if isinstance(slide, dict) else asdict(slide)


def _model_config(checkpoint: str, model_config: Any) -> Any:
    """The :class:`ModelConfig` of a checkpoint directory or bundled model."""
    from wsi_infer.model import CONFIG_FILE, resolve_checkpoint

    return model_config.from_json(resolve_checkpoint(checkpoint) / CONFIG_FILE)


# --------------------------------------------------------------------------- report


def format_table(result: dict[str, Any]) -> str:
    """The runs as a fixed-width table, then the scaling fits."""
    cols = [
        ("size", "{:>6}", lambda r: r["size"]),
        ("wk", "{:>2}", lambda r: r["workers"]),
        ("tiles", "{:>6}", lambda r: r["tiles"]),
        ("mm2", "{:>7.2f}", lambda r: r["tissue_area_mm2"]),
        ("read t/s", "{:>8.1f}", lambda r: r["stages"]["read"]["tiles_per_s"]),
        ("tissue s", "{:>8.2f}", lambda r: r["stages"]["tissue"]["seconds"]),
        ("model t/s", "{:>9.2f}", lambda r: r["stages"]["model"]["tiles_per_s"]),
        ("post Mpx/s", "{:>10.1f}", lambda r: r["stages"]["postprocess"]["mpx_per_s"]),
        ("write MB/s", "{:>10.0f}", lambda r: r["stages"]["write"]["mb_per_s"]),
        ("e2e s", "{:>7.1f}", lambda r: r["end_to_end"]["seconds"]),
        ("e2e t/s", "{:>7.2f}", lambda r: r["end_to_end"]["tiles_per_s"]),
        ("Mpx/s", "{:>6.2f}", lambda r: r["end_to_end"]["mpx_per_s"]),
        ("s/mm2", "{:>7.1f}", lambda r: r["end_to_end"]["s_per_mm2"]),
        ("RSS MB", "{:>6.0f}", lambda r: r["end_to_end"]["peak_rss_mb"]),
        ("CPU %", "{:>5.0f}", lambda r: 100 * r["end_to_end"]["cpu_util"]),
        ("eff", "{:>5.2f}", lambda r: r["efficiency"]),
        ("cold", "{:>5.2f}", lambda r: r.get("efficiency_cold", math.nan)),
        ("busy", "{:>5.2f}", lambda r: r["stages"]["model_in_run"]["busy_in_run"]),
        ("bound", "{:>8}", lambda r: r["bottleneck"]),
    ]
    rows = [[fmt.format(get(r)) for _, fmt, get in cols] for r in result["runs"]]
    widths = [
        max([len(name)] + [len(row[k]) for row in rows]) for k, (name, _, _) in enumerate(cols)
    ]
    head = "  ".join(name.rjust(w) for (name, _, _), w in zip(cols, widths, strict=True))
    lines = [head, "-" * len(head)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    for r in result["runs"]:
        if len(r.get("repeats", ())) > 1:
            each = ", ".join(f"{x['seconds']:.1f} s / {x['efficiency']:.2f}" for x in r["repeats"])
            lines.append(
                f"  {r['size']} px, {r['workers']} workers, each run (seconds / eff): {each}"
            )
    lines.append("")
    lines.append("end-to-end seconds vs tissue area (linear fit):")
    for key, fit in result["scaling"].items():
        if fit["slope"] is None:
            lines.append(f"  {key}: too few points")
            continue
        r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.4f}"
        lines.append(
            f"  {key}: {fit['slope']:.1f} s/mm² + {fit['intercept']:.1f} s, R² = {r2} "
            f"({fit['points']} sizes)"
        )
    m = result["machine"]
    lines.append("")
    lines.append(
        f"{m['cpu_model']}{_generation_note(m)}, {m['cpus_usable']} CPUs, {m['ram_gb']} GB; "
        "load average at start "
        f"{m['load_average']}, end {m['load_average_end']}; {result['date']}"
    )
    lines.append(
        "t/s: tiles per second; eff: end-to-end tiles/s over model-only tiles/s (both on a "
        "warm backend, the model alone measured before and after the run; with --repeats, the "
        "run of median efficiency); cold: the same "
        "with the backend's slower first calls added to the run; busy: share "
        "of the run the model was computing; bound: the model when busy >= 0.9, else the stage "
        "whose threads were busiest (busy time measured by the threads themselves)"
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Four panels: stage throughput, time per stage, scaling fit, efficiency and CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    labels = [f"{r['size']}\n{r['workers']}w" for r in runs]
    x = np.arange(len(runs))
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))

    a = ax[0, 0]
    series = {
        "read + decode": [r["stages"]["read"]["tiles_per_s"] for r in runs],
        "model only": [r["stages"]["model"]["tiles_per_s"] for r in runs],
        "end to end": [r["end_to_end"]["tiles_per_s"] for r in runs],
    }
    width = 0.8 / len(series)
    for k, (name, vals) in enumerate(series.items()):
        a.bar(x + (k - 1) * width, vals, width, label=name)
    a.set_yscale("log")
    a.set_xticks(x, labels)
    a.set_ylabel("tiles / s")
    a.set_title(f"throughput per stage ({result['settings']['tile_size']} px tiles)")
    a.legend()

    a = ax[0, 1]
    width = 0.8 / len(STAGES)
    for k, key in enumerate(STAGES):
        secs = np.array([r["stages_busy"]["busy_s"][key] for r in runs])
        a.bar(x + (k - len(STAGES) / 2) * width, secs, width, label=key)
    a.plot(x, [r["end_to_end"]["seconds"] for r in runs], "k_", markersize=30, label="run")
    a.set_xticks(x, labels)
    a.set_ylabel("busy seconds (summed over threads)")
    a.set_title("busy time per stage (stages overlap; black: the run's wall time)")
    a.legend(fontsize=7)

    a = ax[1, 0]
    for key, fit in result["scaling"].items():
        w = int(key.split("=")[1])
        pts = [r for r in runs if r["workers"] == w]
        xs = np.array([r["tissue_area_mm2"] for r in pts])
        ys = np.array([r["end_to_end"]["seconds"] for r in pts])
        (line,) = a.plot(xs, ys, "o", label=f"{w} worker(s)")
        if fit["slope"] is not None:
            xx = np.linspace(0, xs.max() * 1.05, 20)
            r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.3f}"
            a.plot(
                xx,
                fit["slope"] * xx + fit["intercept"],
                "-",
                color=line.get_color(),
                label=f"{fit['slope']:.1f} s/mm² + {fit['intercept']:.1f} s, R²={r2}",
            )
    a.set_xlabel("tissue area (mm²)")
    a.set_ylabel("end-to-end seconds")
    a.set_title("scaling with tissue area")
    a.legend()

    a = ax[1, 1]
    a.plot(x, [r["efficiency"] for r in runs], "o-", label="efficiency (e2e / model-only)")
    a.plot(x, [r["predict_efficiency"] for r in runs], "s--", label="predict stage / model-only")
    a.plot(
        x,
        [r["stages"]["model_in_run"]["busy_in_run"] for r in runs],
        "d:",
        label="model busy (share of the run)",
    )
    a.plot(x, [r["end_to_end"]["cpu_util"] for r in runs], "^-", label="CPU utilisation")
    top = max([1.0] + [r["predict_efficiency"] for r in runs] + [r["efficiency"] for r in runs])
    a.set_ylim(0, 1.1 * top)
    a.set_xticks(x, labels)
    a.set_title("keeping the model busy")
    a2 = a.twinx()
    a2.bar(x, [r["end_to_end"]["peak_rss_mb"] for r in runs], 0.4, alpha=0.2, color="grey")
    a2.set_ylabel("peak RSS (MB, grey bars)")
    a.legend(loc="lower left")

    m = result["machine"]
    fig.suptitle(
        f"wsi-infer benchmark {result['date']}: {result['settings']['backend']} on "
        f"{result['settings']['device']}, batch {result['settings']['batch_size']}; "
        f"{m['cpu_model']} ({m['cpus_usable']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def portable(obj: Any) -> Any:
    """``obj`` with the paths of this machine in its strings made portable: relative to the
    working folder inside it, ``~`` for the home folder (results are shared and committed)."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        cwd, home = f"{Path.cwd()}/", f"{Path.home()}/"
        if obj.startswith(cwd):
            return obj[len(cwd) :]
        if obj.startswith(home):
            return "~/" + obj[len(home) :]
    return obj


def save(
    result: dict[str, Any], out_dir: Path, name: str | None = None, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``<name>.json``, ``.txt`` and (``plots``) ``.png`` into ``out_dir``; returns
    their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if name is None:
        stamp = datetime.fromisoformat(result["date"]).strftime("%Y%m%dT%H%M%SZ")
        name = f"bench-{stamp}" + ("-quick" if result["settings"]["quick"] else "")
    exts = ("json", "txt", "png") if plots else ("json", "txt")
    paths = {ext: out_dir / f"{name}.{ext}" for ext in exts}
    paths["json"].write_text(json.dumps(portable(result), indent=2, default=_json_default) + "\n")
    paths["txt"].write_text(format_table(result) + "\n")
    if plots:
        plot(result, paths["png"])
    return paths


# --------------------------------------------------------------------------- CLI


@click.command("wsi-infer-bench", context_settings={"help_option_names": ["-h", "--help"]})
@multi_option("--sizes", type=int, metavar="PX...", help=f"slide edges in px {DEFAULT_SIZES}")
@multi_option(
    "--workers",
    type=int,
    default=[1, 2],
    metavar="N...",
    help="threads reading, predicting and segmenting (1 2); per process with --processes",
)
@click.option(
    "--processes",
    type=int,
    default=0,
    show_default=True,
    help="run on a local dask cluster of this many processes, each with its own model "
    "(as wsi-infer --processes; on a GPU, past one process' Python lock); 0: threads only",
)
@tile_size_option(help="Tile edge in pixels [default: the model's own].")
@overlap_option(help="Tile overlap in pixels [default: the model's own].")
@click.option(
    "--batch-size",
    type=int,
    default=RUN_DEFAULTS.batch_size,
    show_default=True,
    help="tiles per model call",
)
@model_option(help=f"bundled name or checkpoint dir; '{RANDOM_MODEL}': a seeded random b0")
@backend_option(default="torch")
@device_option(default="cpu")
@click.option("--slide-mpp", type=float, help="resolution of the slides (the model's)")
@click.option("--tissue-fraction", type=float, default=0.4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stage-seconds", type=float, help="time per stage measurement (8; quick: 1)")
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="runs per slide, alternating with model-only measurements (figures: the median run)",
)
@path_option("--out-dir", default=DEFAULT_OUT_DIR, show_default=True)
@click.option("--name", help="results file stem (default bench-<UTC time>)")
@path_option("--slides-dir", default=DEFAULT_SLIDES_DIR, help="slide cache")
@path_option("--nuclei-dir", default=DEFAULT_NUCLEI_DIR, help="H&E patches")
@path_option("--keep-stores", help="keep the result stores in this folder")
@click.option("--timeout", type=float, help="seconds allowed per run")
@click.option("--quick", is_flag=True, help=f"tiny slides {QUICK_SIZES}, for tests")
@paths_option(
    "--slide",
    default=[],
    help="benchmark these real slides instead of synthetic ones",
)
@click.option("--no-plot", is_flag=True, help="no .png (needs no matplotlib)")
@click.option("--child", nargs=2, metavar="CONFIG OUT", hidden=True)
def bench_command(**options: Any) -> int:
    """Benchmark wsi-infer stage by stage on realistic synthetic slides."""
    from wsi_infer.errors import WsiInferError, one_line_error

    args = SimpleNamespace(**options)
    if args.child:
        return _child_main(*args.child)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    stage_seconds = args.stage_seconds or (1.0 if args.quick else 8.0)
    try:
        result = run_benchmark(
            sizes=sizes,
            workers=args.workers,
            processes=args.processes,
            model=args.model,
            backend=args.backend,
            device=args.device,
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            slide_mpp=args.slide_mpp,
            tissue_fraction=args.tissue_fraction,
            seed=args.seed,
            stage_seconds=stage_seconds,
            repeats=args.repeats,
            slides_dir=args.slides_dir,
            nuclei_dir=args.nuclei_dir,
            max_groups=4 if args.quick else None,
            keep_stores=args.keep_stores,
            timeout=args.timeout,
            quick=args.quick,
            real_slides=args.slide,
        )
    except (WsiInferError, RuntimeError, ValueError, OSError) as exc:
        print(one_line_error("wsi-infer-bench", exc), file=sys.stderr)
        return 1
    paths = save(result, args.out_dir, args.name, plots=not args.no_plot)
    print(format_table(result))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


main = entry_point(bench_command, "wsi-infer-bench")


if __name__ == "__main__":
    sys.exit(main())
