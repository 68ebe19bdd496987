"""The output lock: held by live runs, taken over from dead ones, never by two at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wsi_infer.errors import OutputWriteError, StoreLockedError
from wsi_infer.lock import LockOwner, StoreLock, lock_path

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from wsi_infer.lock import StoreLock
    with StoreLock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
    """
)


def write_lock(out: Path, **fields: object) -> Path:
    owner = {
        "host": socket.gethostname(),
        "pid": 1,
        "pid_start": None,
        "pid_namespace": None,
        "started": "2020-01-01T00:00:00+00:00",
        "token": "f" * 32,
        **fields,
    }
    path = lock_path(out)
    path.write_text(json.dumps(owner))
    return path


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_a_live_run_holds_the_lock_and_is_named(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(StoreLockedError) as err:
                StoreLock(out).acquire()
            message = str(err.value)
            assert f"pid {holder.pid} on host {socket.gethostname()}" in message
            assert str(out) in message and "\n" not in message
        finally:
            holder.kill()
    # the holder was SIGKILLed: its lock is left, and taken over (its pid is gone)
    assert lock_path(out).exists()
    with StoreLock(out) as lock:
        assert LockOwner.parse(lock_path(out).read_text()) == lock.owner
    assert not lock_path(out).exists()


def test_stale_locks_are_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    # same host, a pid that has exited
    write_lock(out, pid=dead_pid())
    with StoreLock(out):
        pass
    # same host, a pid now running another process (its start time differs)
    write_lock(out, pid=os.getpid(), pid_start="1", pid_namespace=LockOwner.me().pid_namespace)
    with StoreLock(out):
        pass
    # another host whose heartbeat stopped long ago
    path = write_lock(out, host="elsewhere.invalid")
    old = time.time() - 3600
    os.utime(path, (old, old))
    with StoreLock(out, stale_s=60):
        pass
    assert not lock_path(out).exists()


def test_fresh_locks_are_respected(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    me = LockOwner.me()
    # another host with a fresh heartbeat: it may be running
    write_lock(out, host="elsewhere.invalid")
    with pytest.raises(StoreLockedError, match=r"host elsewhere\.invalid"):
        StoreLock(out, stale_s=60).acquire()
    # this very process, in another lock object: alive
    write_lock(out, pid=me.pid, pid_start=me.pid_start, pid_namespace=me.pid_namespace)
    with pytest.raises(StoreLockedError, match=f"pid {me.pid}"):
        StoreLock(out).acquire()
    # an unreadable lock file that is recent is being written by someone
    lock_path(out).write_text("")
    with pytest.raises(StoreLockedError, match="unreadable"):
        StoreLock(out).acquire()


def test_a_lock_taken_over_while_stalled_is_noticed(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    lock = StoreLock(out, heartbeat_s=0.05).acquire()
    try:
        lock.check()
        write_lock(out, host="elsewhere.invalid")  # another run took it over
        with pytest.raises(StoreLockedError, match="taken over"):
            lock.check()
    finally:
        lock.release()
    assert lock_path(out).exists()  # the other run's lock is left alone


def test_heartbeat_keeps_the_lock_fresh(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    with StoreLock(out, heartbeat_s=0.05) as lock:
        old = time.time() - 3600
        os.utime(lock.path, (old, old))
        deadline = time.monotonic() + 30
        while time.time() - lock.path.stat().st_mtime > 60:
            assert time.monotonic() < deadline, "the heartbeat never touched the lock"
            time.sleep(0.05)


def test_lock_in_a_folder_that_cannot_hold_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError, match="lock file"):
        StoreLock(blocker / "r.zarr").acquire()
