"""Stage 1, predict: tiles read, batched and run through the backend, maps stored per tile.

Each tile's core goes into the store's scratch array as one zarr chunk; a chunk on
disk is a tile done, so a run started again skips it.  Tasks run in threads of this
process or on the workers of a dask cluster (each builds its own backend and reader,
once per process).  Paths sent to workers are absolute, and a worker checks, once
per process, that it sees the client's slide (size and sampled-content hash) and
store (its random ``store_id``) before it writes anything.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from wsi_infer.backends import Backend
from wsi_infer.errors import CheckpointError, IdentityMismatchError
from wsi_infer.heads import Head
from wsi_infer.identity import slide_identity
from wsi_infer.reader import GridReader, open_slide
from wsi_infer.recipe import BackendRecipe
from wsi_infer.tiling import TileGrid

__all__ = [
    "BackendSpec",
    "PredictJob",
    "PredictResult",
    "missing_tiles",
    "predict_tiles",
    "tile_done",
]

logger = logging.getLogger(__name__)


#: How a dask worker builds its backend: the client's complete recipe, shipped whole.
BackendSpec = BackendRecipe


def model_slots(backend: Backend, workers: int) -> int:
    """How many of ``workers`` threads may call ``backend`` at once: its
    :attr:`~wsi_infer.backends.Backend.concurrency`, at least 1."""
    return max(1, min(workers, getattr(backend, "concurrency", 1)))


def _worker_threads() -> int:
    """Threads of the dask worker running this task (1 outside a worker)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


@functools.lru_cache(maxsize=4)
def _process_backend(spec: BackendSpec) -> tuple[Backend, threading.BoundedSemaphore]:
    """One model (and the slots admitting its concurrent calls) per process and spec."""
    backend = spec.build()
    if spec.sha256 and backend.model_sha256 != spec.sha256:
        raise CheckpointError(
            f"{spec.model}: this worker's copy of the model differs from the client's "
            f"(sha256 {backend.model_sha256[:12]} != {spec.sha256[:12]}); give every worker "
            "the same model file"
        )
    return backend, threading.BoundedSemaphore(model_slots(backend, _worker_threads()))


@functools.lru_cache(maxsize=8)
def _process_reader(path: str, scale: float, content: str) -> GridReader:
    """The slide at ``path``, once it is proven to be the client's (``content`` identity)."""
    seen = slide_identity(Path(path)).content
    if seen != content:
        raise IdentityMismatchError(
            f"{path}: this worker sees another file than the client at this path (size and "
            f"sampled sha256 {seen[:24]}... != {content[:24]}...); give every worker the same "
            "slide at the same absolute path"
        )
    return GridReader(open_slide(path), scale)


@functools.lru_cache(maxsize=8)
def _process_maps(store: str, store_id: str) -> Any:
    """The scratch array of the store at ``store``, once it is proven to be the client's."""
    from wsi_infer.storeinfo import StoreInfo

    try:
        root = zarr.open_group(store, mode="r+")
        seen = StoreInfo.read(root, store).store_id
    except (FileNotFoundError, ValueError, zarr.errors.NodeTypeValidationError):
        seen = None  # IncompleteStoreError too: a ValueError
    if seen != store_id:
        raise IdentityMismatchError(
            f"{store}: this worker does not see the client's store at this path (store id "
            f"{seen} != {store_id}); put the output on a filesystem every worker shares, at the "
            "same absolute path"
        )
    return root["_scratch/maps"]


@dataclass(frozen=True)
class PredictJob:
    """What a predict task needs, small and picklable: it runs on any worker.

    ``slide`` and ``store`` are absolute paths; ``slide_content`` and
    ``store_id`` are what a worker checks it sees there.  ``maps`` is the
    client's scratch array, used by tasks run in the client's own threads.
    """

    slide: str
    slide_content: str
    store: str
    store_id: str
    scale: float
    grid: TileGrid
    maps: Any
    backend: BackendSpec

    def __post_init__(self) -> None:
        from wsi_infer.location import is_url

        store_ok = is_url(self.store) or Path(self.store).is_absolute()
        if not (Path(self.slide).is_absolute() and store_ok):
            raise ValueError("a predict job needs absolute slide and store paths (or a store URL)")


