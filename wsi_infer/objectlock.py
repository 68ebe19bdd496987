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
import time

from wsi_infer.errors import OutputWriteError
from wsi_infer.location import RemotePath, StorePath
from wsi_infer.lock import HEARTBEAT_S, STALE_S, HeldLock, LockOwner, StoreLock

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


class ObjectLock(HeldLock):
    """An exclusive lock on the output ``out`` in object storage; a context manager.

    Same interface and messages as :class:`~wsi_infer.lock.StoreLock` (both are a
    :class:`~wsi_infer.lock.HeldLock`).
    """

    noun = "lock object"

    def __init__(
        self,
        out: RemotePath,
        *,
        path: RemotePath | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ) -> None:
        super().__init__(heartbeat_s, stale_s)
        self.out = out
        self.path = path if path is not None else out.with_name(lock_path_name(out))
        self._takeover = self.path.with_name(self.path.name + ".takeover")

    def _beat_path(self, token: str) -> RemotePath:
        return self.path.with_name(f"{self.path.name}.{token}.beat")

    def _prepare(self) -> None:
        if not self.path.atomic_create:
            logger.warning(
                "%s: %s:// has no conditional write here; the lock cannot exclude a second run "
                "started at the same moment",
                self.out,
                self.path.protocol,
            )

    def _write_error(self, exc: OSError) -> OutputWriteError:
        return OutputWriteError(
            f"{self.path}: cannot create the output's lock ({exc}); check the credentials "
            "and that the bucket exists and is writable"
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

    def _create_takeover(self) -> bool:
        return bool(self._takeover.create(self.owner.text().encode()))

    def _takeover_age(self) -> float:
        return time.time() - self._takeover.mtime()

    def _remove_takeover(self) -> None:
        self._takeover.unlink(missing_ok=True)

    def _remove_lock(self, owner: LockOwner | None) -> None:
        self.path.unlink(missing_ok=True)
        if owner is not None:
            self._beat_path(owner.token).unlink(missing_ok=True)

    def _still_mine(self) -> bool:
        try:  # the lock only: its heartbeat's age is not needed here
            owner = LockOwner.parse(self.path.read_text())
        except FileNotFoundError:
            return False
        return owner is not None and owner.token == self.owner.token

    def _refresh(self) -> None:
        self._beat_path(self.owner.token).write_bytes(b"")

    def release(self) -> None:
        held = self._held
        super().release()
        if held:  # our heartbeat goes even where the lock is no longer ours
            try:
                self._beat_path(self.owner.token).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("%s: cannot remove the lock's heartbeat (%s)", self.path, exc)


def lock_path_name(out: RemotePath) -> str:
    """The name of output ``out``'s lock object: ``OUTPUT.lock`` beside it."""
    return out.name + ".lock"
