"""The schedule of a run: which batches the model gets, in which order, and when a band
may be segmented; and the two ways the calls run (threads here, or a dask cluster).

A run has two stages side by side (:mod:`wsi_infer.engine`): the model predicts tiles
into the store's scratch maps, and segmentation follows band by band.  Everything
that decides *what runs when* is stated here, as data and small rules, so that it
can be tested without a model:

* :class:`PredictPlan` -- from the tile grid, the tiles to predict and the batch size:
  the batches (fixed composition: the tiles in raster order cut every ``batch_size``,
  whichever of them are already done, so a resumed run feeds the model exactly the
  batches an uninterrupted one would; results can depend on a batch's make-up), the
  batches still to run (those with a tile not done), their priorities, and which
  tile rows each band of segmentation reads.
* :func:`predict_priority` -- a number per batch, lower runs first: its topmost row,
  then its leftmost tile.  The model works down the slide from the top, so
  segmentation overlaps prediction instead of waiting for the last tile.
* :class:`RowTracker` -- counts the tiles still to come per tile row; a band is
  released once every row it reads (and every row above it) is predicted.
* :class:`LocalExecution` and :class:`ClusterExecution` -- one interface
  (``run(calls, on_result)``) over a pool of threads that always starts the most
  urgent call waiting (:func:`run_prioritised`), and a ``distributed.Client`` given
  each call's priority (:func:`submit_prioritised`).  Neither depends on how a
  scheduler happens to break ties between tasks.
* :class:`Predicting` -- the plan's calls running in a background thread, which
  segmentation waits on for its rows.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from wsi_infer.tiling import TileGrid

__all__ = [
    "Batch",
    "Call",
    "ClusterExecution",
    "Execution",
    "LocalExecution",
    "PredictPlan",
    "Predicting",
    "RowTracker",
    "execution_for",
    "predict_priority",
    "run_prioritised",
    "submit_prioritised",
]

T = TypeVar("T")
#: A tile ``(row, column)`` of a :class:`~wsi_infer.tiling.TileGrid`.
Tile = tuple[int, int]


@dataclass(frozen=True)
class Call(Generic[T]):
    """``fn(*args)``, to run with ``priority`` (lower runs first) under ``name``."""

    priority: int
    name: str
    fn: Callable[..., T]
    args: tuple[Any, ...]


def predict_priority(tiles: Sequence[Tile]) -> int:
    """Priority of a batch of tiles ``(row, col)``: the topmost row it needs, then its
    leftmost tile, so the slide is predicted top down and row by row."""
    row, col = min(tiles)
    return row * 1_000_000 + col


@dataclass(frozen=True)
class Batch:
    """The ``index``-th batch of a plan: its tiles, in raster order."""

    index: int
    tiles: tuple[Tile, ...]

    def __post_init__(self) -> None:
        if self.index < 0 or not self.tiles:
            raise ValueError("a batch has a non-negative index and at least one tile")

    @property
    def priority(self) -> int:
        """:func:`predict_priority` of the batch (lower runs first)."""
        return predict_priority(self.tiles)

    @property
    def name(self) -> str:
        """The batch's task name: its index in the plan, the same in a resumed run."""
        return f"predict-{self.index:09d}"


