"""The engine: slide in, every nucleus once in a zarr store out.

Two stages, both scheduled with dask (local threads, or a dask.distributed cluster):

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
import functools
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer import __version__
from wsi_infer.backends import Backend, create_backend
from wsi_infer.errors import CheckpointError, OutputExistsError, OutputWriteError, WsiInferError
from wsi_infer.postprocess import PostprocessParams, instance_types, logits_to_maps, segment
from wsi_infer.reader import GridReader, Slide, open_slide, resolve_mpp
from wsi_infer.store import (
    ATTR,
    append_table,
    build_pyramid,
    create_store,
    prepare_output,
    reset_table,
)
from wsi_infer.tiling import TileGrid, windows
from wsi_infer.tissue import TissueParams, detect_tissue, read_thumbnail

__all__ = ["BackendSpec", "RunParams", "RunSummary", "run_slide", "stitch"]

logger = logging.getLogger(__name__)

#: A slide whose mpp is within this fraction of the model's is read at its own grid, unresampled.
MPP_TOLERANCE = 0.02


@dataclass(frozen=True)
class RunParams:
    """Everything that shapes a run's output (recorded in the store), and its thread count."""

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 2
    mpp: float | None = None
    workers: int = 2
    label_chunk: int = 512
    window_cols: int = 2048
    margin: int = 96
    tissue: TissueParams = field(default_factory=TissueParams)
    post: PostprocessParams = field(default_factory=PostprocessParams)

    def __post_init__(self) -> None:
        if self.tile_size < 64 or self.tile_size % 32:
            raise ValueError(
                f"tile size must be a multiple of 32 and at least 64, got {self.tile_size}"
            )
        TileGrid(1, 1, self.tile_size, self.overlap)  # validates overlap
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError("batch size and workers must be at least 1")
        if self.margin < 8 or self.label_chunk < 64 or self.window_cols % self.label_chunk:
            raise ValueError(
                "margin >= 8, label_chunk >= 64, window_cols a multiple of label_chunk"
            )

    def output_defining(self) -> dict[str, Any]:
        """The parameters the output depends on (not the thread count)."""
        d = dataclasses.asdict(self)
        d.pop("workers")
        return d


@dataclass(frozen=True)
class BackendSpec:
    """How to build a backend anywhere (a dask worker builds its own, once per process)."""

    name: str
    model: str
    device: str
    threads: int | None = None
    sha256: str = ""

    @classmethod
    def of(cls, backend: Backend) -> BackendSpec:
        return cls(
            backend.name,
            backend.model_source,
            backend.device,
            getattr(backend, "threads", None),
            backend.model_sha256,
        )


@functools.lru_cache(maxsize=4)
def _process_backend(spec: BackendSpec) -> tuple[Backend, threading.Lock]:
    """One model (and one lock serialising its calls) per process and spec."""
    backend = create_backend(spec.name, spec.model, device=spec.device, threads=spec.threads)
    if spec.sha256 and backend.model_sha256 != spec.sha256:
        raise CheckpointError(
            f"{spec.model}: this worker's copy of the model differs from the client's "
            f"(sha256 {backend.model_sha256[:12]} != {spec.sha256[:12]}); give every worker "
            "the same model file"
        )
    return backend, threading.Lock()


@functools.lru_cache(maxsize=8)
def _process_reader(path: str, scale: float) -> GridReader:
    return GridReader(open_slide(path), scale)


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


@dataclass
class WindowNuclei:
    """Nuclei owned by one window, in raster order of their first pixel."""

    bbox: NDArray[np.int64]  # (n, 4) grid y0 y1 x0 x1
    masks: list[NDArray[np.bool_]]
    centroid: NDArray[np.float64]  # (n, 2) grid y x
    area: NDArray[np.int64]
    types: NDArray[np.uint8]
    probs: NDArray[np.float32]

    @classmethod
    def empty(cls) -> WindowNuclei:
        return cls(
            np.zeros((0, 4), np.int64),
            [],
            np.zeros((0, 2)),
            np.zeros(0, np.int64),
            np.zeros(0, np.uint8),
            np.zeros(0, np.float32),
        )


