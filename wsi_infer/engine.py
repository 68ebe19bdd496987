"""The engine: slide in, every nucleus once in a zarr store out.

This module tells the story of one slide's run: open the slide, find its tissue,
create (or resume) the store, plan the work, predict and segment side by side, seal.
What runs when -- the batches, their priorities, when a band may be segmented, and
threads here or a dask.distributed cluster -- is :mod:`wsi_infer.scheduler`'s plan:

1. **Predict.**  Tissue tiles (the model's input ``tile`` pixels, of which the
   central ``tile - overlap`` are kept) are read, batched and run through the
   backend; the compact maps of each tile's core go into the store's scratch
   array, one zarr chunk per tile.  Reading runs beside the model: the model
   takes as many calls at once as it has slots, and the run has one thread more,
   so the next batch is read while every slot computes.  A chunk on disk is
   a tile done: a run started again skips the batches whose tiles are all done
   (batches are fixed by the tile list, so the model gets the same ones).
2. **Segment and stitch.**  The seamless maps are cut into windows (bands of
   ``label_chunk`` rows, ``window_cols`` wide) read with a margin on every side.
   A nucleus belongs to the window whose core holds its centroid, so each one is
   taken exactly once and whole; objects wider than ``margin`` are no nuclei and
   are dropped, so whatever is kept was seen whole.  The client numbers each
   band's nuclei in raster order (deterministic ids 1..n) and paints them into
   a rolling canvas of ``2 * label_chunk + margin`` rows, written out band by
   band: memory is bounded by the slide's width, never its area.  This stage is
   cheap and deterministic, so a resumed run simply does it again.

The store's ``status`` turns ``complete`` last.  The store may be a local folder or
a prefix in object storage (:mod:`wsi_infer.location`), and the slide a local file or
a URL staged to a local cache (:mod:`wsi_infer.staging`).  Before it is sealed, the
result is checked for plausibility (:mod:`wsi_infer.plausibility`): its warnings go
into the statistics, never into the result.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer import __version__
from wsi_infer.backends import Backend
from wsi_infer.bounds import check_grid, check_memory, check_preview
from wsi_infer.errors import OutputWriteError, StoreLockedError, WsiInferError
from wsi_infer.identity import SlideIdentity, slide_identity
from wsi_infer.location import RemotePath, StorePath, parse_location
from wsi_infer.lock import StoreLock
from wsi_infer.objectlock import ObjectLock, store_lock
from wsi_infer.params import RunParams
from wsi_infer.predict import (
    BackendSpec,
    PredictJob,
    PredictResult,
    missing_tiles,
    model_slots,
    predict_tiles,
    tile_done,
)
from wsi_infer.reader import GridReader, Slide, open_slide, resolve_mpp
from wsi_infer.resume import existing_store, fingerprint, slide_record
from wsi_infer.scheduler import Call, Predicting, PredictPlan, execution_for
from wsi_infer.stitch import stitch
from wsi_infer.store import (
    TABLE_CHUNK,
    PyramidStream,
    append_table,
    create_store,
    prepare_output,
    pyramid_levels,
    refuse_inside_store,
    remove_creating,
    remove_leftovers,
    reset_table,
    write_multiscales,
)
from wsi_infer.storeinfo import (
    BackendRecord,
    ModelRecord,
    SlideRecord,
    SoftwareRecord,
    Statistics,
    StoreInfo,
    TissueRecord,
)
from wsi_infer.tiling import TileGrid
from wsi_infer.tissue import detect_tissue, read_thumbnail
from wsi_infer.verify import check_complete, seal_complete

__all__ = ["ProgressFactory", "RunParams", "RunSummary", "plan_tiles", "run_slide"]

logger = logging.getLogger(__name__)

#: A slide whose mpp is within this fraction of the model's is read at its own grid, unresampled.
MPP_TOLERANCE = 0.02
#: Busy time the predict tasks report (summed over tasks), as keys of ``RunSummary.timings``:
#: the model's (``predict_model_s``), reading's and writing the maps' wall and CPU seconds.
PREDICT_BUSY = (
    "predict_read_s",
    "predict_read_cpu_s",
    "predict_wait_s",
    "predict_model_s",
    "predict_model_cpu_s",
    "predict_write_s",
    "predict_write_cpu_s",
)


#: ``progress(total, description, initial=done)``: a tqdm-like bar (``update(n)``, ``close()``)
#: that starts at ``initial`` (what a resumed run finds done already).
ProgressFactory = Callable[..., Any]


@dataclass
class RunSummary:
    store: str
    nuclei: int
    tiles: int
    seconds: float
    timings: dict[str, float]
    status: str = "complete"
    tiles_computed: int = 0
    #: Plausibility warnings of the result (one line each); they never change it.
    warnings: list[str] = field(default_factory=list)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles_computed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.status == "skipped":
            return f"{self.store}: already complete, {self.nuclei} nuclei (skipped)"
        resumed = (
            f" ({self.tiles - self.tiles_computed} done before)"
            if self.tiles_computed < self.tiles
            else ""
        )
        return (
            f"{self.store}: {self.nuclei} nuclei, {self.tiles} tiles{resumed}, "
            f"{self.seconds:.1f} s, {self.tiles_per_second:.2f} tiles/s"
        )


def _scale_for(slide_mpp: float, model_mpp: float) -> float:
    scale = model_mpp / slide_mpp
    return 1.0 if abs(scale - 1.0) <= MPP_TOLERANCE else scale


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_slide(
    slide_path: str | Path | RemotePath,
    out: str | StorePath,
    backend: Backend,
    params: RunParams | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    client: Any = None,
) -> RunSummary:
    """Process one slide into the store ``out``; see the module docstring.

    An existing ``out`` from the same slide, model and parameters is resumed
    (or, when complete and verified, left as it is); anything else there is an
    error unless ``overwrite`` (which replaces only a wsi-infer store).  The
    store is locked for the run (:mod:`wsi_infer.lock`); the slide, the grid and
    the memory a batch needs are checked against :mod:`wsi_infer.bounds` first.
    ``client`` is a ``distributed.Client``: predict tasks then run on its
    workers (each loads the model once; with ``device="cuda"`` they ask for one
    ``GPU`` resource each), given absolute paths they check.
    ``progress(total, description, initial=done)`` may return a tqdm-like bar.  Raises
    :class:`~wsi_infer.errors.WsiInferError` subclasses for bad input; a run
    that fails midway leaves its store marked ``failed``, resumable once the
    cause is fixed.
    """
    params = params or RunParams.for_model(backend.config)
    params.check_model(backend.config)
    check_shapes = getattr(backend, "check_shapes", None)  # backends built for fixed shapes
    if check_shapes is not None:
        check_shapes(params.tile_size, params.batch_size)
    # absolute before anything is sent to a cluster: workers run in other folders
    out = parse_location(out).absolute()
    from wsi_infer.staging import local_slide

    local, staged = local_slide(slide_path)
    slide = open_slide(local)
    try:
        cfg = backend.config
        slide_mpp, scale, reader, grid, tissue_mpp = _geometry(slide, cfg, params)
        run_mpp = slide_mpp * scale
        check_grid(slide.path, slide.dimensions, grid, run_mpp)
        if params.tissue.enabled:
            check_preview(slide, slide_mpp, tissue_mpp)
        check_memory(slide.path, cfg, params.tile_size, params.batch_size, backend.device)
        identity = slide_identity(slide.path)
        record = slide_record(
            slide, identity, slide_mpp, "metadata" if params.mpp is None else "--mpp"
        )
        if staged is not None:  # the slide is the object, wherever its copy is cached
            record = dataclasses.replace(
                record, path=staged.url, name=parse_location(staged.url).name
            )
        job = _SlideJob(
            slide,
            slide_mpp,
            identity,
            out,
            backend,
            params,
            reader,
            grid,
            scale,
            run_mpp,
            tissue_mpp,
        )
        refuse_inside_store(out, "store")
        with store_lock(out) as lock:
            return _run_locked(
                job, record, fingerprint(record, backend, params), lock, overwrite, progress, client
            )
    finally:
        slide.close()


@dataclass(frozen=True)
class _SlideJob:
    """One slide's run, as settled before the store is touched."""

    slide: Slide
    slide_mpp: float
    identity: SlideIdentity
    out: StorePath
    backend: Backend
    params: RunParams
    reader: GridReader
    grid: TileGrid
    scale: float
    run_mpp: float
    tissue_mpp: float


