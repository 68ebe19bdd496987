"""The parameters of a run: everything that shapes its output, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from wsi_infer.postprocess import PostprocessParams
from wsi_infer.tiling import TileGrid
from wsi_infer.tissue import TissueParams

__all__ = ["RunParams"]


@dataclass(frozen=True)
class RunParams:
    """Everything that shapes a run's output (recorded in the store), and its thread count."""

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 2
    mpp: float | None = None
    workers: int = 2
    label_chunk: int = 512
    window_cols: int = 2048
    margin: int = 96
    tissue: TissueParams = field(default_factory=TissueParams)
    post: PostprocessParams = field(default_factory=PostprocessParams)

    def __post_init__(self) -> None:
        if self.tile_size < 64 or self.tile_size % 32:
            raise ValueError(
                f"tile size must be a multiple of 32 and at least 64, got {self.tile_size}"
            )
        TileGrid(1, 1, self.tile_size, self.overlap)  # validates overlap
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError("batch size and workers must be at least 1")
        if self.margin < 8 or self.label_chunk < 64 or self.window_cols % self.label_chunk:
            raise ValueError(
                "margin >= 8, label_chunk >= 64, window_cols a multiple of label_chunk"
            )

    def output_defining(self) -> dict[str, Any]:
        """The parameters the output depends on (not the thread count)."""
        d = dataclasses.asdict(self)
        d.pop("workers")
        return d
