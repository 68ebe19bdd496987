"""Every error wsi-infer raises on purpose.

One base class, :class:`WsiInferError`; each subclass also inherits the builtin
exception it means, so callers may catch either.  Messages are one line, name
the file concerned and say how to fix the problem.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ClusterError",
    "CorruptStoreError",
    "IdentityMismatchError",
    "IncompleteStoreError",
    "ManifestError",
    "MissingMppError",
    "OutputExistsError",
    "OutputWriteError",
    "ParameterError",
    "PlausibilityError",
    "RemoteStorageError",
    "ResolutionError",
    "SlideNotFoundError",
    "SlideReadError",
    "StorageDriverError",
    "StoreLockedError",
    "UnsupportedSlideError",
    "WorkLimitError",
    "WsiInferError",
    "one_line_error",
]


class WsiInferError(Exception):
    """Base class of the errors wsi-infer raises on purpose."""


class SlideNotFoundError(WsiInferError, FileNotFoundError):
    """The slide path does not exist or is not a file."""


class UnsupportedSlideError(WsiInferError, ValueError):
    """Neither openslide nor tifffile can open the file as a slide."""


class SlideReadError(WsiInferError, OSError):
    """The slide opened, but reading its pixels failed (a corrupt file)."""


class MissingMppError(WsiInferError, ValueError):
    """The slide has no resolution in its metadata and none was given."""


class OutputExistsError(WsiInferError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class OutputWriteError(WsiInferError, OSError):
    """Writing the result failed (disk full, file-size limit, permissions)."""


class IncompleteStoreError(WsiInferError, ValueError):
    """A result store is missing, partial or not a wsi-infer store."""


class ManifestError(WsiInferError, ValueError):
    """A batch manifest or slide list is malformed."""


class ParameterError(WsiInferError, ValueError):
    """Run parameters that the model or the slide cannot work with."""


class CheckpointError(WsiInferError, ValueError):
    """A model checkpoint is missing, malformed or inconsistent."""


class BackendUnavailableError(WsiInferError, ImportError):
    """An inference backend's package or hardware is missing."""


class ResolutionError(WsiInferError, ValueError):
    """A resolution (``--mpp`` or the metadata's) is no microscope's, or X and Y differ."""


class WorkLimitError(WsiInferError, ValueError):
    """A run would exceed a bound on its size: tiles, pixels or memory per batch."""


class StoreLockedError(WsiInferError, BlockingIOError):
    """Another live wsi-infer run holds the output store's lock."""


class CorruptStoreError(IncompleteStoreError):
    """A store that says it is complete fails verification (missing, edited or damaged)."""


class IdentityMismatchError(WsiInferError, ValueError):
    """A worker sees another slide or store than the client at the same path."""


class ClusterError(WsiInferError, ConnectionError):
    """The dask scheduler cannot be reached, started, or has no workers."""


class RemoteStorageError(WsiInferError, OSError):
    """Object storage refused or failed a request (credentials, bucket, endpoint, network)."""


class StorageDriverError(WsiInferError, ImportError):
    """A URL's storage driver (s3fs, gcsfs, adlfs) is not installed."""


class PlausibilityError(WsiInferError, ValueError):
    """With ``--strict``: a result that completed but is implausible (see its warnings)."""


def one_line_error(prog: str, message: object) -> str:
    """The line every command prints for an error it expected: ``PROG: error: MESSAGE``,
    on one line (line breaks in ``message`` become spaces)."""
    return f"{prog}: error: {' '.join(str(message).splitlines())}"
