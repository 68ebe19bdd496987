"""Slides given as URLs: staged to a local cache, bounded in size and checked by content hash.

openslide reads local files only, so a slide at ``s3://...`` (any fsspec URL) is
downloaded once into the slide cache and read from there.  A cache entry is keyed
by the URL and the object's size, modification time and ETag, so a replaced object
is fetched again.  A download is checked against the object's size and, where the
ETag is the content's MD5 (S3 objects uploaded in one part), against that; its
sha256 is recorded, and an entry is used again only when its file still has that
sha256 (a damaged cache file is fetched again, never read).  The cached file keeps
the object's modification time, so a slide's identity (size, time, sampled hash:
:mod:`wsi_infer.identity`) is the same whenever and wherever it is staged.

The cache is ``$WSI_INFER_SLIDE_CACHE`` or ``slides/`` in the user's wsi-infer
cache folder (``~/.cache/wsi-infer/slides`` on Linux), and holds at most
``$WSI_INFER_SLIDE_CACHE_GB`` gigabytes (default :data:`DEFAULT_CACHE_GB`): before
a download, the least recently used entries are removed until the new slide fits.
Formats made of several files (MRXS, VSI with its folder) cannot be staged as one
object; give them as local paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_infer.errors import RemoteStorageError, SlideNotFoundError, SlideReadError
from wsi_infer.files import file_sha256
from wsi_infer.location import RemotePath, parse_location

__all__ = ["DEFAULT_CACHE_GB", "StagedSlide", "cache_dir", "local_slide", "stage_slide"]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_GB = 50.0
CACHE_ENV = "WSI_INFER_SLIDE_CACHE"
CACHE_GB_ENV = "WSI_INFER_SLIDE_CACHE_GB"
ENTRY = "entry.json"
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class StagedSlide:
    """A slide object and its verified local copy."""

    url: str
    path: Path
    size: int
    mtime_ns: int
    sha256: str

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.sha256) != 64 or not self.path.is_absolute():
            raise ValueError("a staged slide needs a size, a sha256 and an absolute path")


def cache_dir() -> Path:
    """The slide cache folder (``$WSI_INFER_SLIDE_CACHE`` or the user cache's ``slides``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).absolute()
    from wsi_infer.export.cache import default_cache_dir

    return default_cache_dir() / "slides"


def cache_limit() -> int:
    """The cache's bound in bytes (``$WSI_INFER_SLIDE_CACHE_GB``, default 50 GB)."""
    text = os.environ.get(CACHE_GB_ENV, "")
    try:
        gb = float(text) if text else DEFAULT_CACHE_GB
    except ValueError:
        raise SlideReadError(f"{CACHE_GB_ENV}={text!r} is not a number of gigabytes") from None
    if not gb > 0:
        raise SlideReadError(f"{CACHE_GB_ENV}={text!r} must be positive")
    return int(gb * 1e9)


def _md5(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _entry_size(entry: Path) -> int:
    return sum(f.stat().st_size for f in entry.iterdir() if f.is_file())


def _read_entry(entry: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((entry / ENTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _make_room(root: Path, need: int, limit: int, keep: Path) -> None:
    """Remove least recently used entries until ``need`` more bytes fit under ``limit``."""
    entries = [e for e in root.iterdir() if e.is_dir() and e != keep] if root.is_dir() else []
    sizes = {e: _entry_size(e) for e in entries}
    total = sum(sizes.values())

    def last_used(entry: Path) -> float:
        try:
            return (entry / ENTRY).stat().st_mtime
        except OSError:
            return 0.0

    for entry in sorted(entries, key=last_used):
        if total + need <= limit:
            break
        logger.info("slide cache: removing %s (%d bytes) to make room", entry.name, sizes[entry])
        shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]


def stage_slide(
    url: RemotePath, *, root: Path | None = None, limit: int | None = None
) -> StagedSlide:
    """The verified local copy of the slide object ``url``, downloaded if needed."""
    root = root if root is not None else cache_dir()
    limit = limit if limit is not None else cache_limit()
    try:
        info = url.info()
    except FileNotFoundError:
        raise SlideNotFoundError(f"{url}: no such object") from None
    if info.get("type") != "file":
        raise SlideNotFoundError(f"{url}: is a folder (a prefix), not a slide object")
    size = int(info.get("size") or 0)
    mtime_ns = round(url.mtime() * 1e9)
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    key = hashlib.sha256(f"{url.url}\0{size}\0{mtime_ns}\0{etag}".encode()).hexdigest()[:32]
    entry = root / key
    target = entry / (url.name or "slide")
    known = _read_entry(entry)
    if known is not None and target.is_file() and target.stat().st_size == size:
        if file_sha256(target) == known.get("sha256"):
            os.utime(entry / ENTRY)  # recently used
            logger.info("%s: staged copy %s verified", url, target)
            return StagedSlide(url.url, target, size, mtime_ns, str(known["sha256"]))
        logger.warning("%s: the cached copy %s is damaged; fetching it again", url, target)
    if size > limit:
        raise SlideReadError(
            f"{url}: {size / 1e9:.1f} GB does not fit the slide cache's bound of "
            f"{limit / 1e9:.1f} GB; raise {CACHE_GB_ENV}"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        _make_room(root, size, limit, entry)
        if entry.exists():
            shutil.rmtree(entry)
        tmp = root / f".{key}.{uuid.uuid4().hex[:12]}.partial"
        tmp.mkdir()
        try:
            local = tmp / target.name
            t0 = time.perf_counter()
            url.download(local)
            got = local.stat().st_size
            if got != size:
                raise SlideReadError(f"{url}: downloaded {got} bytes, the object has {size}")
            if _MD5.match(etag) and _md5(local) != etag:
                raise SlideReadError(
                    f"{url}: the download's MD5 differs from the object's ETag {etag}; try again"
                )
            digest = file_sha256(local)
            os.utime(local, ns=(mtime_ns, mtime_ns))
            record = {"url": url.url, "size": size, "mtime_ns": mtime_ns, "etag": etag}
            record["sha256"] = digest
            (tmp / ENTRY).write_text(json.dumps(record, indent=1), encoding="utf-8")
            os.rename(tmp, entry)
            logger.info(
                "%s: staged to %s (%d bytes, %.1f s)", url, target, size, time.perf_counter() - t0
            )
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        if isinstance(exc, (SlideReadError, RemoteStorageError)):
            raise
        raise SlideReadError(
            f"{url}: cannot stage the slide into {root} ({exc.strerror or exc}); free space or "
            f"set {CACHE_ENV} to a writable folder"
        ) from exc
    return StagedSlide(url.url, target, size, mtime_ns, digest)


def local_slide(path: str | Path | RemotePath) -> tuple[Path, StagedSlide | None]:
    """A slide given as a path or URL, as a local file (staged for a URL) and its staging."""
    where = parse_location(path)
    if isinstance(where, RemotePath):
        staged = stage_slide(where)
        return staged.path, staged
    return Path(where).absolute(), None
