"""A run killed at any moment (SIGKILL) and started again finishes with the same store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from numpy.typing import NDArray

from wsi_infer.store import TABLE_COLUMNS

pytestmark = pytest.mark.slow


def chunk_files(folder: Path) -> list[Path]:
    """The chunk files under ``folder``, without zarr's ``*.partial`` files: a write in
    progress (or cut short by the kill) is not a chunk, and comes and goes meanwhile."""
    return [
        Path(root, name)
        for root, _, files in os.walk(folder)
        for name in files
        if not name.endswith(".partial")
    ]


def count_files(folder: Path) -> int:
    return len(chunk_files(folder))


@pytest.fixture(scope="module")
def big_mosaic(data: Path, make_slide: Callable[..., Path]) -> Path:
    """Real 40x H&E, 36 CoNSeP patches in a 1536 x 1536 slide at 0.25 µm/px."""
    from PIL import Image

    folder = data / "nuclei" / "consep" / "test" / "images"
    names = sorted(folder.iterdir())[16:52]
    patches = [np.asarray(Image.open(n).convert("RGB")) for n in names]
    image: NDArray[np.uint8] = np.concatenate(
        [np.concatenate(patches[6 * r : 6 * r + 6], axis=1) for r in range(6)], axis=0
    )
    return make_slide("mosaic-1536.tif", np.ascontiguousarray(image), mpp=0.25)


def command(slide: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wsi_infer",
        str(slide),
        "--out",
        str(out),
        "--backend",
        "torch",
        "--tile-size",
        "256",
        "--overlap",
        "64",
        "--batch-size",
        "1",
        "-q",
    ]


def assert_same_store(a: Path, b: Path) -> None:
    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert ra.attrs["wsi_infer"]["status"] == rb.attrs["wsi_infer"]["status"] == "complete"
    for group in ("labels/nuclei", "labels/types"):
        levels = sorted(ra[group].array_keys())
        assert levels == sorted(rb[group].array_keys())
        for level in levels:
            np.testing.assert_array_equal(ra[f"{group}/{level}"][:], rb[f"{group}/{level}"][:])
    for col in TABLE_COLUMNS:
        np.testing.assert_array_equal(ra[f"tables/nuclei/{col}"][:], rb[f"tables/nuclei/{col}"][:])
    assert ra.attrs["wsi_infer"]["nuclei"] == rb.attrs["wsi_infer"]["nuclei"] > 100


@pytest.fixture(scope="module")
def reference(big_mosaic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    subprocess.run(command(big_mosaic, out), check=True, timeout=600)
    return out


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["early-predict", "late-predict", "stitching"])
def test_sigkill_then_resume_gives_the_uninterrupted_store(
    big_mosaic: Path, reference: Path, tmp_path: Path, point: str
) -> None:
    out = tmp_path / "r.zarr"
    scratch = out / "_scratch" / "maps" / "c"
    labels = out / "labels" / "nuclei" / "0" / "c"
    tiles = zarr.open_group(str(reference), mode="r").attrs["wsi_infer"]["tiles"]
    ready = {
        "early-predict": lambda: count_files(scratch) >= 2,
        "late-predict": lambda: count_files(scratch) >= int(0.7 * tiles),
        "stitching": lambda: count_files(labels) >= 1,
    }[point]
    cmd = command(big_mosaic, out)
    kill_when(cmd, ready)
    info = zarr.open_group(str(out), mode="r").attrs["wsi_infer"]
    assert info["status"] != "complete"
    done_before = count_files(scratch)
    resumed = subprocess.run([*cmd[:-1]], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    if point != "stitching":
        assert f"({done_before} done before)" in resumed.stdout or done_before == 0
    assert_same_store(out, reference)


def test_chunk_cut_short_by_a_crash_is_recomputed(
    big_mosaic: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.zarr"
    scratch = out / "_scratch" / "maps" / "c"
    cmd = command(big_mosaic, out)
    kill_when(cmd, lambda: count_files(scratch) >= 6)
    chunk = sorted(chunk_files(scratch))[0]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])  # a torn write
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_store(out, reference)


def test_complete_store_is_skipped_and_other_parameters_refused(
    big_mosaic: Path, reference: Path
) -> None:
    again = subprocess.run(
        [*command(big_mosaic, reference)[:-1]], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "already complete" in again.stdout
    other = subprocess.run(
        [*command(big_mosaic, reference), "--overlap", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 1 and "--overwrite" in other.stderr
