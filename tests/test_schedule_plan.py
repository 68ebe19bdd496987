"""The schedule alone, without a model: fixed batches, top-down priorities, bands released
only once their rows are predicted, and the most urgent call first."""

from __future__ import annotations

import functools
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_infer.config import ModelConfig
from wsi_infer.params import RunParams
from wsi_infer.predict import tile_done
from wsi_infer.scheduler import (
    Call,
    ClusterExecution,
    LocalExecution,
    Predicting,
    PredictPlan,
    RowTracker,
    execution_for,
)
from wsi_infer.stitch import stitch
from wsi_infer.tiling import TileGrid

SEEDS = range(6)
Tile = tuple[int, int]


def random_plan(rng: random.Random, done: frozenset[Tile] = frozenset()) -> PredictPlan:
    """A plan over a random grid with a random tissue mask (some rows without any tile)."""
    tile = rng.choice([64, 128, 256])
    overlap = rng.choice([0, 16, 32])
    grid = TileGrid(rng.randint(1, 1500), rng.randint(1, 1500), tile, overlap)
    mask = np.array([[rng.random() < 0.6 for _ in range(9)] for _ in range(11)])
    return PredictPlan.build(
        grid,
        grid.select(mask),
        rng.randint(1, 5),
        band_rows=rng.choice([64, 128, 192]),
        margin=rng.randint(8, 120),
        done=done.__contains__,
    )


def killed_at(plan: PredictPlan, rng: random.Random) -> frozenset[Tile]:
    """The tiles a run killed midway may have on disk: the top batches (run most urgent
    first), some beyond them still in flight, one of those cut halfway."""
    batches = plan.batches
    k = rng.randint(0, len(batches))
    done = {t for b in batches[:k] for t in b.tiles}
    for b in batches[k : k + 3]:
        done.update(b.tiles[: rng.randint(0, len(b.tiles))])
    return frozenset(done)


