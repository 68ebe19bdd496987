"""No silent corruption: runs as an attacker would try them, with real processes and stores.

Two runs on one output, a dask cluster whose workers live in another folder, stores
damaged or edited after they were finished, runs killed while cleaning up.  Every case
ends in the correct store or a one-line error, never in a wrong "complete".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zarr
from helpers import assert_same_store, invoke, one_line_error

from wsi_infer.lock import lock_path
from wsi_infer.verify import check_complete

pytestmark = pytest.mark.slow

#: Edge of the slide crops: 2 x 2 tiles of 256 px (192 px kept), 79 nuclei.
CROP = 384
#: Nuclei the bundled model finds in the crop at least (46 for version 2: the crop is the sample
#: slide's 0.5 µm/px pixels declared 0.25, which keeps the runs short and the nuclei small).
NUCLEI = 30

#: The bundled model through PyTorch, 256 px tiles (64 px overlap) one at a time, the whole crop.
RUN_OPTIONS = (
    "--backend",
    "torch",
    "--tile-size",
    "256",
    "--overlap",
    "64",
    "--batch-size",
    "1",
    "--no-tissue-mask",
    "-q",
)


def command(slide: Path | str, out: Path | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wsi_infer", str(slide), "--out", str(out), *RUN_OPTIONS, *extra]


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, check=False)


def scratch_chunks(out: Path) -> int:
    folder = out / "_scratch" / "maps" / "c"
    return sum(len(f) for _, _, f in os.walk(folder)) if folder.exists() else 0


def kill_when(cmd: list[str], ready: Callable[[], bool]) -> None:
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 300
        try:
            while not ready():
                assert proc.poll() is None, "the run ended before the kill point"
                assert time.monotonic() < deadline, "kill point never reached"
                time.sleep(0.005)
        finally:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def status(out: Path) -> str:
    return str(zarr.open_group(str(out), mode="r").attrs["wsi_infer"]["status"])


@pytest.fixture(scope="module")
def crop(cmu_crop: Callable[..., Path]) -> Path:
    return cmu_crop("reliability-crop.tif", CROP)


@pytest.fixture(scope="module")
def finished(crop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete store of the crop, made by the command line as a user runs it."""
    out = tmp_path_factory.mktemp("finished") / "r.zarr"
    done = run(command(crop, out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def killed(crop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the crop whose run was SIGKILLed after its first predicted tile."""
    out = tmp_path_factory.mktemp("killed") / "r.zarr"
    kill_when(command(crop, out), lambda: scratch_chunks(out) >= 1)
    assert status(out) == "running"
    return out


def copy_store(store: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(store, to / store.name))


# --------------------------------------------------------------------- 1. one run per store


def test_a_second_run_on_a_store_in_use_is_refused(
    crop: Path, finished: Path, tmp_path: Path
) -> None:
    """The issue's first case: the same command started again while the first one runs."""
    out = tmp_path / "r.zarr"
    cmd = command(crop, out)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as first:
        deadline = time.monotonic() + 300
        while scratch_chunks(out) < 1:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # alive, mid-run, for as long as the second one takes
        try:
            code, _, err = invoke(*cmd[3:])  # the second run, in this process
        finally:
            first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    one_line_error(code, err, str(out), "in use by another wsi-infer run", f"pid {first.pid}")
    assert_same_store(out, finished, NUCLEI)  # the refused run changed nothing
    assert not lock_path(out).exists()
    code, stdout, _ = invoke(*cmd[3:-1])  # a third one, without -q: it says what it did
    assert code == 0 and "already complete" in stdout


def test_a_killed_run_leaves_a_lock_the_next_run_takes_over(
    crop: Path, killed: Path, finished: Path, tmp_path: Path
) -> None:
    out = copy_store(killed, tmp_path)
    shutil.copy(lock_path(killed), lock_path(out))  # the dead run's lock, as it left it
    resumed = run(command(crop, out))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_store(out, finished, NUCLEI)
    assert not lock_path(out).exists()


# ------------------------------------------------------------- 2. clusters and relative paths


def test_relative_paths_on_a_cluster_whose_worker_runs_in_another_folder(
    cmu_crop: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out out/r.zarr`` and a relative slide mean the client's, never the worker's."""
    from distributed import LocalCluster

    client_dir, worker_dir = tmp_path / "client", tmp_path / "worker"
    client_dir.mkdir()
    worker_dir.mkdir()
    shutil.copy(cmu_crop("cluster-crop.tif", CROP), client_dir / "crop.tif")
    # a decoy of the same name where the worker runs
    shutil.copy(cmu_crop("cluster-decoy.tif", CROP, flip=True), worker_dir / "crop.tif")
    monkeypatch.chdir(worker_dir)  # worker processes start in the working directory
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        monkeypatch.chdir(tmp_path)
        on_cluster = ("--scheduler", cluster.scheduler_address)
        absolute = run(command(client_dir / "crop.tif", client_dir / "abs.zarr", *on_cluster))
        assert absolute.returncode == 0, absolute.stderr
        relative = run(command("crop.tif", "out/r.zarr", *on_cluster), cwd=client_dir)
        assert relative.returncode == 0, relative.stderr
    assert not (worker_dir / "out").exists()
    assert sorted(p.name for p in worker_dir.iterdir()) == ["crop.tif"]
    assert_same_store(client_dir / "out" / "r.zarr", client_dir / "abs.zarr", NUCLEI)
    info = zarr.open_group(str(client_dir / "out" / "r.zarr"), mode="r").attrs["wsi_infer"]
    assert info["slide"]["path"] == str((client_dir / "crop.tif").resolve())


def test_a_scheduler_without_workers_is_an_error_not_a_hang() -> None:
    from distributed import LocalCluster

    from wsi_infer.cluster import dask_client
    from wsi_infer.errors import ClusterError

    with LocalCluster(n_workers=0, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        with (
            pytest.raises(ClusterError, match="has no workers"),
            dask_client(scheduler=address, worker_wait_s=1),
        ):
            pass


# --------------------------------------------------------------- 6. complete stores verified


def test_a_damaged_label_chunk_is_found_and_not_trusted(
    crop: Path, finished: Path, tmp_path: Path
) -> None:
    out = copy_store(finished, tmp_path / "damaged")
    chunk = sorted((out / "labels" / "nuclei" / "0" / "c").rglob("*"))[-1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    chunk.write_bytes(bytes(data))
    code, _, err = invoke(*command(crop, out)[3:])
    one_line_error(code, err, "fails verification", "labels/nuclei/0")
    code, _, err = invoke("export", "geojson", out, tmp_path / "n.geojson")
    one_line_error(code, err, "fails verification")
    code, _, err = invoke("export", "overlay", out, "--out", tmp_path / "qc")
    one_line_error(code, err, "fails verification")
    assert not (tmp_path / "n.geojson").exists() and not (tmp_path / "qc").exists()
    code, stdout, _ = invoke("inspect", out, "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["verified"] is False
    assert any("labels/nuclei/0" in p for p in summary["problems"])


def test_a_deleted_table_is_found(crop: Path, finished: Path, tmp_path: Path) -> None:
    out = copy_store(finished, tmp_path)
    shutil.rmtree(out / "tables")
    code, _, err = invoke(*command(crop, out)[3:])
    one_line_error(code, err, "fails verification", "tables/nuclei")
    code, _, err = invoke("export", "geojson", out, tmp_path / "n.geojson")
    one_line_error(code, err, "tables/nuclei")


def test_a_status_edited_to_complete_is_not_believed(
    crop: Path, killed: Path, tmp_path: Path
) -> None:
    out = copy_store(killed, tmp_path)
    root = zarr.open_group(str(out), mode="r+")
    info = dict(root.attrs["wsi_infer"])  # type: ignore[arg-type]
    root.attrs["wsi_infer"] = {**info, "status": "complete", "nuclei": 0}
    code, _, err = invoke(*command(crop, out)[3:])
    one_line_error(code, err, "fails verification")
    code, _, err = invoke("export", "geojson", out, tmp_path / "n.geojson")
    one_line_error(code, err, "fails verification")


# ------------------------------------------------------------------ 7. clean finish, any kill


def test_a_kill_while_removing_scratch_is_finished_clean(
    crop: Path, finished: Path, tmp_path: Path
) -> None:
    """What a SIGKILL during the scratch removal leaves: the run's end is done again, clean."""
    out = copy_store(finished, tmp_path)
    root = zarr.open_group(str(out), mode="r+")
    info = dict(root.attrs["wsi_infer"])  # type: ignore[arg-type]
    for key in ("digests", "finished", "seconds"):
        info.pop(key, None)
    root.attrs["wsi_infer"] = {**info, "status": "running", "stage": "written"}
    # _scratch half removed: its metadata gone, chunks left; a chunk write cut short
    leftover = out / "_scratch" / "maps" / "c" / "1" / "1" / "0"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(os.urandom(50_000))
    partial = out / "labels" / "nuclei" / "0" / "c" / "0" / "0.0123456789abcdef.partial"
    partial.write_bytes(os.urandom(1000))
    code, _, err = invoke(*command(crop, out)[3:])
    assert code == 0, err
    assert not (out / "_scratch").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
    check_complete(out)
    assert_same_store(out, finished, NUCLEI)


def test_finished_stores_hold_no_temporary_files(crop: Path, finished: Path) -> None:
    assert not (finished / "_scratch").exists()
    assert not [p for p in finished.rglob("*") if p.name.endswith(".partial")]
    check_complete(finished)