ProgressFactory = Callable[[int, str], Any]


@dataclass(frozen=True)
class PredictJob:
    """What a predict task needs, small and picklable: it runs on any worker."""

    slide: str
    scale: float
    grid: TileGrid
    maps: Any  # the scratch zarr array (pickles as its store and path)
    backend: BackendSpec


def _normalise(
    tiles: NDArray[np.uint8], mean: tuple[float, ...], std: tuple[float, ...]
) -> NDArray[np.float32]:
    x = tiles.astype(np.float32) / 255.0
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def predict_tiles(
    job: PredictJob,
    tiles: Sequence[tuple[int, int]],
    local: tuple[Backend, threading.Lock, GridReader] | None = None,
) -> list[tuple[int, int]]:
    """Read, infer and store the maps of ``tiles``; returns them.

    ``local`` passes the caller's backend, lock and reader (threads of one
    process); without it, the worker's own (cached) ones are used.
    """
    if local is None:
        backend, lock = _process_backend(job.backend)
        reader = _process_reader(job.slide, job.scale)
    else:
        backend, lock, reader = local
    grid, t = job.grid, job.grid.tile
    imgs = np.stack([reader.read(x, y, t, t) for y, x in (grid.origin(i, j) for i, j in tiles)])
    batch = _normalise(imgs, backend.config.mean, backend.config.std)
    with lock:
        logits = backend(batch)
    out = logits_to_maps(logits)
    h = grid.halo
    for k, (i, j) in enumerate(tiles):
        y0, y1, x0, x1 = grid.core(i, j)
        job.maps[y0:y1, x0:x1] = out[k, h : h + y1 - y0, h : h + x1 - x0]
    return list(tiles)


