"""A real dask LocalCluster of worker processes, one of them killed mid-job."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_infer.backends import create_backend
from wsi_infer.batch import BatchItem, BatchJob, run_batch
from wsi_infer.options import RunOptions
from wsi_infer.store import TABLE_COLUMNS

pytestmark = pytest.mark.slow


def scratch_chunks(store: Path) -> int:
    folder = store / "_scratch" / "maps" / "c"
    return sum(len(f) for _, _, f in os.walk(folder)) if folder.exists() else 0


@pytest.fixture(scope="module")
def slides(he_mosaic: np.ndarray, make_slide: Callable[..., Path]) -> list[BatchItem]:
    a = make_slide("cluster-a.tif", he_mosaic, mpp=0.25)
    b = make_slide("cluster-b.tif", np.ascontiguousarray(he_mosaic[::-1, ::-1]), mpp=0.25)
    return [BatchItem(a, "a"), BatchItem(b, "b")]


@pytest.mark.ci
def test_local_cluster_with_a_worker_killed_matches_single_process(
    slides: list[BatchItem], tmp_path: Path
) -> None:

    # Workers and this process run torch on one thread each: float results can depend on
    # the thread count, and the stores are compared bit for bit.
    import torch

    restore = torch.get_num_threads()
    try:
        run_cluster_comparison(slides, tmp_path)
    finally:
        torch.set_num_threads(restore)


def run_cluster_comparison(slides: list[BatchItem], tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    backend = create_backend("torch", "default", threads=1)
    options = RunOptions(tile_size=256, overlap=64, batch_size=1, threads=1)
    single = run_batch(slides, tmp_path / "single", BatchJob(backend, options))
    assert [r.status for r in single] == ["complete", "complete"]

    killed: list[str] = []
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        out = tmp_path / "cluster"

        def kill_one_worker_mid_job() -> None:
            deadline = time.monotonic() + 300
            while scratch_chunks(out / "a.zarr") < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            victim = sorted(client.scheduler_info()["workers"])[0]
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            killed.append(victim)

        killer = threading.Thread(target=kill_one_worker_mid_job)
        killer.start()
        results = run_batch(slides, out, BatchJob(backend, options, client=client))
        killer.join()
    assert killed, "no worker was killed"
    assert [r.status for r in results] == ["complete", "complete"]
    for item in slides:
        a = zarr.open_group(str(tmp_path / "single" / f"{item.name}.zarr"), mode="r")
        b = zarr.open_group(str(out / f"{item.name}.zarr"), mode="r")
        np.testing.assert_array_equal(a["labels/nuclei/0"][:], b["labels/nuclei/0"][:])
        np.testing.assert_array_equal(a["labels/types/0"][:], b["labels/types/0"][:])
        for col in TABLE_COLUMNS:
            np.testing.assert_array_equal(
                a[f"tables/nuclei/{col}"][:], b[f"tables/nuclei/{col}"][:]
            )
        assert a.attrs["wsi_infer"]["nuclei"] == b.attrs["wsi_infer"]["nuclei"] > 100
