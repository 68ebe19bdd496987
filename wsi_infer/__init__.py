"""wsi-infer: batch nucleus segmentation and classification for whole-slide images."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsi-infer")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__", "read_table"]


def read_table(path: str) -> object:
    """The nucleus table of a result store (a path, or a URL such as ``s3://bucket/r.zarr``)
    as a pandas DataFrame."""
    from wsi_infer.store import read_table as _read_table

    return _read_table(path)
