"""Where results live: a local path, or an object in object storage addressed by URL.

``s3://bucket/prefix/x.zarr`` (and any other fsspec URL: ``gs://``, ``az://``,
``abfs://``, ...) becomes a :class:`RemotePath`; everything else (``file://`` URLs
included) stays a :class:`pathlib.Path`.  A :class:`RemotePath` offers the few
path operations the engine uses (``/``, ``name``, ``parent``, ``exists``,
``read_text``, ...) on top of the fsspec filesystem of its protocol, plus what
object storage needs in place of a filesystem's: a listing of every object under
a prefix in the order ``os.walk`` would give the same files, an exclusive create
(a conditional write), and recursive deletion.

Credentials and endpoints come from each cloud SDK's usual environment variables
and configuration files (for S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
or ``~/.aws/credentials``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for an
S3-compatible server); wsi-infer never takes them as options.  The drivers
(``s3fs``, ``gcsfs``, ``adlfs``) come with ``pip install 'wsi-infer[cloud]'``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsi_infer.errors import RemoteStorageError, StorageDriverError

__all__ = [
    "RemotePath",
    "StorePath",
    "is_url",
    "parse_location",
    "remove_tree",
    "walk_files",
    "walk_key",
]

logger = logging.getLogger(__name__)

#: Protocols whose fsspec driver creates an object only if it does not exist, atomically
#: (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``, Azure ``If-None-Match: *``).
ATOMIC_CREATE = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
#: The package that reads each protocol, for the error when it is missing.
DRIVERS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}
DRIVERS.update(abfs="adlfs", abfss="adlfs")


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is a URL (``scheme://...``) rather than a local path."""
    s = str(text)
    scheme, sep, _ = s.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum() and len(scheme) > 1


def parse_location(text: str | os.PathLike[str] | RemotePath) -> Path | RemotePath:
    """A local :class:`~pathlib.Path` for paths and ``file://`` URLs, else a :class:`RemotePath`."""
    if isinstance(text, RemotePath):
        return text
    if isinstance(text, Path):
        return text
    s = str(text)
    if not is_url(s):
        return Path(s)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    return RemotePath(s)


