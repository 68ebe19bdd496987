"""The output lock on object storage: one run per store, as :mod:`wsi_infer.lock` locally.

Object stores have no hard links and no ``O_EXCL``; what they have is a
conditional write: put an object only if none exists (S3 ``If-None-Match: *``,
GCS ``ifGenerationMatch=0``, Azure ``If-None-Match: *``), which fsspec drivers
expose as ``pipe_file(mode="create")``.  The lock is the object ``OUTPUT.lock``
beside the store, created that way with the same JSON as a local lock (host,
pid, process start, token).  It is never overwritten: the heartbeat is a second
object, ``OUTPUT.lock.TOKEN.beat``, rewritten every :data:`~wsi_infer.lock.HEARTBEAT_S`
seconds by its owner only, and a run reads the lock back after creating it.

A lock of a run that is gone is taken over as locally: on the same host when its
pid is not running; from another host when its newest heartbeat is older than
:data:`~wsi_infer.lock.STALE_S` (ages compare the server's modification times with
this host's clock, so the two must agree to well within that).  Taking over is
serialised by ``OUTPUT.lock.takeover``, itself created conditionally.

Limits: exclusivity rests on the server honouring the conditional write.  AWS S3,
GCS and Azure do, and so do current MinIO and moto; an S3-compatible server that
ignores ``If-None-Match`` lets two runs started within moments of each other both
create the lock (the read-back catches one that is overwritten before it looks).
For protocols whose driver has no conditional create, a warning says so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from wsi_infer.errors import OutputWriteError, StoreLockedError
from wsi_infer.location import RemotePath, StorePath
from wsi_infer.lock import HEARTBEAT_S, STALE_S, TAKEOVER_STALE_S, LockOwner, StoreLock

__all__ = ["ObjectLock", "store_lock"]

logger = logging.getLogger(__name__)

#: Seconds to wait before reading back a lock created on a store without conditional writes.
READ_BACK_DELAY_S = 0.5


def store_lock(out: StorePath, *, path: StorePath | None = None) -> StoreLock | ObjectLock:
    """The lock of output ``out`` (a local file lock, or an object lock for a URL)."""
    if isinstance(out, RemotePath):
        assert path is None or isinstance(path, RemotePath)
        return ObjectLock(out, path=path)
    assert path is None or not isinstance(path, RemotePath)
    return StoreLock(out, path=path)


class ObjectLock:
    """An exclusive lock on the output ``out`` in object storage; a context manager.

    Same interface and messages as :class:`~wsi_infer.lock.StoreLock`.
    """

    def __init__(
        self,
        out: RemotePath,
        *,
        path: RemotePath | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ) -> None:
        self.out = out
        self.path = path if path is not None else out.with_name(lock_path_name(out))
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.owner = LockOwner.me()
        self._held = False
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat_path(self, token: str) -> RemotePath:
        return self.path.with_name(f"{self.path.name}.{token}.beat")

    # -- taking the lock ---------------------------------------------------------------

    def acquire(self) -> ObjectLock:
        if not self.path.atomic_create:
            logger.warning(
                "%s: %s:// has no conditional write here; the lock cannot exclude a second run "
                "started at the same moment",
                self.out,
                self.path.protocol,
            )
        try:
            for _ in range(3):
                if self._create():
                    break
                other, age = self._read()
                if other is not None and other.alive(age, self.stale_s):
                    raise self._locked(other)
                if other is None and age < self.stale_s:
                    raise StoreLockedError(
                        f"{self.out}: its lock {self.path} is unreadable and recent; if no "
                        "other wsi-infer run uses this output, delete the lock object"
                    )
                self._take_over(other)
            else:
                raise StoreLockedError(
                    f"{self.out}: could not take its lock {self.path} (other runs keep taking it)"
                )
        except StoreLockedError:
            raise
        except OSError as exc:
            raise OutputWriteError(
                f"{self.path}: cannot create the output's lock ({exc}); check the credentials "
                "and that the bucket exists and is writable"
            ) from exc
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="wsi-infer-lock", daemon=True)
        self._thread.start()
        return self

    def _locked(self, other: LockOwner) -> StoreLockedError:
        return StoreLockedError(
            f"{self.out}: in use by another wsi-infer run ({other.describe()}; lock "
            f"{self.path}); wait for it to finish, or delete the lock if that run is gone"
        )

    def _create(self) -> bool:
        """Create the lock object with our content, conditionally; False when one exists."""
        if not self.path.create(self.owner.text().encode()):
            return False
        self._beat_path(self.owner.token).write_bytes(b"")
        if not self.path.atomic_create:
            time.sleep(READ_BACK_DELAY_S)
        return self._still_mine()  # False: overwritten by a writer the server let through

    def _read(self) -> tuple[LockOwner | None, float]:
        """The lock's owner (None if unreadable) and the age of its newest heartbeat."""
        try:
            text = self.path.read_text()
            stamp = self.path.mtime()
        except FileNotFoundError:
            return None, float("inf")
        owner = LockOwner.parse(text)
        if owner is not None:
            with contextlib.suppress(FileNotFoundError):
                stamp = max(stamp, self._beat_path(owner.token).mtime())
        return owner, time.time() - stamp

    def _take_over(self, stale: LockOwner | None) -> None:
        """Remove a stale lock, serialised by a conditionally created takeover object."""
        takeover = self.path.with_name(self.path.name + ".takeover")
        if not takeover.create(self.owner.text().encode()):
            try:
                if time.time() - takeover.mtime() > TAKEOVER_STALE_S:
                    takeover.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return  # another run is taking over: look again
        try:
            current, _ = self._read()
            if current == stale:  # still the lock judged stale, not a fresh one
                self.path.unlink(missing_ok=True)
                if stale is not None:
                    self._beat_path(stale.token).unlink(missing_ok=True)
                who = stale.describe() if stale else "unreadable"
                logger.warning(
                    "%s: took over the stale lock of a run that is gone (%s)", self.out, who
                )
        finally:
            takeover.unlink(missing_ok=True)

    # -- holding it ----------------------------------------------------------------------

    def _still_mine(self) -> bool:
        try:
            owner = LockOwner.parse(self.path.read_text())
        except FileNotFoundError:
            return False
        return owner is not None and owner.token == self.owner.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._still_mine():
                    self._lost = True
                    logger.error("%s: the lock was taken over by another run", self.out)
                    return
                self._beat_path(self.owner.token).write_bytes(b"")
            except OSError as exc:
                logger.warning("%s: cannot refresh the lock (%s)", self.path, exc)

    def check(self) -> None:
        """Raise :class:`StoreLockedError` if the lock is no longer ours."""
        if not self._held:
            raise StoreLockedError(f"{self.out}: the lock is not held")
        if self._lost or not self._still_mine():
            self._lost = True
            raise StoreLockedError(
                f"{self.out}: its lock {self.path} was taken over by another run while this one "
                "was stalled; this run stops without marking anything complete"
            )

    def release(self) -> None:
        if not self._held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._held = False
        try:
            if self._still_mine():
                self.path.unlink(missing_ok=True)
            self._beat_path(self.owner.token).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("%s: cannot remove the lock (%s)", self.path, exc)

    def __enter__(self) -> ObjectLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_path_name(out: RemotePath) -> str:
    """The name of output ``out``'s lock object: ``OUTPUT.lock`` beside it."""
    return out.name + ".lock"
