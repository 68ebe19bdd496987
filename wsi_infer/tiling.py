"""Tile geometry on the model's pixel grid.

The grid is cut into *cores* of ``stride = tile - overlap`` pixels.  The model
sees each core with ``overlap / 2`` pixels of context on every side (a tile of
``tile`` pixels) and only the core of its output is kept, so the stitched maps
are seamless: every grid pixel is predicted by exactly one tile, away from
that tile's border.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["TileGrid", "windows"]


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.overlap < 0 or self.overlap % 2:
            raise ValueError(f"overlap must be a non-negative even number, got {self.overlap}")
        if self.tile - self.overlap < 32:
            raise ValueError(
                f"tile size {self.tile} leaves a core under 32 px with overlap {self.overlap}"
            )

    @property
    def halo(self) -> int:
        return self.overlap // 2

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def shape(self) -> tuple[int, int]:
        """Tiles in (rows, columns)."""
        return math.ceil(self.height / self.stride), math.ceil(self.width / self.stride)

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Grid box ``(y0, y1, x0, x1)`` of tile (i, j)'s core, clipped to the grid."""
        s = self.stride
        return i * s, min((i + 1) * s, self.height), j * s, min((j + 1) * s, self.width)

    def origin(self, i: int, j: int) -> tuple[int, int]:
        """Grid ``(y, x)`` of the top-left pixel of tile (i, j)'s model input."""
        return i * self.stride - self.halo, j * self.stride - self.halo

    def select(self, mask: NDArray[np.bool_] | None) -> list[tuple[int, int]]:
        """Tiles, in raster order, whose core touches ``mask`` (resampled onto the tile grid).

        ``mask`` may have any resolution: it is mapped by proportion onto the grid.
        """
        ny, nx = self.shape
        if mask is None:
            return [(i, j) for i in range(ny) for j in range(nx)]
        mh, mw = mask.shape
        out = []
        for i in range(ny):
            for j in range(nx):
                y0, y1, x0, x1 = self.core(i, j)
                my0 = math.floor(y0 * mh / self.height)
                my1 = max(math.ceil(y1 * mh / self.height), my0 + 1)
                mx0 = math.floor(x0 * mw / self.width)
                mx1 = max(math.ceil(x1 * mw / self.width), mx0 + 1)
                if mask[my0:my1, mx0:mx1].any():
                    out.append((i, j))
        return out


def windows(
    height: int, width: int, rows: int, cols: int
) -> Iterator[tuple[int, list[tuple[int, int, int, int]]]]:
    """Post-processing windows: bands of ``rows`` grid rows, cut into ``cols``-wide cores.

    Yields ``(band_index, [(y0, y1, x0, x1), ...])``.
    """
    for b, y0 in enumerate(range(0, height, rows)):
        y1 = min(y0 + rows, height)
        yield b, [(y0, y1, x0, min(x0 + cols, width)) for x0 in range(0, width, cols)]