class _RowTracker:
    """Which tile rows are fully predicted; lets stage 2 wait for the rows it reads."""

    def __init__(self, todo: list[tuple[int, list[tuple[int, int]]]], grid: TileGrid) -> None:
        self.grid = grid
        self.missing = [0] * grid.shape[0]
        for _, batch in todo:
            for i, _j in batch:
                self.missing[i] += 1
        self.error: BaseException | None = None
        self.finished = False
        self.finished_at = time.perf_counter()
        self._cond = threading.Condition()

    def done(self, tiles: list[tuple[int, int]]) -> None:
        with self._cond:
            for i, _j in tiles:
                self.missing[i] -= 1
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.finished, self.finished_at = True, time.perf_counter()
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self.error, self.finished = exc, True
            self._cond.notify_all()

    def wait_rows(self, y: int) -> None:
        """Block until the maps above grid row ``y`` are final; re-raise stage 1's error."""
        last = min((y - 1) // self.grid.stride, self.grid.shape[0] - 1)
        with self._cond:
            while True:
                if self.error is not None:
                    raise self.error
                if self.finished or not any(self.missing[: last + 1]):
                    return
                self._cond.wait()


def _tile_done(maps: Any, grid: TileGrid, tile: tuple[int, int]) -> bool:
    """A tile is done when its chunk is on disk: its type-probability channel is never 0."""
    y0, _, x0, _ = grid.core(*tile)
    try:
        return bool(maps[y0, x0, 3] != 0)
    except Exception:  # a chunk cut short by a crash: not done, it will be written again
        logger.warning("scratch chunk of tile %s unreadable; recomputing it", tile)
        return False


def _execute(
    tasks: list[Any],
    client: Any,
    workers: int,
    on_result: Callable[[Any], None] | None,
    resources: dict[str, float] | None = None,
) -> list[Any]:
    """Compute dask delayed ``tasks`` locally (threads) or on ``client``; results in order."""
    if not tasks:
        return []
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks, resources=resources)
        for fut in as_completed(futures):
            if on_result is not None:
                on_result(fut.result())
        return list(client.gather(futures))
    from dask.base import compute
    from dask.callbacks import Callback

    keys = {t.key for t in tasks}

    class _Progress(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            if key in keys and on_result is not None:
                on_result(result)

    with _Progress():
        return list(compute(*tasks, scheduler="threads", num_workers=workers))


def segment_window(
    maps: zarr.Array[Any] | NDArray[np.uint8],
    core: tuple[int, int, int, int],
    margin: int,
    post: PostprocessParams,
) -> WindowNuclei:
    """Segment ``core`` plus ``margin`` of ``maps``; keep the nuclei whose centroid is in ``core``."""
    from scipy import ndimage as ndi

    height, width = maps.shape[:2]
    y0, y1, x0, x1 = core
    wy0, wy1 = max(0, y0 - margin), min(height, y1 + margin)
    wx0, wx1 = max(0, x0 - margin), min(width, x1 + margin)
    window = np.asarray(maps[wy0:wy1, wx0:wx1])
    labels = segment(window, post)
    n = int(labels.max())
    if n == 0:
        return WindowNuclei.empty()
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    yy, xx = np.divmod(np.arange(flat.size), labels.shape[1])
    cy = np.bincount(flat, weights=yy, minlength=n + 1)[1:] / area + wy0
    cx = np.bincount(flat, weights=xx, minlength=n + 1)[1:] / area + wx0
    iy, ix = np.floor(cy), np.floor(cx)
    objects = ndi.find_objects(labels)
    extent = np.array(
        [
            max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
            for sl in objects
            if sl is not None
        ]
    )
    # An object wider than the margin is no nucleus (and could not be seen whole): drop it.
    owned = np.flatnonzero((iy >= y0) & (iy < y1) & (ix >= x0) & (ix < x1) & (extent <= margin))
    if owned.size == 0:
        return WindowNuclei.empty()
    types, probs = instance_types(labels, window, n)
    bbox = np.zeros((owned.size, 4), np.int64)
    masks = []
    for r, k in enumerate(owned):
        sl = objects[k]
        assert sl is not None
        masks.append(labels[sl] == k + 1)
        bbox[r] = (sl[0].start + wy0, sl[0].stop + wy0, sl[1].start + wx0, sl[1].stop + wx0)
    return WindowNuclei(
        bbox, masks, np.stack([cy[owned], cx[owned]], 1), area[owned], types[owned], probs[owned]
    )


class _Canvas:
    """Rolling label/type buffer over grid rows ``[base, base + rows)``, full width."""

    def __init__(self, width: int, chunk: int, margin: int) -> None:
        self.chunk = chunk
        self.rows = 2 * chunk + margin
        self.base = -chunk
        self.labels = np.zeros((self.rows, width), np.uint32)
        self.types = np.zeros((self.rows, width), np.uint8)

    def paint(self, bbox: NDArray[np.int64], mask: NDArray[np.bool_], ident: int, typ: int) -> None:
        y0, y1, x0, x1 = (int(v) for v in bbox)
        sub = self.labels[y0 - self.base : y1 - self.base, x0:x1]
        free = mask & (sub == 0)  # first painted wins: deterministic, as ids follow raster order
        sub[free] = ident
        self.types[y0 - self.base : y1 - self.base, x0:x1][free] = typ

    def flush(self, nuclei: Any, types: Any, height: int) -> None:
        """Write the first ``chunk`` rows (now final) and roll the buffer by ``chunk`` rows."""
        c = self.chunk
        y0, y1 = max(self.base, 0), min(self.base + c, height)
        if y1 > y0:
            nuclei[y0:y1] = self.labels[y0 - self.base : y1 - self.base]
            types[y0:y1] = self.types[y0 - self.base : y1 - self.base]
        self.labels[:-c] = self.labels[c:]
        self.labels[-c:] = 0
        self.types[:-c] = self.types[c:]
        self.types[-c:] = 0
        self.base += c


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
    params: RunParams = RunParams(),
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
    from dask.delayed import delayed

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
        (k, b) for k, b in enumerate(batches) if not all(_tile_done(maps, grid, tile) for tile in b)
    ]
    pending = sum(len(b) for _, b in todo)
    job = PredictJob(slide_path, scale, grid, maps, BackendSpec.of(backend))
    local = None if client is not None else (backend, threading.Lock(), reader)
    tasks = [
        delayed(predict_tiles, pure=False)(job, b, local, dask_key_name=f"predict-{k}")
        for k, b in todo
    ]
    # Stage 2 runs beside stage 1: a band is segmented as soon as every tile row it
    # reads is predicted, so post-processing overlaps the model instead of following it.
    tracker = _RowTracker(todo, grid)
    bar = progress(len(tiles), "predict") if progress else None
    if bar is not None and len(tiles) > pending:
        bar.update(len(tiles) - pending)

    def predicted(done: list[tuple[int, int]]) -> None:
        tracker.done(done)
        if bar is not None:
            bar.update(len(done))

    resources = {"GPU": 1.0} if client is not None and backend.device.startswith("cuda") else None

    def predict() -> None:
        try:
            _execute(tasks, client, params.workers, predicted, resources)
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


