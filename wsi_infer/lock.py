"""An exclusive lock per output, for local and shared (NFS, SMB) filesystems.

The lock is a small JSON file beside the output, ``OUTPUT.lock``, holding the
owner's host, pid, process start time, start date and a random token.  It is
made under a temporary name and hard-linked into place, which fails when the
lock exists (``link`` is atomic on NFS too); where hard links are not
supported it is created with ``O_CREAT | O_EXCL``.  While the lock is held a
heartbeat thread touches the file every :data:`HEARTBEAT_S` seconds and checks
that it still holds the owner's token.

A lock left by a run that died (SIGKILL, power loss) is taken over when its
owner is provably gone: on the same host, its pid is not running (or is now
another process, by its start time); on another host, its heartbeat is older
than :data:`STALE_S` seconds (the hosts' clocks must agree to well within
that).  Taking over is itself serialised by a second exclusive file,
``OUTPUT.lock.takeover``, so two runs never both take over one stale lock.
A run that finds its lock taken over (it was stopped for longer than
:data:`STALE_S`) stops with :class:`~wsi_infer.errors.StoreLockedError` before
it marks anything complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from wsi_infer.errors import OutputWriteError, StoreLockedError

__all__ = ["HEARTBEAT_S", "STALE_S", "HeldLock", "LockOwner", "StoreLock", "lock_path"]

logger = logging.getLogger(__name__)

#: Seconds between two touches of a held lock.
HEARTBEAT_S = 10.0
#: A lock from another host whose heartbeat is older than this is stale.
STALE_S = 120.0
#: A takeover file older than this was left by a run killed while taking over.
TAKEOVER_STALE_S = 30.0


def lock_path(out: Path) -> Path:
    """The lock file of output ``out``: ``OUTPUT.lock`` beside it."""
    return out.with_name(out.name + ".lock")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: fields after its closing parenthesis
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str | None:
    """This process' pid namespace (Linux): containers on one host with one name differ here."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock, as written in the lock file."""

    host: str
    pid: int
    pid_start: str | None
    pid_namespace: str | None
    started: str
    token: str

    def __post_init__(self) -> None:
        if not self.host or self.pid <= 0 or not self.token:
            raise ValueError("a lock owner needs a host, a positive pid and a token")

    @classmethod
    def me(cls) -> LockOwner:
        pid = os.getpid()
        return cls(
            socket.gethostname(),
            pid,
            _process_start(pid),
            _pid_namespace(),
            datetime.now(UTC).isoformat(timespec="seconds"),
            uuid.uuid4().hex,
        )

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        try:
            d = json.loads(text)
            return cls(
                str(d["host"]),
                int(d["pid"]),
                d.get("pid_start"),
                d.get("pid_namespace"),
                str(d["started"]),
                str(d["token"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def text(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True) + "\n"

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, since {self.started}"

    def alive(self, heartbeat_age: float, stale_s: float) -> bool:
        """Whether the owner may still be running (only provable deaths count as dead)."""
        mine = _pid_namespace()
        same_namespace = None in (self.pid_namespace, mine) or self.pid_namespace == mine
        if self.host == socket.gethostname() and same_namespace:
            if not _pid_running(self.pid):
                return False
            now_start = _process_start(self.pid)
            return not (self.pid_start and now_start and now_start != self.pid_start)
        return heartbeat_age < stale_s


class HeldLock:
    """What a local and an object-storage lock share: taking the lock (a live owner is
    refused, a gone one taken over under an exclusive takeover file), the heartbeat
    thread, :meth:`check` and :meth:`release`; a context manager.

    Subclasses say how files are created, read and removed where they live, and how
    they are named in messages (``noun``; ``where`` for an error while creating it).
    """

    noun = "lock file"
    out: Any
    path: Any

    def __init__(self, heartbeat_s: float, stale_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.owner = LockOwner.me()
        self._held = False
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what subclasses provide -------------------------------------------------------

    def _prepare(self) -> None:
        """Anything to do before the first try (make the folder, warn)."""

    def _create(self) -> bool:
        """Create the lock with our content, exclusively; False when one exists."""
        raise NotImplementedError

    def _read(self) -> tuple[LockOwner | None, float]:
        """The lock's owner (None if unreadable) and the age of its heartbeat in seconds."""
        raise NotImplementedError

    def _create_takeover(self) -> bool:
        """Create the takeover file exclusively; False when it exists."""
        raise NotImplementedError

    def _takeover_age(self) -> float:
        """Seconds since the takeover file was written (FileNotFoundError if it is gone)."""
        raise NotImplementedError

    def _remove_takeover(self) -> None:
        raise NotImplementedError

    def _remove_lock(self, owner: LockOwner | None) -> None:
        """Remove the lock (and what belongs to ``owner``'s copy of it)."""
        raise NotImplementedError

    def _refresh(self) -> None:
        """Renew our heartbeat."""
        raise NotImplementedError

    def _write_error(self, exc: OSError) -> OutputWriteError:
        raise NotImplementedError

    # -- taking the lock ---------------------------------------------------------------

    def acquire(self) -> Self:
        try:
            self._prepare()
            for _ in range(3):
                if self._create():
                    break
                other, age = self._read()
                if other is not None and other.alive(age, self.stale_s):
                    raise self._locked(other)
                if other is None and age < self.stale_s:  # a lock being written
                    raise StoreLockedError(
                        f"{self.out}: its {self.noun} {self.path} is unreadable and recent; if "
                        f"no other wsi-infer run uses this output, delete the {self.noun}"
                    )
                self._take_over(other)
            else:
                raise StoreLockedError(
                    f"{self.out}: could not take its lock {self.path} (other runs keep taking it)"
                )
        except StoreLockedError:
            raise
        except OSError as exc:
            raise self._write_error(exc) from exc
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="wsi-infer-lock", daemon=True)
        self._thread.start()
        return self

    def _locked(self, other: LockOwner) -> StoreLockedError:
        return StoreLockedError(
            f"{self.out}: in use by another wsi-infer run ({other.describe()}; {self.noun} "
            f"{self.path}); wait for it to finish, or delete the {self.noun} if that run is gone"
        )

    def _take_over(self, stale: LockOwner | None) -> None:
        """Remove a stale lock, serialised by an exclusive takeover file."""
        if not self._create_takeover():
            with contextlib.suppress(FileNotFoundError):
                if self._takeover_age() > TAKEOVER_STALE_S:
                    self._remove_takeover()
            return  # another run is taking over: look again
        try:
            current, _ = self._read()
            if current == stale:  # still the lock judged stale, not a fresh one
                self._remove_lock(stale)
                who = stale.describe() if stale else "unreadable"
                logger.warning(
                    "%s: took over the stale lock of a run that is gone (%s)", self.out, who
                )
        finally:
            self._remove_takeover()

    # -- holding it ----------------------------------------------------------------------

    def _still_mine(self) -> bool:
        owner, _ = self._read()
        return owner is not None and owner.token == self.owner.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._still_mine():
                    self._lost = True
                    logger.error("%s: the lock was taken over by another run", self.out)
                    return
                self._refresh()
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
                self._remove_lock(self.owner)
        except OSError as exc:
            logger.warning("%s: cannot remove the %s (%s)", self.path, self.noun, exc)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class StoreLock(HeldLock):
    """An exclusive lock on output ``out`` (see the module docstring); a context manager.

    The lock file is ``path``, by default ``OUTPUT.lock`` beside the output.

    :meth:`acquire` raises :class:`~wsi_infer.errors.StoreLockedError` naming
    the other run when a live one holds it; :meth:`check` raises it when the lock
    was lost since.
    """

    def __init__(
        self,
        out: Path,
        *,
        path: Path | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ) -> None:
        super().__init__(heartbeat_s, stale_s)
        self.out = out
        self.path = path if path is not None else lock_path(out)
        self._takeover = self.path.with_name(self.path.name + ".takeover")

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write_error(self, exc: OSError) -> OutputWriteError:
        return OutputWriteError(
            f"{self.path}: cannot create the output's lock file ({exc.strerror or exc}); "
            "check that the folder exists and is writable"
        )

    def _create(self) -> bool:
        """Create the lock file with our content, atomically; False when it exists."""
        tmp = self.path.with_name(f"{self.path.name}.{self.owner.token}.tmp")
        tmp.write_text(self.owner.text())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem
            return self._create_exclusive()
        finally:
            tmp.unlink(missing_ok=True)

    def _create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(self.owner.text())
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _read(self) -> tuple[LockOwner | None, float]:
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None, float("inf")
        return LockOwner.parse(text), age

    def _create_takeover(self) -> bool:
        try:
            os.close(os.open(self._takeover, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        return True

    def _takeover_age(self) -> float:
        return time.time() - self._takeover.stat().st_mtime

    def _remove_takeover(self) -> None:
        self._takeover.unlink(missing_ok=True)

    def _remove_lock(self, owner: LockOwner | None) -> None:
        self.path.unlink(missing_ok=True)

    def _refresh(self) -> None:
        os.utime(self.path)