@dataclass(frozen=True)
class PredictResult:
    """The tiles a predict task did and where its time went, measured by the worker itself:
    wall (``*_s``) and this thread's CPU (``*_cpu_s``) reading and writing, the model's
    busy time (``model_s``, the backend call; ``model_cpu_s`` the CPU seconds of the calling
    thread in it, the wait included) and the wait for the model (``wait_s``)."""

    tiles: list[tuple[int, int]]
    read_s: float = 0.0
    read_cpu_s: float = 0.0
    wait_s: float = 0.0
    model_s: float = 0.0
    model_cpu_s: float = 0.0
    write_s: float = 0.0
    write_cpu_s: float = 0.0


def predict_tiles(
    job: PredictJob,
    tiles: Sequence[tuple[int, int]],
    local: tuple[Backend, AbstractContextManager[Any], GridReader] | None = None,
) -> PredictResult:
    """Read, infer and store the maps of ``tiles``; returns them with the task's timings.

    ``local`` passes the caller's backend, model slots and reader (threads of one
    process); without it, the worker's own (cached) ones are used.
    """
    lock: AbstractContextManager[Any]
    if local is None:
        maps = _process_maps(job.store, job.store_id)
        reader = _process_reader(job.slide, job.scale, job.slide_content)
        backend, lock = _process_backend(job.backend)
    else:
        backend, lock, reader = local
        maps = job.maps
    grid, t = job.grid, job.grid.tile
    t0, c0 = time.perf_counter(), time.thread_time()
    imgs = np.stack([reader.read(x, y, t, t) for y, x in (grid.origin(i, j) for i, j in tiles)])
    t1, c1 = time.perf_counter(), time.thread_time()
    with lock:
        t2 = time.perf_counter()
        out = backend(imgs)  # compact maps, made in the model's graph
        t3 = time.perf_counter()
    c3 = time.thread_time()
    head = backend.config.head
    want = (len(tiles), *head.scratch_shape(t, t))
    if tuple(out.shape) != want or out.dtype != np.dtype(head.map_dtype):
        raise CheckpointError(
            f"{backend.model_source}: the model returned {out.dtype} {tuple(out.shape)} for "
            f"{len(tiles)} tiles of {t} px, the engine needs {head.map_dtype} {want} maps; the model file "
            "and its config do not belong together: export it again with wsi-infer-export"
        )
    h = grid.halo
    for k, (i, j) in enumerate(tiles):
        y0, y1, x0, x1 = grid.core(i, j)
        maps[y0:y1, x0:x1] = out[k, h : h + y1 - y0, h : h + x1 - x0]
    return PredictResult(
        list(tiles),
        read_s=t1 - t0,
        read_cpu_s=c1 - c0,
        wait_s=t2 - t1,
        model_s=t3 - t2,
        model_cpu_s=c3 - c1,
        write_s=time.perf_counter() - t3,
        write_cpu_s=time.thread_time() - c3,
    )


def tile_done(maps: Any, grid: TileGrid, tile: tuple[int, int], head: Head) -> bool:
    """A tile is done when its chunk is on disk: the head's ``done_channel`` is never 0
    in a written tile."""
    y0, _, x0, _ = grid.core(*tile)
    try:
        return bool(maps[y0, x0, head.done_channel] != 0)
    except Exception:  # a chunk cut short by a crash: not done, it will be written again
        logger.warning("scratch chunk of tile %s unreadable; recomputing it", tile)
        return False


def missing_tiles(store: Any, tiles: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Tiles whose scratch chunk is not in the store at ``store`` (a path or a
    :class:`~wsi_infer.location.RemotePath`; one listing)."""
    from wsi_infer.location import walk_files

    folder = store / "_scratch" / "maps" / "c"
    present: set[tuple[int, int]] = set()
    for rel in walk_files(folder) if folder.exists() else []:
        parts = rel.split("/")
        if len(parts) == 3 and parts[2] == "0" and parts[0].isdigit() and parts[1].isdigit():
            present.add((int(parts[0]), int(parts[1])))
    return [t for t in tiles if t not in present]
