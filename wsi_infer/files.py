"""Small file helpers used across the package: a file's sha256, an atomic write."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["atomic_write", "file_sha256"]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextmanager
def atomic_write(path: str | Path, suffix: str = ".partial") -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it replaces ``path`` (``os.replace``) when
    the block ends without an error, and is removed in any case.

    Readers see the old file or the whole new one, never a part.  The temporary name,
    ``.NAME.RANDOM`` + ``suffix``, is unique per call, so concurrent writers of one
    ``path`` do not mix their bytes (the last to finish wins).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with suppress(
            OSError
        ):  # nothing was written, or the folder forbids it: no error over the first
            tmp.unlink(missing_ok=True)
