"""Explicit task priorities for the predict stage.

Segmentation of a band can start as soon as every tile row it reads is
predicted, so the engine wants the model to work down the slide from the top:
then segmentation overlaps prediction instead of waiting for the last tile.
That order is stated here, as a number per task (:func:`predict_priority`,
lower runs first), and honoured by both ways the engine runs tasks:

* in this process, :func:`run_prioritised` runs the calls on a pool of threads
  that always starts the most urgent call waiting;
* on a dask cluster, :func:`submit_prioritised` submits each call with
  ``priority`` (dask.distributed runs higher priorities first).

Neither depends on how a scheduler happens to break ties between tasks.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Call", "predict_priority", "run_prioritised", "submit_prioritised"]

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """``fn(*args)``, to run with ``priority`` (lower runs first) under ``name``."""

    priority: int
    name: str
    fn: Callable[..., T]
    args: tuple[Any, ...]


def predict_priority(tiles: Sequence[tuple[int, int]]) -> int:
    """Priority of a batch of tiles ``(row, col)``: the topmost row it needs, then its
    leftmost tile, so the slide is predicted top down and row by row."""
    row, col = min(tiles)
    return row * 1_000_000 + col


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
    resources: dict[str, float] | None = None,
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
    futures = client.compute(tasks, resources=resources, optimize_graph=False)
    for fut in as_completed(futures):
        if on_result is not None:
            on_result(fut.result())
    return list(client.gather(futures))
