"""The engine: slide in, every nucleus once in a zarr store out.

This module runs one slide: tissue, the store, and the two stages, both scheduled
with dask (local threads, or a dask.distributed cluster) and run side by side:

1. **Predict.**  Tissue tiles (the model's input ``tile`` pixels, of which the
   central ``tile - overlap`` are kept) are read, batched and run through the
   backend; the compact maps of each tile's core go into the store's scratch
   array, one zarr chunk per tile.  Reading runs in parallel with the model,
   which one lock per process keeps to one batch at a time.  A chunk on disk is
   a tile done: a run started again skips it.
2. **Segment and stitch.**  The seamless maps are cut into windows (bands of
   ``label_chunk`` rows, ``window_cols`` wide) read with a margin on every side.
   A nucleus belongs to the window whose core holds its centroid, so each one is
   taken exactly once and whole; objects wider than ``margin`` are no nuclei and
   are dropped, so whatever is kept was seen whole.  The client numbers each
   band's nuclei in raster order (deterministic ids 1..n) and paints them into
   a rolling canvas of ``2 * label_chunk + margin`` rows, written out band by
   band: memory is bounded by the slide's width, never its area.  This stage is
   cheap and deterministic, so a resumed run simply does it again.

The store's ``status`` turns ``complete`` last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer import __version__
from wsi_infer.backends import Backend
from wsi_infer.errors import OutputExistsError, OutputWriteError, WsiInferError
from wsi_infer.params import RunParams
from wsi_infer.predict import (
    BackendSpec,
    PredictJob,
    PredictResult,
    RowTracker,
    execute,
    predict_tiles,
    tile_done,
)
from wsi_infer.reader import GridReader, Slide, open_slide, resolve_mpp
from wsi_infer.scheduler import Call, predict_priority
from wsi_infer.stitch import stitch
from wsi_infer.store import (
    ATTR,
    append_table,
    build_pyramid,
    create_store,
    prepare_output,
    reset_table,
)
from wsi_infer.tiling import TileGrid
from wsi_infer.tissue import detect_tissue, read_thumbnail

__all__ = ["ProgressFactory", "RunParams", "RunSummary", "run_slide"]

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
    "predict_write_s",
    "predict_write_cpu_s",
)


ProgressFactory = Callable[[int, str], Any]


@dataclass
class RunSummary:
    store: str
    nuclei: int
    tiles: int
    seconds: float
    timings: dict[str, float]
    status: str = "complete"
    tiles_computed: int = 0

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


def _slide_record(slide: Slide, slide_mpp: float, mpp_source: str) -> dict[str, Any]:
    stat = slide.path.stat()
    with slide.path.open("rb") as fh:
        head = hashlib.sha256(fh.read(1 << 20)).hexdigest()
    return {
        "path": str(slide.path.resolve()),
        "name": slide.path.name,
        "size_bytes": stat.st_size,
        "head_sha256": head,
        "reader": slide.backend,
        "vendor": slide.properties.get("openslide.vendor", slide.backend),
        "dimensions": list(slide.dimensions),
        "levels": len(slide.level_dimensions),
        "mpp": slide_mpp,
        "mpp_source": mpp_source,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fingerprint(slide: dict[str, Any], backend: Backend, params: RunParams) -> dict[str, Any]:
    """What must match for an existing store to be resumed or taken as done."""
    return {
        "slide": {k: slide[k] for k in ("path", "size_bytes", "head_sha256", "mpp")},
        "model_sha256": backend.model_sha256,
        "backend": backend.name,
        "device": backend.device,
        "parameters": params.output_defining(),
    }


def _existing(out: Path, fingerprint: dict[str, Any]) -> tuple[zarr.Group, str]:
    """An existing output that may be resumed: its group and status, else OutputExistsError."""
    hint = "pass --overwrite to replace it, or choose another --out"
    try:
        root = zarr.open_group(str(out), mode="r+")
        info = root.attrs.get(ATTR)
    except Exception:
        raise OutputExistsError(
            f"{out}: already exists and is not a wsi-infer store; {hint}"
        ) from None
    if not isinstance(info, dict) or info.get("fingerprint") != fingerprint:
        raise OutputExistsError(
            f"{out}: already exists with another slide, model or parameters; {hint}"
        )
    status = str(info.get("status"))
    if status != "complete" and "_scratch" not in root and info.get("stage") != "written":
        raise OutputExistsError(f"{out}: an interrupted run that cannot be resumed; {hint}")
    return root, status


def run_slide(
    slide_path: str | Path,
    out: str | Path,
    backend: Backend,
    params: RunParams | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    client: Any = None,
) -> RunSummary:
    """Process one slide into the store ``out``; see the module docstring.

    An existing ``out`` from the same slide, model and parameters is resumed
    (or, when complete, left as it is); anything else there is an error unless
    ``overwrite``.  ``client`` is a ``distributed.Client``: predict tasks then
    run on its workers (each loads the model once; with ``device="cuda"`` they
    ask for one ``GPU`` resource each).  ``progress(total, description)`` may
    return a tqdm-like bar.  Raises :class:`~wsi_infer.errors.WsiInferError`
    subclasses for bad input; a run that fails midway leaves its store marked
    ``failed``, resumable once the cause is fixed.
    """
    params = params or RunParams.for_model(backend.config)
    params.check_model(backend.config)
    check_shapes = getattr(backend, "check_shapes", None)  # backends built for fixed shapes
    if check_shapes is not None:
        check_shapes(params.tile_size, params.batch_size)
    started, t0 = _now(), time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    slide = open_slide(slide_path)
    try:
        slide_mpp = resolve_mpp(slide, params.mpp)
        cfg = backend.config
        scale = _scale_for(slide_mpp, cfg.mpp)
        reader = GridReader(slide, scale)
        run_mpp = slide_mpp * scale
        grid = TileGrid(reader.height, reader.width, params.tile_size, params.overlap)
        record = _slide_record(slide, slide_mpp, "metadata" if params.mpp is None else "--mpp")
        fingerprint = _fingerprint(record, backend, params)

        root: zarr.Group | None = None
        if out.exists() and not overwrite:
            root, status = _existing(out, fingerprint)
            info: Any = root.attrs[ATTR]
            if status == "complete":
                return RunSummary(
                    str(out), int(info["nuclei"]), int(info["tiles"]), 0.0, {}, status="skipped"
                )
            logger.info("%s: resuming an interrupted run", out)
            tissue_grid = np.asarray(root["labels/tissue/0"][:]).astype(bool)  # type: ignore[index]
            tiles = grid.select(tissue_grid)
        else:
            t = time.perf_counter()
            # Tissue: at least 64 px on the short side, never finer than the slide itself.
            w0, h0 = slide.dimensions
            tissue_mpp = max(min(params.tissue.mpp, min(w0, h0) * slide_mpp / 64), slide_mpp)
            thumb = read_thumbnail(slide, slide_mpp, tissue_mpp)
            tissue = detect_tissue(thumb, tissue_mpp, params.tissue)
            tiles = grid.select(tissue)
            timings["tissue_s"] = time.perf_counter() - t
            prepare_output(out, overwrite)
            attrs = {
                "software": {"name": "wsi-infer", "version": __version__},
                "model": {
                    **cfg.to_dict(),
                    "sha256": backend.model_sha256,
                    "source": backend.model_source,
                },
                "backend": {"name": backend.name, "device": backend.device},
                "parameters": dataclasses.asdict(params),
                "slide": record,
                "run_mpp": run_mpp,
                "grid_shape": [reader.height, reader.width],
                "grid_to_level0": scale,
                "tissue": {
                    "mpp": tissue_mpp,
                    "fraction": float(tissue.mean()) if tissue.size else 0.0,
                },
                "tiles": len(tiles),
                "fingerprint": fingerprint,
                "started": started,
            }
            root = _guard_write(
                out,
                lambda: create_store(
                    out,
                    grid_shape=(reader.height, reader.width),
                    chunk=params.label_chunk,
                    map_chunk=grid.stride,
                    tissue=tissue,
                    tissue_mpp=tissue_mpp,
                    run_mpp=run_mpp,
                    class_names=cfg.class_names,
                    class_colours=cfg.class_colours,
                    attrs=attrs,
                ),
            )
        assert root is not None
        try:
            nuclei, computed = _guard_write(
                out,
                lambda: _run_stages(
                    root,
                    grid,
                    reader,
                    backend,
                    params,
                    tiles,
                    scale,
                    run_mpp,
                    timings,
                    progress,
                    client,
                    str(slide.path),
                ),
            )
        except BaseException as exc:
            _mark(root, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
    finally:
        slide.close()

    seconds = time.perf_counter() - t0
    _mark(
        root, nuclei=nuclei, finished=_now(), seconds=seconds, timings=timings, status="complete"
    )  # the last write: only now is the store complete
    return RunSummary(str(out), nuclei, len(tiles), seconds, timings, tiles_computed=computed)


def _mark(root: zarr.Group, **changes: Any) -> None:
    info = dict(root.attrs[ATTR])  # type: ignore[arg-type]
    info.update(changes)
    if info.get("status") != "failed":
        info.pop("error", None)
    try:
        root.attrs[ATTR] = info
    except OSError:
        logger.exception("could not record status %r in the store", changes.get("status"))


def _guard_write(out: Path, fn: Callable[[], Any]) -> Any:
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
    grid: TileGrid,
    reader: GridReader,
    backend: Backend,
    params: RunParams,
    tiles: list[tuple[int, int]],
    scale: float,
    run_mpp: float,
    timings: dict[str, float],
    progress: ProgressFactory | None,
    client: Any,
    slide_path: str,
) -> tuple[int, int]:
    info: Any = root.attrs[ATTR]
    nuclei_arr: Any = root["labels/nuclei/0"]
    types_arr: Any = root["labels/types/0"]
    if info.get("stage") == "written":  # only the scratch removal and the status were left
        if "_scratch" in root:
            del root["_scratch"]
        return int(info["nuclei"]), 0
    maps: Any = root["_scratch/maps"]

    # Stage 1: predict the tiles not on disk yet.
    t = time.perf_counter()
    # Batches are fixed by the tile list, so a resumed run feeds the model exactly the
    # batches an uninterrupted one would (results can depend on a batch's make-up).
    bs = params.batch_size
    batches = [tiles[k : k + bs] for k in range(0, len(tiles), bs)]
    todo = [
        (k, b) for k, b in enumerate(batches) if not all(tile_done(maps, grid, tile) for tile in b)
    ]
    pending = sum(len(b) for _, b in todo)
    job = PredictJob(slide_path, scale, grid, maps, BackendSpec.of(backend))
    local = None if client is not None else (backend, threading.Lock(), reader)
    # Top rows first (an explicit priority, see wsi_infer.scheduler), so stage 2 can start
    # on the first bands while the model works further down.
    tasks = [
        Call(predict_priority(b), f"predict-{k:09d}", predict_tiles, (job, b, local))
        for k, b in todo
    ]
    # Stage 2 runs beside stage 1: a band is segmented as soon as every tile row it
    # reads is predicted, so post-processing overlaps the model instead of following it.
    tracker = RowTracker(todo, grid)
    bar = progress(len(tiles), "predict") if progress else None
    if bar is not None and len(tiles) > pending:
        bar.update(len(tiles) - pending)

    busy = dict.fromkeys(PREDICT_BUSY, 0.0)
    busy_lock = threading.Lock()  # results arrive in the predict threads

    def predicted(done: PredictResult) -> None:
        with busy_lock:
            for key in PREDICT_BUSY:
                busy[key] += getattr(done, key.removeprefix("predict_"))
            if bar is not None:
                bar.update(len(done.tiles))
        tracker.done(done.tiles)

    resources = {"GPU": 1.0} if client is not None and backend.device.startswith("cuda") else None

    def predict() -> None:
        try:
            execute(tasks, client, params.workers, predicted, resources)
        except BaseException as exc:
            tracker.fail(exc)
        else:
            tracker.finish()

    worker = threading.Thread(target=predict, name="wsi-infer-predict", daemon=True)
    worker.start()
    reset_table(root)
    n_bands = math.ceil(grid.height / params.label_chunk)
    seg_bar = progress(n_bands, "segment") if progress else None
    seg_seconds = 0.0
    seg_busy: dict[str, float] = {}

    def before_band(y: int) -> None:
        nonlocal seg_seconds
        tracker.wait_rows(y)
        seg_seconds -= time.perf_counter()

    def after_band(rows: dict[str, NDArray[Any]]) -> None:
        nonlocal seg_seconds
        seg_seconds += time.perf_counter()
        _after_band(root, rows, seg_bar)

    try:
        nuclei = stitch(
            maps,
            nuclei_arr,
            types_arr,
            params,
            scale=scale,
            run_mpp=run_mpp,
            on_band=after_band,
            before_band=before_band,
            busy=seg_busy,
        )
        tracker.wait_rows(grid.height)  # all of stage 1, whatever the bands needed
        worker.join()
    finally:
        # On an error the predict thread is left to end on its own (it cannot be
        # cancelled midway); it only writes scratch chunks of this store.
        for b in (bar, seg_bar):
            if b is not None:
                b.close()
    timings["predict_s"] = tracker.finished_at - t
    timings["segment_s"] = seg_seconds
    timings.update(busy)
    timings.update(seg_busy)

    t = time.perf_counter()
    labels_group = root["labels"]
    assert isinstance(labels_group, zarr.Group)
    for name in ("nuclei", "types"):
        g = labels_group[name]
        assert isinstance(g, zarr.Group)
        build_pyramid(g, name, run_mpp, params.label_chunk)
    from wsi_infer.stats import slide_statistics

    _mark(root, nuclei=nuclei)
    _mark(root, stage="written", statistics=slide_statistics(root))
    del root["_scratch"]
    timings["write_s"] = time.perf_counter() - t
    return nuclei, pending


def _after_band(root: zarr.Group, rows: dict[str, NDArray[Any]], bar: Any) -> None:
    append_table(root, rows)
    if bar is not None:
        bar.update(1)
