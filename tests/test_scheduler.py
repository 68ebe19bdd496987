"""Explicit priorities: the model works down the slide, segmentation follows close behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from localmodel import DarkNucleiBackend
from numpy.typing import NDArray

from wsi_infer import engine, scheduler
from wsi_infer.engine import RunParams, run_slide
from wsi_infer.reader import GridReader
from wsi_infer.scheduler import (
    Call,
    ClusterExecution,
    LocalExecution,
    predict_priority,
    run_prioritised,
    submit_prioritised,
)
from wsi_infer.tissue import TissueParams


def test_most_urgent_call_runs_first_whatever_the_list_order() -> None:
    ran: list[int] = []
    priorities = [5, 3, 9, 0, 7, 1]
    calls = [Call(p, f"c{p}", ran.append, (p,)) for p in priorities]
    results = run_prioritised(calls, workers=1)
    assert ran == sorted(priorities)
    assert results == [None] * len(priorities)
    squares = run_prioritised([Call(-k, f"s{k}", lambda k: k * k, (k,)) for k in range(20)], 3)
    assert squares == [k * k for k in range(20)]  # results in the order of the calls


def test_a_failing_call_stops_the_rest_and_is_raised() -> None:
    ran: list[int] = []

    def work(k: int) -> int:
        if k == 2:
            raise RuntimeError("tile 2 is broken")
        ran.append(k)
        return k

    with pytest.raises(RuntimeError, match="tile 2 is broken"):
        run_prioritised([Call(k, f"w{k}", work, (k,)) for k in range(6)], workers=1)
    assert ran == [0, 1]


def test_batches_are_ordered_top_down_then_left_to_right() -> None:
    batches = [[(2, 0), (2, 1)], [(0, 3), (1, 0)], [(0, 1), (0, 2)], [(1, 5)]]
    assert sorted(batches, key=predict_priority) == [
        [(0, 1), (0, 2)],
        [(0, 3), (1, 0)],
        [(1, 5)],
        [(2, 0), (2, 1)],
    ]


@pytest.mark.slow
def test_a_dask_cluster_runs_the_most_urgent_first() -> None:
    from distributed import Client, LocalCluster

    _RAN.clear()
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        priorities = [4, 8, 1, 6, 0, 9, 3, 2, 7, 5]
        calls = [Call(p, f"t{p}", _record, (p,)) for p in priorities]
        assert submit_prioritised(client, calls) == priorities  # results in the calls' order
        assert sorted(priorities) == _RAN
        _RAN.clear()
        assert ClusterExecution(client).run(calls) == priorities  # the same, behind the interface
    assert sorted(priorities) == _RAN


#: What the in-process cluster's worker ran, in order (its tasks import this module).
_RAN: list[int] = []


def _record(p: int) -> int:
    _RAN.append(p)
    return p


class _HeldBackend:
    """The local model, held at the middle batch until segmentation has made a band (or 30 s
    have passed): segmentation can only get there if the batches above it came first."""

    def __init__(self, inner: DarkNucleiBackend, hold_at: int, band_done: threading.Event) -> None:
        self.inner = inner
        self.name, self.device, self.config = inner.name, inner.device, inner.config
        self.model_sha256, self.model_source = inner.model_sha256, inner.model_source
        self.hold_at, self.band_done = hold_at, band_done
        self.calls = 0
        self.segmented_while_held: bool | None = None

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
        self.calls += 1
        if self.calls == self.hold_at:
            self.segmented_while_held = self.band_done.wait(timeout=30)
        return self.inner(tiles)


def _run_held(slide: Path, out: Path) -> tuple[_HeldBackend, list[str]]:
    params = RunParams(
        tile_size=256,
        overlap=64,
        batch_size=2,
        threads=2,
        label_chunk=128,
        window_cols=512,
        tissue=TissueParams(enabled=False),
    )
    n_batches = -(-(6 * 6) // 2)  # 1024 px at 192 px strides: 6 x 6 tiles
    band_done = threading.Event()
    backend = _HeldBackend(DarkNucleiBackend(), n_batches // 2, band_done)
    events: list[str] = []

    class Bar:
        def __init__(self, desc: str) -> None:
            self.desc = desc

        def update(self, n: int) -> None:
            events.append(self.desc)
            if self.desc == "segment":
                band_done.set()

        def close(self) -> None:
            pass

    def progress(total: int, desc: str, initial: int = 0) -> Any:
        return Bar(desc)

    run_slide(slide, out, backend, params, progress=progress)
    return backend, events


def test_prediction_runs_ahead_of_segmentation(
    he_mosaic: NDArray[np.uint8], make_slide: Callable[..., Path], tmp_path: Path
) -> None:
    slide = make_slide("ahead.tif", he_mosaic, mpp=0.25)
    backend, events = _run_held(slide, tmp_path / "ahead.zarr")
    # halfway through the model, the top bands were already segmented
    assert backend.segmented_while_held is True
    first_band = events.index("segment")
    assert 0 < first_band < len(events) - events[::-1].index("predict") - 1
    assert events.count("segment") == 1024 // 128


def test_bottom_up_order_would_leave_segmentation_waiting(
    he_mosaic: NDArray[np.uint8],
    make_slide: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: predicting bottom up, no band is ready halfway."""
    slide = make_slide("behind.tif", he_mosaic, mpp=0.25)
    monkeypatch.setattr(scheduler, "predict_priority", lambda tiles: -predict_priority(tiles))
    monkeypatch.setattr(_HeldBackend, "__call__", _short_hold)
    backend, events = _run_held(slide, tmp_path / "behind.zarr")
    assert backend.segmented_while_held is False
    assert "segment" not in events[: events.count("predict")]