@pytest.mark.parametrize("seed", SEEDS)
def test_batches_are_the_tiles_cut_in_order_whatever_is_already_done(seed: int) -> None:
    rng = random.Random(seed)
    state = rng.getstate()
    fresh = random_plan(rng)
    rng.setstate(state)
    assert random_plan(rng) == fresh  # the same tiles always form the same plan
    bs, tiles = fresh.batch_size, fresh.tiles
    assert [t for b in fresh.batches for t in b.tiles] == list(tiles)
    assert all(len(b.tiles) == bs for b in fresh.batches[:-1])
    assert [b.index for b in fresh.batches] == list(range(len(fresh.batches)))
    assert fresh.pending == fresh.batches and fresh.pending_tiles == len(tiles)
    for done in (killed_at(fresh, rng), frozenset(rng.sample(tiles, len(tiles) // 2))):
        rng.setstate(state)
        resumed = random_plan(rng, done)
        # the batches a resumed run sends are those an uninterrupted one sent, same names too
        assert resumed.batches == fresh.batches
        assert resumed.pending == tuple(
            b for b in fresh.batches if not all(t in done for t in b.tiles)
        )
        assert [b.name for b in resumed.pending] == [fresh.batches[k].name for k in resumed.todo]
        assert {t for b in resumed.pending for t in b.tiles} >= set(tiles) - done
        assert resumed.pending_tiles == sum(len(b.tiles) for b in resumed.pending)


def test_batches_done_on_disk_are_left_out_and_a_torn_one_is_run_whole(tmp_path: Path) -> None:
    """With the engine's own test of a tile on disk (a real zarr scratch array)."""
    grid = TileGrid(300, 400, 100, 0)
    head = ModelConfig().head
    maps = zarr.create_array(
        str(tmp_path / "maps"),
        shape=head.scratch_shape(300, 400),
        chunks=head.scratch_shape(100, 100),
        dtype=head.map_dtype,
    )
    tiles = grid.select(None)  # 3 x 4 tiles, batches of 3
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (2, 3)]:
        y0, y1, x0, x1 = grid.core(i, j)
        maps[y0:y1, x0:x1] = 9
    plan = PredictPlan.build(
        grid,
        tiles,
        3,
        band_rows=64,
        margin=8,
        done=functools.partial(tile_done, maps, grid, head=head),
    )
    assert plan.todo == (1, 2, 3)
    assert plan.pending[0].tiles == ((0, 3), (1, 0), (1, 1))  # (1, 0) done, run again
    assert plan.pending_per_row() == [1, 4, 4]


@pytest.mark.parametrize("seed", SEEDS)
def test_priorities_order_the_batches_top_down_then_left_to_right(seed: int) -> None:
    plan = random_plan(random.Random(seed))
    priorities = [b.priority for b in plan.batches]
    assert priorities == sorted(set(priorities))  # strictly increasing with the index
    for a in plan.batches:
        for b in plan.batches:
            if min(a.tiles)[0] < min(b.tiles)[0]:
                assert a.priority < b.priority


@pytest.mark.parametrize("seed", SEEDS)
def test_a_band_is_released_only_once_every_row_it_reads_is_predicted(seed: int) -> None:
    done_before = killed_at(random_plan(random.Random(seed)), random.Random(seed))
    rng = random.Random(seed)
    plan = random_plan(rng, done_before)  # a resumed run: some batches left out
    grid, rows = plan.grid, plan.grid.shape[0]
    for b in range(plan.n_bands):  # the rows a band needs hold the grid rows it reads, no more
        need, reads_to = plan.band_needs(b), plan.band_reads_to(b)
        assert grid.core(need, 0)[1] >= reads_to
        assert need + 1 == rows or grid.core(need + 1, 0)[0] >= reads_to
    tracker = RowTracker(plan)
    pending = list(plan.pending)
    rng.shuffle(pending)
    done: set[Tile] = set(plan.tiles) - {t for b in pending for t in b.tiles}
    released = tracker.bands_ready()
    for batch in [None, *pending]:
        if batch is not None:
            tracker.done(batch.tiles)
            done.update(batch.tiles)
        now = tracker.bands_ready()
        assert now >= released  # a band once released stays released
        released = now
        for b in range(released):
            assert all(t in done for t in plan.tiles if t[0] <= plan.band_needs(b))
        if released < plan.n_bands:  # and the next band is held for a reason
            assert any(t not in done for t in plan.tiles if t[0] <= plan.band_needs(released))
    assert released == plan.n_bands


def test_bands_are_the_ones_stitching_waits_for() -> None:
    """The rows ``stitch`` asks for before each band are those the plan releases it on."""
    params = RunParams(tile_size=128, overlap=32, label_chunk=64, window_cols=128, margin=24)
    grid = TileGrid(300, 200, params.tile_size, params.overlap)
    plan = PredictPlan.build(
        grid, grid.select(None), 2, band_rows=params.label_chunk, margin=params.margin
    )
    asked: list[int] = []
    maps = np.zeros((300, 200, 4), np.uint8)
    out = np.zeros((300, 200), np.uint32), np.zeros((300, 200), np.uint8)
    assert stitch(maps, *out, params, before_band=asked.append) == 0
    assert asked == [plan.band_reads_to(b) for b in range(plan.n_bands)] == [88, 152, 216, 280, 300]


def test_waiting_for_rows_returns_once_they_are_predicted_and_raises_a_failure() -> None:
    grid = TileGrid(400, 200, 100, 0)
    plan = PredictPlan.build(grid, grid.select(None), 2, band_rows=100, margin=10)
    tracker = RowTracker(plan)
    tracker.wait_rows(0)  # nothing above row 0
    tracker.done([(0, 0), (0, 1), (1, 0), (1, 1)])
    waiter = threading.Thread(target=tracker.wait_rows, args=(plan.band_reads_to(0),))
    waiter.start()
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert tracker.bands_ready() == 1
    tracker.fail(RuntimeError("the model fell over"))
    with pytest.raises(RuntimeError, match="fell over"):
        tracker.wait_rows(plan.band_reads_to(1))
    with pytest.raises(RuntimeError, match="fell over"):
        tracker.wait_all()


@dataclass(frozen=True)
class _Done:
    tiles: list[Tile]


def _predict(started: list[int], lock: threading.Lock, rank: int, tiles: list[Tile]) -> _Done:
    with lock:
        started.append(rank)
    return _Done(tiles)


@pytest.mark.parametrize("seed", SEEDS)
def test_local_execution_starts_the_most_urgent_waiting_call_first(seed: int) -> None:
    rng = random.Random(seed)
    plan = random_plan(rng)
    started: list[int] = []
    lock = threading.Lock()
    calls = [  # ranks: the batches' places in the plan
        Call(b.priority, b.name, _predict, (started, lock, rank, list(b.tiles)))
        for rank, b in enumerate(plan.pending)
    ]
    rng.shuffle(calls)
    results = LocalExecution(1).run(calls)
    assert started == list(range(len(calls)))  # top down, whatever the list order
    assert [r.tiles for r in results] == [list(c.args[3]) for c in calls]  # in the calls' order
    started.clear()
    workers = 3
    LocalExecution(workers).run(calls)
    # threads take calls most urgent first; a call may only be overtaken by those taken
    # at about the same time, by the other threads
    assert sorted(started) == list(range(len(calls)))
    assert all(rank < k + workers for k, rank in enumerate(started))


def test_execution_is_local_without_a_client_and_asks_for_a_gpu_on_cuda() -> None:
    assert execution_for(None, 3, "cuda") == LocalExecution(3)
    assert execution_for(None, 3, "cpu").in_process
    assert execution_for("a client", 3, "cuda:0") == ClusterExecution("a client", {"GPU": 1.0})
    assert execution_for("a client", 3, "cpu") == ClusterExecution("a client", None)
    assert not ClusterExecution("a client").in_process
    with pytest.raises(ValueError, match="at least one worker"):
        LocalExecution(0)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_predicting_in_the_background_releases_bands_in_order(seed: int) -> None:
    rng = random.Random(seed)
    plan = random_plan(rng)
    started: list[int] = []
    lock = threading.Lock()
    calls = [
        Call(b.priority, b.name, _predict, (started, lock, b.index, list(b.tiles)))
        for b in plan.pending
    ]
    seen: list[Tile] = []
    with Predicting(plan, LocalExecution(2), calls, lambda r: seen.extend(r.tiles)) as run:
        for b in range(plan.n_bands):
            run.wait_rows(plan.band_reads_to(b))
            assert run.tracker.bands_ready() > b
        run.wait_all()
    assert sorted(seen) == list(plan.tiles)


def test_predicting_raises_the_first_failure_to_whoever_waits() -> None:
    grid = TileGrid(400, 200, 100, 0)
    plan = PredictPlan.build(grid, grid.select(None), 2, band_rows=100, margin=10)

    def broken(tiles: list[Tile]) -> _Done:
        if tiles[0][0] == 2:
            raise OSError("disk full")
        return _Done(tiles)

    calls = [Call(b.priority, b.name, broken, (list(b.tiles),)) for b in plan.pending]
    with Predicting(plan, LocalExecution(1), calls) as run:
        with pytest.raises(OSError, match="disk full"):
            run.wait_rows(plan.band_reads_to(3))
        with pytest.raises(OSError, match="disk full"):
            run.wait_all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "batch_size >= 1"),
        ({"tiles": ((0, 1), (0, 0))}, "raster order"),
        ({"tiles": ((0, 0), (0, 0))}, "distinct"),
        ({"tiles": ((5, 0),)}, "tile grid"),
        ({"todo": (1,)}, "below 1"),
    ],
)
def test_a_plan_refuses_what_it_cannot_schedule(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "grid": TileGrid(200, 200, 100, 0),
        "tiles": ((0, 0),),
        "batch_size": 2,
        "todo": (0,),
        "band_rows": 64,
        "margin": 8,
    }
    with pytest.raises(ValueError, match=message):
        PredictPlan(**{**fields, **change})  # type: ignore[arg-type]