def _run_locked(
    job: _SlideJob,
    record: SlideRecord,
    wanted: dict[str, Any],
    lock: StoreLock | ObjectLock,
    overwrite: bool,
    progress: ProgressFactory | None,
    client: Any,
) -> RunSummary:
    started, t0 = _now(), time.perf_counter()
    timings: dict[str, float] = {}
    out, params, grid, backend = job.out, job.params, job.grid, job.backend
    _guard_write(out, lambda: remove_creating(out))
    root: zarr.Group | None = None
    if (out.exists() or out.is_symlink()) and not overwrite:
        root, status = existing_store(out, wanted)
        if status == "complete":
            check_complete(out, root)  # a store that fails verification is reported, not trusted
            info = StoreInfo.read(root, out)
            return RunSummary(
                str(out),
                info.nuclei or 0,
                info.tiles or 0,
                0.0,
                {},
                status="skipped",
                warnings=info.warning_lines,
            )
        logger.info("%s: resuming an interrupted run", out)
        if StoreInfo.read(root, out).store_id is None:
            _mark(root, store_id=uuid.uuid4().hex)
        tissue_grid = np.asarray(root["labels/tissue/0"][:]).astype(bool)  # type: ignore[index]
        tiles = grid.select(tissue_grid)
    else:
        t = time.perf_counter()
        tissue = _tissue_mask(job.slide, job.slide_mpp, job.tissue_mpp, params)
        tiles = grid.select(tissue)
        timings["tissue_s"] = time.perf_counter() - t
        _guard_write(out, lambda: prepare_output(out, overwrite))
        cfg = backend.config
        info = StoreInfo(
            software=SoftwareRecord(name="wsi-infer", version=__version__),
            model=ModelRecord.of(
                cfg.to_dict(),
                sha256=backend.model_sha256,
                precision=getattr(backend, "precision", "fp32"),
                source=backend.model_source,
                source_sha256=getattr(backend, "source_sha256", backend.model_sha256),
            ),
            backend=BackendRecord(name=backend.name, device=backend.device),
            parameters=dataclasses.asdict(params),
            slide=record,
            run_mpp=job.run_mpp,
            grid_shape=(grid.height, grid.width),
            grid_to_level0=job.scale,
            tissue=TissueRecord(
                mpp=job.tissue_mpp, fraction=float(tissue.mean()) if tissue.size else 0.0
            ),
            tiles=len(tiles),
            fingerprint=wanted,
            store_id=uuid.uuid4().hex,
            started=started,
            status="running",
        )
        root = _guard_write(
            out,
            lambda: create_store(
                out,
                grid_shape=(grid.height, grid.width),
                chunk=params.label_chunk,
                map_chunk=grid.stride,
                tissue=tissue,
                tissue_mpp=job.tissue_mpp,
                run_mpp=job.run_mpp,
                class_names=cfg.class_names,
                class_colours=cfg.class_colours,
                head=cfg.head,
                info=info,
            ),
        )
    assert root is not None
    try:
        nuclei, computed = _guard_write(
            out, lambda: _run_stages(root, job, tiles, timings, progress, client)
        )
        seconds = time.perf_counter() - t0
        lock.check()  # never mark complete a store another run has taken over
        _guard_write(
            out,
            lambda: _finish(root, out, nuclei=nuclei, seconds=seconds, timings=timings),
        )
    except BaseException as exc:
        if not isinstance(exc, StoreLockedError):  # a store taken over is no longer ours
            _mark_failed(root, f"{type(exc).__name__}: {exc}")
        raise
    return RunSummary(
        str(out),
        nuclei,
        len(tiles),
        seconds,
        timings,
        tiles_computed=computed,
        warnings=StoreInfo.read(root, out).warning_lines,
    )