def _short_hold(self: _HeldBackend, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
    self.calls += 1
    if self.calls == self.hold_at:
        self.segmented_while_held = self.band_done.wait(timeout=3)
    return self.inner(tiles)


class _SlotProbe:
    """A model of two slots whose first two calls wait (up to ``timeout`` s) until the tiles
    of a third batch are read: with both slots computing, only a thread reading ahead can
    read them.  It also counts the calls inside it at once."""

    concurrency = 2

    def __init__(self, reads: Callable[[], int], want: int, timeout: float) -> None:
        self.inner = DarkNucleiBackend()
        self.name, self.device, self.config = self.inner.name, "cpu", self.inner.config
        self.model_sha256, self.model_source = self.inner.model_sha256, self.inner.model_source
        self.reads, self.want, self.timeout = reads, want, timeout
        self._lock = threading.Lock()
        self.calls = self.inside = self.most_inside = 0
        self.read_ahead: list[bool] = []

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
        with self._lock:
            self.calls += 1
            held = self.calls <= 2
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if held:
                deadline = time.monotonic() + self.timeout
                while self.reads() < self.want and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.read_ahead.append(self.reads() >= self.want)
            return self.inner(tiles)
        finally:
            with self._lock:
                self.inside -= 1


def _run_probed(
    slide: Path, out: Path, monkeypatch: pytest.MonkeyPatch, timeout: float
) -> _SlotProbe:
    read: list[int] = []
    plain_read = GridReader.read

    def counted(self: GridReader, *args: Any, **kwargs: Any) -> NDArray[np.uint8]:
        tile = plain_read(self, *args, **kwargs)
        read.append(1)
        return tile

    monkeypatch.setattr(GridReader, "read", counted)
    params = RunParams(
        tile_size=256,
        overlap=64,
        batch_size=2,
        threads=2,
        tissue=TissueParams(enabled=False),
    )
    backend = _SlotProbe(lambda: len(read), want=3 * params.batch_size, timeout=timeout)
    run_slide(slide, out, backend, params)
    return backend


def test_the_next_batch_is_read_while_every_model_slot_computes(
    he_mosaic: NDArray[np.uint8],
    make_slide: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads and a model of two slots: a third thread reads the next batch while both
    slots compute, so a slot set free starts at once; never more calls than slots."""
    slide = make_slide("slots.tif", he_mosaic, mpp=0.25)
    backend = _run_probed(slide, tmp_path / "slots.zarr", monkeypatch, timeout=30)
    assert backend.read_ahead == [True, True]
    assert backend.most_inside == 2


def test_as_many_threads_as_slots_would_leave_the_next_batch_unread(
    he_mosaic: NDArray[np.uint8],
    make_slide: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: with one thread per slot, nobody reads while both compute."""
    slide = make_slide("no-slack.tif", he_mosaic, mpp=0.25)
    monkeypatch.setattr(engine, "execution_for", lambda client, workers, device: LocalExecution(2))
    backend = _run_probed(slide, tmp_path / "no-slack.zarr", monkeypatch, timeout=1)
    assert backend.read_ahead == [False, False]
