"""Results in object storage: a real S3-compatible server (moto) on the loopback address.

Nothing is mocked: the server is moto's HTTP server on 127.0.0.1 (a port the OS picks),
wsi-infer reaches it through s3fs and zarr as it would reach AWS, configured only by the
SDK's usual environment variables.  Batches are real subprocesses, killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import assert_same_store, invoke

pytest.importorskip("s3fs", reason="the cloud extra (s3fs) is not installed")
pytest.importorskip("moto.server", reason="moto[server] is not installed")

BUCKET = "wsi-infer-test"
#: The bundled model through PyTorch, 256 px tiles one at a time, whole crops.
#: The bundled model, four 256 px tiles per crop one at a time (no overlap: these tests are
#: about storage, not seams).
RUN_OPTIONS = (
    "--backend",
    "torch",
    "--tile-size",
    "256",
    "--overlap",
    "0",
    "--batch-size",
    "1",
    "--no-tissue-mask",
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with one bucket; the environment points the SDK at it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    empty = tmp_path_factory.mktemp("aws") / "none"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "WSI_INFER_SLIDE_CACHE": str(tmp_path_factory.mktemp("slide-cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def prefix(s3: dict[str, str]) -> str:
    """A fresh prefix in the test bucket."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"


def keys(url: str) -> list[str]:
    import boto3

    bucket, _, pfx = url.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=pfx)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def get(url: str) -> bytes:
    """An object's bytes, read with boto3 (not through the code under test)."""
    import boto3

    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bytes(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def one_line_error(code: int, stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("wsi-infer: error:") and "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def crops(data: Path, make_slide: Callable[..., Path]) -> list[Path]:
    """Two real H&E crops at their true resolutions: the CMU sample and the TMA core."""
    import openslide
    import tifffile

    with openslide.OpenSlide(str(data / "slides" / "CMU-1-Small-Region.svs")) as osr:
        cmu = np.asarray(osr.read_region((700, 1100), 0, (256, 256)).convert("RGB"))
    tma = tifffile.imread(data / "slides" / "he-tma-core-0.5mpp.ome.tif")[500:756, 500:756]
    return [
        make_slide("cloud-cmu.tif", np.ascontiguousarray(cmu), mpp=0.499),
        make_slide("cloud-tma.tif", np.ascontiguousarray(tma), mpp=0.50008),
    ]


def batch_command(slides: list[Path], out: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wsi_infer",
        *map(str, slides),
        "--out",
        str(out),
        *RUN_OPTIONS,
        "-q",
    ]


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.timeout(1200)
def test_batch_to_s3_killed_and_resumed_equals_a_local_batch(
    crops: list[Path], prefix: str, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    code, _, err = invoke(*batch_command(crops, local)[3:])
    assert code == 0, err

    remote = f"{prefix}/nightly"
    cmd = batch_command(crops, remote)
    second = f"{remote}/cloud-tma.zarr/_scratch/maps/c/"
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 600
        try:  # killed while the second slide is being predicted: the first is complete
            while not any(
                k.startswith(second.removeprefix(f"s3://{BUCKET}/")) for k in keys(remote)
            ):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "kill point never reached"
                time.sleep(0.2)  # each listing costs the server (in this process) time
        finally:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    first = zarr.open_group(f"{remote}/cloud-cmu.zarr", mode="r").attrs["wsi_infer"]
    killed = zarr.open_group(f"{remote}/cloud-tma.zarr", mode="r").attrs["wsi_infer"]
    assert first["status"] == "complete" and killed["status"] == "running"
    assert any(k.endswith("cloud-tma.zarr.lock") for k in keys(remote))  # the dead run's lock

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr

    summary = json.loads(get(f"{remote}/summary.json"))
    assert [r["status"] for r in summary] == ["skipped", "complete"]
    for name in ("cloud-cmu", "cloud-tma"):
        assert_same_store(local / f"{name}.zarr", f"{remote}/{name}.zarr", min_nuclei=20)
        a = zarr.open_group(str(local / f"{name}.zarr"), mode="r").attrs["wsi_infer"]
        b = zarr.open_group(f"{remote}/{name}.zarr", mode="r").attrs["wsi_infer"]
        assert a["digests"] == b["digests"]  # every array and group, byte for byte
        assert a["statistics"] == b["statistics"]
    page = get(f"{remote}/report.html").decode()
    assert 'id="cloud-cmu"' in page and 'id="cloud-tma"' in page
    assert page.count("data:image/png;base64,") == 4  # overlay and zoom per slide
    left = keys(remote)
    assert not [k for k in left if "_scratch" in k or k.endswith((".lock", ".beat", ".takeover"))]
    assert {k.rpartition("/")[2] for k in left if "/" not in k.split("nightly/")[1]} == {
        "summary.json",
        "summary.csv",
        "report.html",
    }

    # read back: inspect, export geojson (to a file and to an object), read_table
    store = f"{remote}/cloud-tma.zarr"
    code, out, err = invoke("inspect", store, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["verified"] is True and info["store"] == store
    assert info["nuclei"] == b["nuclei"]
    code, out, err = invoke("inspect", store)
    assert code == 0 and "complete" in out and store in out
    code, _, err = invoke("export", "geojson", local / "cloud-tma.zarr", tmp_path / "local.geojson")
    assert code == 0, err
    code, _, err = invoke("export", "geojson", store, tmp_path / "remote.geojson")
    assert code == 0, err
    code, _, err = invoke("export", "geojson", store, f"{remote}/tma.geojson")
    assert code == 0, err
    expected = (tmp_path / "local.geojson").read_bytes()
    assert (tmp_path / "remote.geojson").read_bytes() == expected
    assert get(f"{remote}/tma.geojson") == expected
    code, _, err = invoke("export", "geojson", store, f"{remote}/tma.geojson")
    one_line_error(code, err, "already exists")

    import pandas as pd

    from wsi_infer import read_table

    pd.testing.assert_frame_equal(read_table(store), read_table(str(local / "cloud-tma.zarr")))
    assert len(read_table(store)) == b["nuclei"] >= 20


def test_object_lock_excludes_a_second_run_and_takes_over_dead_ones(prefix: str) -> None:
    from wsi_infer.errors import StoreLockedError
    from wsi_infer.location import RemotePath
    from wsi_infer.lock import LockOwner
    from wsi_infer.objectlock import ObjectLock

    out = RemotePath(f"{prefix}/r.zarr")
    first = ObjectLock(out).acquire()
    try:
        assert first.path.url == f"{prefix}/r.zarr.lock"
        with pytest.raises(StoreLockedError, match="in use by another wsi-infer run") as exc:
            ObjectLock(out).acquire()
        assert f"pid {os.getpid()}" in str(exc.value)
        first.check()
    finally:
        first.release()
    assert not keys(prefix)

    # a lock left by a process of this host that is gone: taken over at once
    dead = LockOwner("x", 1, None, None, "2000-01-01T00:00:00+00:00", "t" * 32)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    me = LockOwner.me()
    dead = LockOwner(me.host, int(gone.stdout), None, me.pid_namespace, dead.started, dead.token)
    out.with_name("r.zarr.lock").write_text(dead.text())
    with ObjectLock(out) as taken:
        taken.check()
        # ... and a run that finds its lock taken over stops before marking anything complete
        out.with_name("r.zarr.lock").unlink()
        with ObjectLock(out, stale_s=0.0), pytest.raises(StoreLockedError, match="taken over"):
            taken.check()

    # another host's lock: refused while its heartbeat is fresh, taken over once stale
    other = LockOwner("another-host", 4242, None, None, dead.started, "o" * 32)
    out.with_name("r.zarr.lock").write_text(other.text())
    with pytest.raises(StoreLockedError, match="another-host"):
        ObjectLock(out).acquire()
    time.sleep(1.1)
    with ObjectLock(out, stale_s=1.0) as lock:
        lock.check()
    assert not [k for k in keys(prefix) if k.endswith((".lock", ".takeover"))]


def test_a_store_left_creating_by_a_kill_is_made_again(prefix: str, crops: list[Path]) -> None:
    """Object stores cannot rename: a store killed while its arrays were created says
    ``creating``, holds no work, and the next run replaces it without --overwrite."""
    from localmodel import DarkNucleiBackend

    from wsi_infer.engine import RunParams, run_slide
    from wsi_infer.location import RemotePath
    from wsi_infer.store import _create_arrays
    from wsi_infer.storeinfo import ModelRecord, SlideRecord, StoreInfo
    from wsi_infer.tissue import TissueParams

    backend = DarkNucleiBackend(mpp=0.5)
    params = RunParams.for_model(backend.config, tile_size=256, tissue=TissueParams(enabled=False))
    out = RemotePath(f"{prefix}/c.zarr")
    _create_arrays(
        out,
        grid_shape=(7, 7),
        chunk=512,
        map_chunk=192,
        tissue=np.ones((2, 2), bool),
        tissue_mpp=8.0,
        run_mpp=0.5,
        class_names=("a",),
        class_colours=((1, 2, 3),),
        head=backend.config.head,
        info=StoreInfo(
            model=ModelRecord(),
            slide=SlideRecord(path="x.svs", mpp=0.5),
            grid_shape=(7, 7),
            run_mpp=0.5,
            grid_to_level0=1,
            status="creating",
        ),
    )
    summary = run_slide(crops[0], out, backend, params)
    assert summary.status == "complete" and summary.nuclei > 0
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["wsi_infer"]["status"] == "complete"
    assert root.attrs["wsi_infer"]["grid_shape"] != [7, 7]


def test_slides_from_s3_are_staged_verified_and_bounded(
    prefix: str, crops: list[Path], tmp_path: Path
) -> None:
    from wsi_infer.errors import SlideNotFoundError
    from wsi_infer.identity import slide_identity
    from wsi_infer.location import RemotePath
    from wsi_infer.staging import stage_slide

    urls = [RemotePath(f"{prefix}/slides/{p.name}") for p in crops]
    for url, path in zip(urls, crops, strict=True):
        url.upload(path)
    cache = tmp_path / "cache"
    a = stage_slide(urls[0], root=cache, limit=10**9)
    assert a.path.read_bytes() == crops[0].read_bytes()
    assert slide_identity(a.path).mtime_ns == a.mtime_ns == round(urls[0].mtime() * 1e9)
    inode = a.path.stat().st_ino
    again = stage_slide(urls[0], root=cache, limit=10**9)
    assert again == a and again.path.stat().st_ino == inode  # verified, not fetched again
    # a damaged copy is fetched again, never read
    damaged = bytearray(a.path.read_bytes())
    damaged[-100:] = bytes(100)
    a.path.write_bytes(bytes(damaged))
    fixed = stage_slide(urls[0], root=cache, limit=10**9)
    assert fixed.path.read_bytes() == crops[0].read_bytes()
    # the bound: room for one slide only, so staging the other removes the first
    limit = max(p.stat().st_size for p in crops) + 1000
    stage_slide(urls[1], root=cache, limit=limit)
    assert not a.path.exists()
    assert sorted(p.name for p in cache.iterdir()) == [
        stage_slide(urls[1], root=cache, limit=limit).path.parent.name
    ]
    with pytest.raises(SlideNotFoundError, match="no such object"):
        stage_slide(RemotePath(f"{prefix}/slides/missing.svs"), root=cache)


def test_urls_that_cannot_work_are_one_line_errors(prefix: str, crops: list[Path]) -> None:
    code, _, err = invoke(f"{prefix}/slides/none.svs", "--out", f"{prefix}/x.zarr")
    one_line_error(code, err, f"{prefix}/slides/none.svs", "no such object")
    code, _, err = invoke(crops[0], "--out", "s3://no-such-bucket-wsi/x.zarr", *RUN_OPTIONS)
    one_line_error(code, err, "s3://no-such-bucket-wsi/x.zarr")
    code, _, err = invoke("inspect", f"{prefix}/none.zarr")
    one_line_error(code, err, f"{prefix}/none.zarr")
    code, _, err = invoke("report", f"{prefix}/nothing")
    one_line_error(code, err, "summary.json")