@dataclass(frozen=True)
class PredictPlan:
    """The predict stage of one run, and when each band of segmentation may start.

    ``tiles`` are the tiles to predict, in raster order (as
    :meth:`TileGrid.select <wsi_infer.tiling.TileGrid.select>` gives them); they are
    cut into batches of ``batch_size`` in that order, whichever of them are done.
    ``todo`` are the indices of the batches to run (those with a tile not done; see
    :meth:`build`).  Segmentation runs in bands of ``band_rows`` grid rows, each
    read with ``margin`` rows below it (:func:`wsi_infer.stitch.stitch`).
    """

    grid: TileGrid
    tiles: tuple[Tile, ...]
    batch_size: int
    todo: tuple[int, ...]
    band_rows: int
    margin: int

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.band_rows < 1 or self.margin < 0:
            raise ValueError("a plan needs batch_size >= 1, band_rows >= 1 and margin >= 0")
        rows, cols = self.grid.shape
        if any(not (0 <= i < rows and 0 <= j < cols) for i, j in self.tiles):
            raise ValueError(f"a plan's tiles lie on its {rows} x {cols} tile grid")
        if any(a >= b for a, b in zip(self.tiles, self.tiles[1:], strict=False)):
            raise ValueError("a plan's tiles are distinct and in raster order")
        n = self.n_batches
        if any(not 0 <= k < n for k in self.todo) or any(
            a >= b for a, b in zip(self.todo, self.todo[1:], strict=False)
        ):
            raise ValueError(f"a plan's batches to run are distinct indices below {n}, in order")

    @classmethod
    def build(
        cls,
        grid: TileGrid,
        tiles: Sequence[Tile],
        batch_size: int,
        *,
        band_rows: int,
        margin: int,
        done: Callable[[Tile], bool] | None = None,
    ) -> PredictPlan:
        """The plan for ``tiles``; a batch is left out when ``done(tile)`` holds for each of
        its tiles (asked in order, up to the first tile not done)."""
        tiles = tuple(tiles)
        todo = tuple(
            k
            for k in range(0, -(-len(tiles) // batch_size))
            if done is None
            or not all(done(t) for t in tiles[k * batch_size : (k + 1) * batch_size])
        )
        return cls(grid, tiles, batch_size, todo, band_rows, margin)

    # -- the batches ----------------------------------------------------------

    @property
    def n_batches(self) -> int:
        return -(-len(self.tiles) // self.batch_size)

    @property
    def batches(self) -> tuple[Batch, ...]:
        """Every batch of the run, done or not, in order (which is also priority order)."""
        return tuple(self._batch(k) for k in range(self.n_batches))

    @property
    def pending(self) -> tuple[Batch, ...]:
        """The batches to run, in order."""
        return tuple(self._batch(k) for k in self.todo)

    @property
    def pending_tiles(self) -> int:
        """Tiles the pending batches predict (a batch is always run whole)."""
        return sum(len(b.tiles) for b in self.pending)

    def pending_per_row(self) -> list[int]:
        """Tiles of the pending batches, per tile row."""
        counts = [0] * self.grid.shape[0]
        for b in self.pending:
            for i, _ in b.tiles:
                counts[i] += 1
        return counts

    def _batch(self, k: int) -> Batch:
        s = self.batch_size
        return Batch(k, self.tiles[k * s : (k + 1) * s])

    # -- the bands ------------------------------------------------------------

    @property
    def n_bands(self) -> int:
        """Bands of segmentation over the grid."""
        return -(-self.grid.height // self.band_rows)

    def band_reads_to(self, band: int) -> int:
        """The grid row below the last one band ``band`` reads (its rows and the margin)."""
        if not 0 <= band < self.n_bands:
            raise ValueError(f"band {band} is not one of the plan's {self.n_bands}")
        end = min((band + 1) * self.band_rows, self.grid.height)
        return min(end + self.margin, self.grid.height)

    def last_row_above(self, y: int) -> int:
        """The last tile row with core pixels above grid row ``y`` (-1 for none)."""
        if y <= 0:
            return -1
        return min((min(y, self.grid.height) - 1) // self.grid.stride, self.grid.shape[0] - 1)

    def band_needs(self, band: int) -> int:
        """The last tile row band ``band`` needs predicted; it needs every row above it too."""
        return self.last_row_above(self.band_reads_to(band))

    def bands_ready(self, pending_per_row: Sequence[int]) -> int:
        """How many bands, from the top, may be segmented when ``pending_per_row`` tiles are
        still to come per tile row (bands are segmented in order)."""
        first_pending = next((i for i, n in enumerate(pending_per_row) if n), None)
        if first_pending is None:
            return self.n_bands
        return next(b for b in range(self.n_bands) if self.band_needs(b) >= first_pending)


class RowTracker:
    """Which tile rows of a plan are fully predicted; lets segmentation wait for its rows.

    Thread-safe: :meth:`done` is called from the threads that run the batches,
    :meth:`wait_rows` from the one that segments.
    """

    def __init__(self, plan: PredictPlan) -> None:
        self.plan = plan
        self.missing = plan.pending_per_row()
        self.error: BaseException | None = None
        self.finished = False
        self.finished_at = time.perf_counter()
        self._cond = threading.Condition()

    def done(self, tiles: Sequence[Tile]) -> None:
        """``tiles`` are predicted (and in the store)."""
        with self._cond:
            for i, _j in tiles:
                self.missing[i] -= 1
            self._cond.notify_all()

    def finish(self) -> None:
        """Every batch has run."""
        with self._cond:
            self.finished, self.finished_at = True, time.perf_counter()
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """The batches stopped on ``exc``; whoever waits gets it raised."""
        with self._cond:
            self.error, self.finished = exc, True
            self._cond.notify_all()

    def bands_ready(self) -> int:
        """How many bands, from the top, may be segmented now (see :meth:`PredictPlan.bands_ready`)."""
        with self._cond:
            return self.plan.bands_ready(self.missing)

    def wait_rows(self, y: int) -> None:
        """Block until the maps above grid row ``y`` are final; re-raise the batches' error."""
        last = self.plan.last_row_above(y)
        with self._cond:
            while True:
                if self.error is not None:
                    raise self.error
                if self.finished or not any(self.missing[: last + 1]):
                    return
                self._cond.wait()

    def wait_all(self) -> None:
        """Block until every batch has run; re-raise their error."""
        with self._cond:
            while not self.finished:
                self._cond.wait()
            if self.error is not None:
                raise self.error


def run_prioritised(
    calls: Sequence[Call[T]],
    workers: int,
    on_result: Callable[[T], None] | None = None,
) -> list[T]:
    """Run ``calls`` on ``workers`` threads, each free thread taking the waiting call of
    lowest ``(priority, position)``; results in the order of ``calls``.

    ``on_result`` is called (in the worker thread) with each result as it comes.  The
    first exception stops the start of further calls and is raised once the running
    ones have ended.
    """
    results: list[Any] = [None] * len(calls)
    heap = [(c.priority, k) for k, c in enumerate(calls)]
    heapq.heapify(heap)
    lock = threading.Lock()
    failure: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if failure or not heap:
                    return
                _, k = heapq.heappop(heap)
            call = calls[k]
            try:
                results[k] = call.fn(*call.args)
                if on_result is not None:
                    on_result(results[k])
            except BaseException as exc:
                with lock:
                    failure.append(exc)
                return

    threads = [
        threading.Thread(target=worker, name=f"wsi-infer-task-{i}", daemon=True)
        for i in range(max(1, min(workers, len(calls))))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failure:
        raise failure[0]
    return results


def submit_prioritised(
    client: Any,
    calls: Sequence[Call[T]],
    on_result: Callable[[T], None] | None = None,
    resources: Mapping[str, float] | None = None,
) -> list[T]:
    """Run ``calls`` on the workers of a ``distributed.Client``, most urgent first.

    All calls go to the scheduler in one graph, each annotated with its priority
    (dask.distributed runs higher ``priority`` first), so none starts before the
    scheduler knows the more urgent ones.
    """
    import uuid

    from dask.base import annotate
    from dask.delayed import delayed
    from distributed import as_completed

    token = uuid.uuid4().hex[:12]  # keys of this run only: never another run's results
    tasks = []
    for c in calls:
        with annotate(priority=-c.priority):
            tasks.append(delayed(c.fn, pure=False)(*c.args, dask_key_name=f"{c.name}-{token}"))
    futures = client.compute(
        tasks, resources=dict(resources) if resources else None, optimize_graph=False
    )
    for fut in as_completed(futures):
        if on_result is not None:
            on_result(fut.result())
    return list(client.gather(futures))


@dataclass(frozen=True)
class LocalExecution:
    """Calls run on ``workers`` threads of this process, most urgent first."""

    workers: int
    #: Calls run in this process: they may share its objects (the model, the open slide).
    in_process: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"local execution needs at least one worker, got {self.workers}")

    def run(
        self, calls: Sequence[Call[T]], on_result: Callable[[T], None] | None = None
    ) -> list[T]:
        """Run ``calls``; results in their order (see :func:`run_prioritised`)."""
        return run_prioritised(calls, self.workers, on_result) if calls else []


@dataclass(frozen=True)
class ClusterExecution:
    """Calls run on the workers of a ``distributed.Client``, each asking for ``resources``."""

    client: Any
    resources: Mapping[str, float] | None = None
    #: Calls run in other processes: they get only what pickles, and build the rest.
    in_process: ClassVar[bool] = False

    def run(
        self, calls: Sequence[Call[T]], on_result: Callable[[T], None] | None = None
    ) -> list[T]:
        """Run ``calls``; results in their order (see :func:`submit_prioritised`)."""
        return submit_prioritised(self.client, calls, on_result, self.resources) if calls else []


#: How a run's calls are run: in this process, or on a dask cluster.
Execution = LocalExecution | ClusterExecution


def execution_for(client: Any, workers: int, device: str) -> Execution:
    """Threads of this process without ``client``; else its workers, each call asking for
    one ``GPU`` resource when the model runs on CUDA."""
    if client is None:
        return LocalExecution(workers)
    return ClusterExecution(client, {"GPU": 1.0} if device.startswith("cuda") else None)


class _Predicted(Protocol):
    """A batch's result: the tiles it predicted."""

    @property
    def tiles(self) -> Sequence[Tile]: ...


R = TypeVar("R", bound=_Predicted)


class Predicting(Generic[R]):
    """``calls`` (the plan's pending batches) running in a background thread under
    ``execution``; ``on_result`` gets each result as it comes, then the tracker its tiles.

    Used as a context manager: entering starts the thread.  Leaving on an error does
    not wait for it (a running batch cannot be cancelled midway); :meth:`wait_all`
    waits for every batch and raises their error.
    """

    def __init__(
        self,
        plan: PredictPlan,
        execution: Execution,
        calls: Sequence[Call[R]],
        on_result: Callable[[R], None] | None = None,
    ) -> None:
        self.tracker = RowTracker(plan)
        self._execution, self._calls, self._on_result = execution, calls, on_result
        self._thread = threading.Thread(target=self._run, name="wsi-infer-predict", daemon=True)

    def __enter__(self) -> Predicting[R]:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def wait_rows(self, y: int) -> None:
        """Block until the maps above grid row ``y`` are final (a ``before_band`` of
        :func:`wsi_infer.stitch.stitch`)."""
        self.tracker.wait_rows(y)

    def wait_all(self) -> float:
        """Block until every batch has run; returns the :func:`time.perf_counter` then."""
        self.tracker.wait_all()
        self._thread.join()
        return self.tracker.finished_at

    def _run(self) -> None:
        try:
            self._execution.run(self._calls, self._result)
        except BaseException as exc:
            self.tracker.fail(exc)
        else:
            self.tracker.finish()

    def _result(self, result: R) -> None:
        if self._on_result is not None:
            self._on_result(result)
        self.tracker.done(result.tiles)
