"""Faults a nightly job meets: truncated slides, unreadable files, a full disk."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zarr


def wsi_infer(
    *args: str | Path,
    limit_bytes: int | None = None,
    drop_caps: bool = False,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "wsi_infer", *map(str, args)]
    if drop_caps:  # root without the capabilities that let it read any file
        cmd = [
            "setpriv",
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
            *cmd,
        ]

    def limit() -> None:
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past it fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, check=False, preexec_fn=limit
    )


@pytest.mark.parametrize("damage", ["truncated", "corrupt-middle"])
def test_damaged_slide_in_a_batch(
    data: Path, tiny_model: Path, tmp_path: Path, damage: str
) -> None:
    """Cut short (its directory is lost) or garbled halfway (it fails mid-read)."""
    import numpy as np

    raw = bytearray((data / "slides/CMU-1-Small-Region.svs").read_bytes())
    n = len(raw)
    if damage == "truncated":
        raw = raw[: n * 6 // 10]
    else:
        noise = np.random.default_rng(0).integers(0, 256, n // 10, dtype=np.uint8)
        raw[n * 4 // 10 : n * 4 // 10 + n // 10] = noise.tobytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(bytes(raw))
    good = tmp_path / "good.svs"
    shutil.copy(data / "edge/small.svs", good)
    out = tmp_path / "results"
    proc = wsi_infer(
        cut,
        good,
        "--out",
        out,
        "--model",
        tiny_model,
        "--backend",
        "torch",
        "--tile-size",
        "256",
        "-q",
    )
    assert proc.returncode == 3
    summary = {Path(r["slide"]).name: r for r in json.loads((out / "summary.json").read_text())}
    assert summary["good.svs"]["status"] == "complete"
    assert summary["cut.svs"]["status"] == "failed"
    assert str(cut) in summary["cut.svs"]["error"]
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("wsi-infer: warning:")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    store = out / "cut.zarr"
    if store.exists():
        assert zarr.open_group(str(store), mode="r").attrs["wsi_infer"]["status"] == "failed"


def test_unreadable_file_permissions(data: Path, tiny_model: Path, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop root's read-anything capability")
    slide = tmp_path / "locked.svs"
    shutil.copy(data / "edge/small.svs", slide)
    slide.chmod(0)
    proc = wsi_infer(
        slide,
        "--out",
        tmp_path / "r.zarr",
        "--model",
        tiny_model,
        "--backend",
        "torch",
        drop_caps=True,
    )
    assert proc.returncode == 1
    assert str(slide) in proc.stderr and "Permission denied" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.slow  # the whole sample slide, twice, in subprocesses
@pytest.mark.ci
def test_output_disk_full_then_resume(data: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    args = (
        data / "slides/CMU-1-Small-Region.svs",
        "--out",
        out,
        "--model",
        tiny_model,
        "--backend",
        "torch",
        "--tile-size",
        "256",
        "-q",
    )
    full = wsi_infer(*args, limit_bytes=20_000)  # no file over 20 kB can be written
    assert full.returncode == 1
    assert str(out) in full.stderr and "cannot write" in full.stderr
    assert len(full.stderr.strip().splitlines()) == 1 and "Traceback" not in full.stderr
    info = zarr.open_group(str(out), mode="r").attrs["wsi_infer"]
    assert info["status"] == "failed"
    # space is back: the same command finishes the run
    again = wsi_infer(*args)
    assert again.returncode == 0, again.stderr
    assert zarr.open_group(str(out), mode="r").attrs["wsi_infer"]["status"] == "complete"
