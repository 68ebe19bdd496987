"""What makes a slide, a model and a store themselves, cheaply and without trusting claims.

* **Slide**: its size, modification time and a sha256 of spread-out blocks of
  its bytes (the first MiB, :data:`SAMPLE_BLOCKS` blocks evenly spaced through
  the file and the last block): a slide replaced at the same path by another is
  caught without reading the whole file.  Workers of a cluster compare the
  content part (size and sampled hash; not the time, which copies may change).
* **Model**: the sha256 of the bytes that actually run (the ONNX file, the
  TensorRT engine, or the checkpoint's weights with its config for PyTorch),
  with the backend, device and precision -- never a claim inside the file.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_infer.errors import SlideNotFoundError, SlideReadError

__all__ = ["SAMPLE_BLOCKS", "SlideIdentity", "model_identity", "slide_identity"]

#: Evenly spaced blocks hashed besides the head and the tail.
SAMPLE_BLOCKS = 32
BLOCK = 64 * 1024
HEAD = 1 << 20


@dataclass(frozen=True)
class SlideIdentity:
    """A slide file's identity: size, modification time (ns) and sampled-content sha256."""

    size: int
    mtime_ns: int
    sample_sha256: str

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.sample_sha256) != 64:
            raise ValueError("a slide identity needs a size >= 0 and a sha256 hex digest")

    @property
    def content(self) -> str:
        """What a worker compares: size and sampled hash (copies may change the time)."""
        return f"{self.size}:{self.sample_sha256}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "size_bytes": self.size,
            "mtime_ns": self.mtime_ns,
            "sample_sha256": self.sample_sha256,
        }


def _offsets(size: int) -> list[int]:
    """Where the sampled blocks start in a file of ``size`` bytes, after its head."""
    step = (size - HEAD - BLOCK) // SAMPLE_BLOCKS
    return [HEAD + k * step for k in range(SAMPLE_BLOCKS)] + [size - BLOCK]


def slide_identity(path: Path) -> SlideIdentity:
    """The identity of the regular file ``path`` (reads about 3 MiB, whatever its size)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise SlideNotFoundError(f"{path}: not a regular file")
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            if st.st_size <= HEAD + (SAMPLE_BLOCKS + 1) * BLOCK:  # small: hashed whole
                return SlideIdentity(
                    st.st_size, st.st_mtime_ns, hashlib.file_digest(fh, "sha256").hexdigest()
                )
            digest.update(fh.read(HEAD))
            for offset in _offsets(st.st_size):
                fh.seek(offset)
                digest.update(offset.to_bytes(8, "little"))
                digest.update(fh.read(BLOCK))
    except SlideNotFoundError:
        raise
    except OSError as exc:
        raise SlideReadError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    return SlideIdentity(st.st_size, st.st_mtime_ns, digest.hexdigest())


def model_identity(backend: Any) -> dict[str, Any]:
    """What identifies the model a backend runs: hash of the running bytes, backend, precision."""
    return {
        "sha256": backend.model_sha256,
        "backend": backend.name,
        "device": backend.device,
        "precision": getattr(backend, "precision", "fp32"),
    }