def _geometry(
    slide: Slide, cfg: Any, params: RunParams
) -> tuple[float, float, GridReader, TileGrid, float]:
    """The slide's mpp, level-0 pixels per model pixel, the reader and tile grid on the
    model's pixels, and the tissue mask's mpp: what a run of ``slide`` is laid out on."""
    slide_mpp = resolve_mpp(slide, params.mpp)
    scale = _scale_for(slide_mpp, cfg.mpp)
    reader = GridReader(slide, scale)
    grid = TileGrid(reader.height, reader.width, params.tile_size, params.overlap)
    # Tissue: at least 64 px on the short side, never finer than the slide itself.
    w0, h0 = slide.dimensions
    tissue_mpp = max(min(params.tissue.mpp, min(w0, h0) * slide_mpp / 64), slide_mpp)
    return slide_mpp, scale, reader, grid, tissue_mpp


def _tissue_mask(
    slide: Slide, slide_mpp: float, tissue_mpp: float, params: RunParams
) -> NDArray[np.bool_]:
    """The tissue mask at ``tissue_mpp`` (all tissue, unread, when the mask is off)."""
    if not params.tissue.enabled:
        shape = GridReader(slide, max(tissue_mpp / slide_mpp, 1.0))
        return np.ones((shape.height, shape.width), dtype=bool)
    thumb = read_thumbnail(slide, slide_mpp, tissue_mpp, threads=params.threads)
    return detect_tissue(thumb, tissue_mpp, params.tissue)