def stitch(
    maps: zarr.Array[Any] | NDArray[np.uint8],
    nuclei_out: zarr.Array[Any] | NDArray[np.uint32],
    types_out: zarr.Array[Any] | NDArray[np.uint8],
    params: RunParams,
    *,
    scale: float = 1.0,
    run_mpp: float = 1.0,
    on_band: Callable[[dict[str, NDArray[Any]]], None] | None = None,
    before_band: Callable[[int], None] | None = None,
) -> int:
    """Segment seamless ``maps`` window by window into ``nuclei_out``/``types_out``.

    Each nucleus is taken once, by the window holding its centroid, numbered in
    raster order of windows and of its first pixel; ``on_band`` receives each
    band's table rows.  ``before_band(y)`` is called before a band is read and
    may block until the maps' rows above ``y`` are final.  Returns the number of
    nuclei.
    """
    from dask.base import compute
    from dask.delayed import delayed

    height, width = maps.shape[:2]
    chunk = params.label_chunk
    canvas = _Canvas(width, chunk, params.margin)
    next_id = 1
    for _, cores in windows(height, width, chunk, params.window_cols):
        if before_band is not None:
            before_band(min(cores[0][1] + params.margin, height))
        parts = compute(
            *[delayed(segment_window)(maps, c, params.margin, params.post) for c in cores],
            scheduler="threads",
            num_workers=params.workers,
        )
        rows = _paint_band(canvas, parts, next_id, scale, run_mpp)
        if on_band is not None:
            on_band(rows)
        next_id += len(rows["id"])
        canvas.flush(nuclei_out, types_out, height)
    canvas.flush(nuclei_out, types_out, height)  # the last band's rows
    return next_id - 1


def _paint_band(
    canvas: _Canvas, parts: tuple[WindowNuclei, ...], first_id: int, scale: float, run_mpp: float
) -> dict[str, NDArray[Any]]:
    ident = first_id
    for part in parts:
        for k in range(len(part.masks)):
            canvas.paint(part.bbox[k], part.masks[k], ident, int(part.types[k]))
            ident += 1
    n = ident - first_id
    if n == 0:
        return {"id": np.zeros(0, np.uint32)}
    bbox = np.concatenate([p.bbox for p in parts])
    cen = np.concatenate([p.centroid for p in parts])
    # grid pixel centres -> level-0 pixel coordinates
    cx = (cen[:, 1] + 0.5) * scale - 0.5
    cy = (cen[:, 0] + 0.5) * scale - 0.5
    return {
        "id": np.arange(first_id, first_id + n, dtype=np.uint32),
        "centroid": np.stack([cx, cy], 1).astype(np.float32),
        "bbox": np.stack(
            [
                np.floor(bbox[:, 2] * scale),
                np.floor(bbox[:, 0] * scale),
                np.ceil(bbox[:, 3] * scale),
                np.ceil(bbox[:, 1] * scale),
            ],
            1,
        ).astype(np.int32),
        "area_um2": (np.concatenate([p.area for p in parts]) * run_mpp**2).astype(np.float32),
        "type": np.concatenate([p.types for p in parts]),
        "type_prob": np.concatenate([p.probs for p in parts]),
    }
