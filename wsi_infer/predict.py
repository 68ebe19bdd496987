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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer.backends import Backend, create_backend
from wsi_infer.errors import CheckpointError, IdentityMismatchError
from wsi_infer.identity import slide_identity
from wsi_infer.postprocess import logits_to_maps
from wsi_infer.reader import GridReader, open_slide
from wsi_infer.tiling import TileGrid

__all__ = [
    "BackendSpec",
    "PredictJob",
    "RowTracker",
    "execute",
    "missing_tiles",
    "normalise",
    "predict_tiles",
    "tile_done",
]

logger = logging.getLogger(__name__)


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
        source = Path(backend.model_source)
        return cls(
            backend.name,
            str(source.absolute()) if source.exists() else backend.model_source,
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
    from wsi_infer.store import ATTR

    try:
        root = zarr.open_group(store, mode="r+")
        seen = root.attrs.get(ATTR, {}).get("store_id")  # type: ignore[union-attr]
    except (FileNotFoundError, ValueError, AttributeError, zarr.errors.NodeTypeValidationError):
        seen = None
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


def normalise(
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
        maps = _process_maps(job.store, job.store_id)
        reader = _process_reader(job.slide, job.scale, job.slide_content)
        backend, lock = _process_backend(job.backend)
    else:
        backend, lock, reader = local
        maps = job.maps
    grid, t = job.grid, job.grid.tile
    imgs = np.stack([reader.read(x, y, t, t) for y, x in (grid.origin(i, j) for i, j in tiles)])
    batch = normalise(imgs, backend.config.mean, backend.config.std)
    with lock:
        logits = backend(batch)
    want = (len(tiles), backend.config.out_channels, t, t)
    if tuple(logits.shape) != want:
        raise CheckpointError(
            f"{backend.model_source}: the model returned {tuple(logits.shape)} for "
            f"{len(tiles)} tiles of {t} px, its config needs {want}; the model file and its "
            "config do not belong together"
        )
    out = logits_to_maps(logits)
    h = grid.halo
    for k, (i, j) in enumerate(tiles):
        y0, y1, x0, x1 = grid.core(i, j)
        maps[y0:y1, x0:x1] = out[k, h : h + y1 - y0, h : h + x1 - x0]
    return list(tiles)


class RowTracker:
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


def tile_done(maps: Any, grid: TileGrid, tile: tuple[int, int]) -> bool:
    """A tile is done when its chunk is on disk: its type-probability channel is never 0."""
    y0, _, x0, _ = grid.core(*tile)
    try:
        return bool(maps[y0, x0, 3] != 0)
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


def execute(
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