def plan_tiles(
    slide: Slide, cfg: Any, params: RunParams
) -> tuple[GridReader, TileGrid, list[tuple[int, int]]]:
    """The reader, tile grid and tissue tiles a fresh run of ``slide`` with a model of
    config ``cfg`` and ``params`` would predict, computed as the run computes them (for
    measurements such as the benchmark's, which need the run's tiles before it)."""
    slide_mpp, _, reader, grid, tissue_mpp = _geometry(slide, cfg, params)
    return reader, grid, grid.select(_tissue_mask(slide, slide_mpp, tissue_mpp, params))


def _finish(root: zarr.Group, out: StorePath, **changes: Any) -> None:
    """Clean the store, record its digests, then (the last write) mark it complete."""
    seal_complete(out, root, **changes, finished=_now())


def _mark(root: zarr.Group, **changes: Any) -> None:
    StoreInfo.read(root).updated(**changes).write(root)


def _mark_failed(root: zarr.Group, error: str) -> None:
    """Record a failure (best effort: the error being raised is what the user must see)."""
    try:
        if StoreInfo.read(root).status != "complete":
            _mark(root, status="failed", error=error)
    except (OSError, WsiInferError):
        logger.exception("could not record the failure in the store")


def _guard_write(out: StorePath, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; an OSError from writing (not from reading the slide) names the store."""
    try:
        return fn()
    except WsiInferError:
        raise
    except OSError as exc:
        raise OutputWriteError(
            f"{out}: cannot write the result ({exc.strerror or exc}); "
            "free space or fix permissions, then run the same command again to resume"
        ) from exc


def _run_stages(
    root: zarr.Group,
    sj: _SlideJob,
    tiles: list[tuple[int, int]],
    timings: dict[str, float],
    progress: ProgressFactory | None,
    client: Any,
) -> tuple[int, int]:
    """Predict and segment (side by side), check, then write the pyramids and statistics:
    the number of nuclei and of tiles predicted."""
    info = StoreInfo.read(root, sj.out)
    if info.stage == "written":  # only the scratch removal and the status were left
        return info.nuclei or 0, 0
    maps: Any = root["_scratch/maps"]
    params = sj.params
    # Batches fixed by the tile list (a resumed run feeds the model the batches an
    # uninterrupted one would), top rows first: see wsi_infer.scheduler.
    plan = PredictPlan.build(
        sj.grid,
        tiles,
        params.batch_size,
        band_rows=params.label_chunk,
        margin=params.margin,
        done=functools.partial(tile_done, maps, sj.grid, head=sj.backend.config.head),
    )
    nuclei = _predict_and_segment(root, sj, plan, timings, progress, client)
    _check_all_predicted(sj.out, tiles)
    _write_results(root, sj, nuclei, timings)
    return nuclei, plan.pending_tiles


def _predict_and_segment(
    root: zarr.Group,
    sj: _SlideJob,
    plan: PredictPlan,
    timings: dict[str, float],
    progress: ProgressFactory | None,
    client: Any,
) -> int:
    """Run the plan's batches in the background while segmentation follows band by band,
    each band once every tile row it reads is predicted; returns the number of nuclei."""
    t = time.perf_counter()
    store_id = StoreInfo.read(root, sj.out).store_id
    maps: Any = root["_scratch/maps"]
    # Threads of this process share the client's model (its slots: how many calls at
    # once) and reader.  One thread more than the slots: while the model computes, it
    # reads the next batch (and a thread just out of the model writes its maps), so a
    # slot never waits for the slide or the store.
    slots = model_slots(sj.backend, sj.params.threads)
    execution = execution_for(client, max(sj.params.threads, slots + 1), sj.backend.device)
    job = PredictJob(
        str(sj.slide.path),
        sj.identity.content,
        str(sj.out),
        str(store_id),
        sj.scale,
        sj.grid,
        maps,
        BackendSpec.of(sj.backend),
    )
    timings["model_slots"] = slots
    local = (
        (sj.backend, threading.BoundedSemaphore(slots), sj.reader) if execution.in_process else None
    )
    calls = [
        Call(b.priority, b.name, predict_tiles, (job, list(b.tiles), local)) for b in plan.pending
    ]
    # On an error the predict thread is left to end on its own (a batch cannot be
    # cancelled midway); it only writes scratch chunks of this store.
    with (
        _PredictTally(progress, len(plan.tiles), plan.pending_tiles) as tally,
        Predicting(plan, execution, calls, tally) as predicting,
        _SegmentBands(root, progress, plan.n_bands, predicting.wait_rows) as segment,
    ):
        reset_table(root)
        # the coarser label levels are written as level 0's rows come, not read back after
        pyramids = [
            PyramidStream(root[f"labels/{name}"], sj.params.label_chunk)  # type: ignore[arg-type]
            for name in ("nuclei", "types")
        ]

        def on_rows(y0: int, labels: NDArray[np.uint32], types: NDArray[np.uint8]) -> None:
            pyramids[0].add(y0, labels)
            pyramids[1].add(y0, types)

        nuclei = stitch(
            maps,
            root["labels/nuclei/0"],  # type: ignore[arg-type]
            root["labels/types/0"],  # type: ignore[arg-type]
            sj.params,
            scale=sj.scale,
            run_mpp=sj.run_mpp,
            on_band=segment.after_band,
            before_band=segment.before_band,
            busy=segment.busy,
            on_rows=on_rows,
        )
        for pyramid in pyramids:
            pyramid.close()
        segment.write_table()
        finished_at = predicting.wait_all()  # all of stage 1, whatever the bands needed
    timings["predict_s"] = finished_at - t
    timings["segment_s"] = segment.seconds
    timings.update(tally.busy)
    timings.update(segment.busy)
    return nuclei


class _PredictTally:
    """The predict tasks' busy time (:data:`PREDICT_BUSY`) and the predict progress bar,
    fed with each result as it comes (in the predict threads)."""

    def __init__(self, progress: ProgressFactory | None, tiles: int, pending: int) -> None:
        self.busy = dict.fromkeys(PREDICT_BUSY, 0.0)
        self._lock = threading.Lock()
        # a resumed run's bar starts at the tiles already done (its rate counts new ones only)
        self._bar = progress(tiles, "predict", initial=tiles - pending) if progress else None

    def __call__(self, done: PredictResult) -> None:
        with self._lock:
            for key in PREDICT_BUSY:
                self.busy[key] += getattr(done, key.removeprefix("predict_"))
            if self._bar is not None:
                self._bar.update(len(done.tiles))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


class _SegmentBands:
    """Segmentation's side of a run: before a band, ``wait`` for the rows it reads; after
    it, keep its table rows (appended to the store a table chunk at a time, and by
    :meth:`write_table` at the end: every append rewrites metadata and the last chunk);
    the seconds spent segmenting (not waiting), its busy times and the segment progress
    bar."""

    def __init__(
        self,
        root: zarr.Group,
        progress: ProgressFactory | None,
        bands: int,
        wait: Callable[[int], None],
    ) -> None:
        self.root, self.wait = root, wait
        self.seconds = 0.0
        self.busy: dict[str, float] = {}
        self._rows: list[dict[str, NDArray[Any]]] = []
        self._bar = progress(bands, "segment") if progress else None

    def before_band(self, y: int) -> None:
        self.wait(y)
        self.seconds -= time.perf_counter()

    def after_band(self, rows: dict[str, NDArray[Any]]) -> None:
        self.seconds += time.perf_counter()
        if len(rows["id"]):
            self._rows.append(rows)
        if sum(len(r["id"]) for r in self._rows) >= TABLE_CHUNK:
            self.write_table()
        if self._bar is not None:
            self._bar.update(1)

    def write_table(self) -> None:
        """Append the rows kept so far to the store's table."""
        if self._rows:
            append_table(
                self.root, {k: np.concatenate([r[k] for r in self._rows]) for k in self._rows[0]}
            )
        self._rows = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _check_all_predicted(out: StorePath, tiles: list[tuple[int, int]]) -> None:
    """Raise when a tile the tasks said done has no maps in the store at ``out``."""
    missing = missing_tiles(out, tiles)
    if missing:
        raise OutputWriteError(
            f"{out}: {len(missing)} of {len(tiles)} predicted tiles are not in the store "
            f"(e.g. tile {missing[0]}); check that every worker sees this store at this path, "
            "then run the same command again"
        )


def _write_results(root: zarr.Group, sj: _SlideJob, nuclei: int, timings: dict[str, float]) -> None:
    """The label pyramids, the statistics and plausibility warnings, then the scratch removed."""
    t = time.perf_counter()
    labels_group = root["labels"]
    assert isinstance(labels_group, zarr.Group)
    levels = pyramid_levels((sj.grid.height, sj.grid.width), sj.params.label_chunk)
    for name in ("nuclei", "types"):
        g = labels_group[name]
        assert isinstance(g, zarr.Group)
        write_multiscales(g, name, sj.run_mpp, levels)
    from wsi_infer.stats import slide_statistics

    _mark(root, nuclei=nuclei)
    stats = slide_statistics(root)
    t_check = time.perf_counter()
    stats["warnings"] = [f.to_dict() for f in _plausibility(root, stats, sj)]
    # the checks may run the model (a probe of other resolutions): timed apart from writing
    timings["plausibility_s"] = time.perf_counter() - t_check
    _mark(root, stage="written", statistics=Statistics.from_dict(stats))
    remove_leftovers(sj.out)
    timings["write_s"] = time.perf_counter() - t - timings["plausibility_s"]


def _plausibility(root: zarr.Group, stats: dict[str, Any], sj: _SlideJob) -> list[Any]:
    """The result's plausibility findings; the model probes other resolutions if its
    nuclei are of an implausible size (:mod:`wsi_infer.plausibility`)."""
    from wsi_infer.bounds import MAX_MPP, MIN_MPP
    from wsi_infer.plausibility import assess, candidate_mpps, make_probe, probe_centres

    table: Any = root["tables/nuclei"]
    tissue = StoreInfo.read(root, sj.out).tissue
    findings = assess(
        areas=np.asarray(table["area_um2"][:], np.float64),
        type_prob=np.asarray(table["type_prob"][:], np.float64),
        n_classes=len(sj.backend.config.class_names),
        tissue_fraction=tissue.fraction
        if tissue is not None and sj.params.tissue.enabled
        else None,
        density_per_mm2=stats.get("density_per_mm2"),
        config=sj.backend.config,
        mpp=sj.slide_mpp,
        mpp_source="metadata" if sj.params.mpp is None else "--mpp",
        probe=make_probe(
            sj.slide, sj.backend, sj.params, probe_centres(np.asarray(table["centroid"][:]))
        ),
        candidates=candidate_mpps(sj.slide_mpp, MIN_MPP, MAX_MPP),
    )
    for f in findings:
        logger.warning("%s: %s", sj.out, f.message)
    return findings