class RemotePath:
    """A file or folder (a key prefix) in object storage, by URL; immutable, hashable.

    Operations go through the fsspec filesystem of the URL's protocol; listings
    are never taken from fsspec's cache (other processes write the same prefix).
    Errors other than "not found" / "exists" are raised as
    :class:`~wsi_infer.errors.RemoteStorageError`, one line naming the URL.
    """

    __slots__ = ("_path", "protocol", "url")

    def __init__(self, url: str) -> None:
        protocol, sep, rest = url.partition("://")
        if not sep or not rest.strip("/"):
            raise ValueError(f"{url!r}: not a URL with a bucket or container")
        rest = rest.rstrip("/")
        self.protocol = protocol.lower()
        self.url = f"{self.protocol}://{rest}"
        self._path = rest

    # -- the path algebra ----------------------------------------------------------

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(f"{self.url}/{str(name).strip('/')}")

    @property
    def name(self) -> str:
        return self._path.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> RemotePath:
        head = self._path.rpartition("/")[0]
        return RemotePath(f"{self.protocol}://{head}") if head else self

    @property
    def parents(self) -> list[RemotePath]:
        out, p = [], self
        while p.parent != p:
            p = p.parent
            out.append(p)
        return out

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.with_name(self.stem + suffix if self.suffix else self.name + suffix)

    def absolute(self) -> RemotePath:
        return self

    def resolve(self) -> RemotePath:
        return self

    # -- the filesystem ------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of this URL's protocol (credentials from the environment)."""
        try:
            import fsspec

            return fsspec.filesystem(self.protocol)
        except ImportError as exc:
            package = DRIVERS.get(self.protocol, f"the fsspec driver for {self.protocol}://")
            raise StorageDriverError(
                f"{self.url}: {self.protocol}:// needs {package}; install it with "
                f"pip install 'wsi-infer[cloud]' ({exc})"
            ) from exc
        except ValueError as exc:  # fsspec: "Protocol not known"
            raise StorageDriverError(
                f"{self.url}: no storage driver for {self.protocol}://"
            ) from exc

    @property
    def key(self) -> str:
        """The path the fsspec filesystem uses (bucket/key, without the protocol)."""
        return self._path

    @property
    def atomic_create(self) -> bool:
        """Whether :meth:`create` is a conditional write on this protocol."""
        return self.protocol in ATOMIC_CREATE

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
            raise
        except StorageDriverError:
            raise
        except Exception as exc:  # the drivers raise their SDK's errors, not only OSError
            raise RemoteStorageError(
                f"{self.url}: cannot {what} ({type(exc).__name__}: {exc}); check the "
                "credentials and endpoint in the environment (e.g. AWS_ACCESS_KEY_ID, "
                "AWS_ENDPOINT_URL) and that the bucket exists"
            ) from exc

    def _fresh(self) -> Any:
        fs = self.fs
        fs.invalidate_cache()
        return fs

    def info(self) -> dict[str, Any]:
        """The object's metadata (``size``, ``type``, modification time); FileNotFoundError."""
        return dict(self._call("read the object's metadata", lambda: self._fresh().info(self.key)))

    def exists(self) -> bool:
        return bool(self._call("look for it", lambda: self._fresh().exists(self.key)))

    def is_file(self) -> bool:
        try:
            return self.info().get("type") == "file"
        except FileNotFoundError:
            return False

    def is_dir(self) -> bool:
        """A prefix with objects under it (object stores have no empty folders)."""
        return bool(self._call("list it", lambda: self._fresh().isdir(self.key)))

    def is_symlink(self) -> bool:
        return False

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: prefixes exist as soon as an object is put under them."""

    def iterdir(self) -> Iterator[RemotePath]:
        names = self._call("list it", lambda: self._fresh().ls(self.key, detail=False))
        for n in names:
            yield RemotePath(f"{self.protocol}://{str(n).rstrip('/')}")

    def read_bytes(self) -> bytes:
        return bytes(self._call("read it", lambda: self.fs.cat_file(self.key)))

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Put the object whole: readers see the old content or the new, never a mix."""
        self._call("write it", lambda: self.fs.pipe_file(self.key, data))

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local: Path) -> None:
        """Put the local file ``local`` as this object (one object, whole)."""
        self._call("upload to it", lambda: self.fs.put_file(str(local), self.key))

    def download(self, local: Path) -> None:
        self._call("download it", lambda: self.fs.get_file(self.key, str(local)))

    def create(self, data: bytes) -> bool:
        """Put the object only if none exists (a conditional write); False when one does.

        Atomic where :attr:`atomic_create` (S3, GCS, Azure); elsewhere fsspec checks
        and then writes, which two writers can both pass.
        """
        try:
            self._call("create it", lambda: self.fs.pipe_file(self.key, data, mode="create"))
        except FileExistsError:
            return False
        return True

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._call("delete it", lambda: self.fs.rm_file(self.key))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete every object under this prefix (and the object of this name, if any)."""
        keys = [f"{self.key}/{rel}" for rel in self.files()]
        if self.is_file():
            keys.append(self.key)
        if keys:
            self._call("delete it", lambda: self.fs.rm(keys))

    def files(self) -> list[str]:
        """Every object under this prefix, as paths relative to it (``a/b/c``), sorted."""
        found = self._call(
            "list it", lambda: self._fresh().find(self.key, withdirs=False, detail=False)
        )
        prefix = self.key + "/"
        return sorted(str(f)[len(prefix) :] for f in found if str(f).startswith(prefix))

    def mtime(self) -> float:
        """The object's modification time (the server's clock), seconds since the epoch."""
        info = self.info()
        for key in ("LastModified", "mtime", "updated", "last_modified", "time"):
            value = info.get(key)
            if value is None:
                continue
            if hasattr(value, "timestamp"):
                return float(value.timestamp())
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                from datetime import datetime

                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        raise RemoteStorageError(f"{self.url}: the storage gives no modification time")


#: A store's location: a local folder or a prefix in object storage.
StorePath = Path | RemotePath


def walk_key(rel: str) -> tuple[tuple[int, str], ...]:
    """Sort key putting relative paths in the order of a top-down, sorted ``os.walk``:
    a folder's own files (by name) before its subfolders (by name)."""
    parts = rel.split("/")
    return (*((1, p) for p in parts[:-1]), (0, parts[-1]))


def walk_files(folder: StorePath) -> list[str]:
    """Every file under ``folder`` as a relative posix path, in top-down sorted walk order."""
    if isinstance(folder, RemotePath):
        return sorted(folder.files(), key=walk_key)
    out: list[str] = []
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        rel = Path(dirpath).relative_to(folder)
        out.extend((rel / f).as_posix() for f in sorted(files))
    return out


def remove_tree(path: StorePath) -> None:
    """Delete a folder (or prefix) and everything in it."""
    if isinstance(path, RemotePath):
        path.rmtree()
        return
    import shutil

    shutil.rmtree(path)
