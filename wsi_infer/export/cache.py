"""Where exported models and TensorRT engines are cached, and how cache files are named."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

__all__ = ["default_cache_dir", "resolve_cache_dir", "slug"]

APP_NAME = "wsi-infer"


def default_cache_dir() -> Path:
    """The per-user cache directory, as ``platformdirs.user_cache_dir("wsi-infer")`` gives it.

    Linux: ``$XDG_CACHE_HOME/wsi-infer`` or ``~/.cache/wsi-infer``; macOS:
    ``~/Library/Caches/wsi-infer``; Windows: ``%LOCALAPPDATA%\\wsi-infer\\Cache``.
    The environment is only read, never changed.
    """
    try:
        import platformdirs
    except ImportError:
        pass
    else:
        return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_NAME
    xdg = os.environ.get("XDG_CACHE_HOME")
    base_dir = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base_dir / APP_NAME


def resolve_cache_dir(cache_dir: str | Path | None, sub: str) -> Path:
    """``cache_dir`` (or the default one) / ``sub``, created if missing."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(text: str) -> str:
    """A file-name-safe rendering of ``text`` (a GPU's name, a version)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unknown"
