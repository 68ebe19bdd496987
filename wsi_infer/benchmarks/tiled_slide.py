"""A large slide made from the bundled sample, for machines without the shared data.

The sample (``wsi_infer/data/CMU-1-Small-Region.svs``, real H&E) is read at its
level 0 and mirror-tiled into a ``size`` x ``size`` pyramidal tiled TIFF that
declares the model's resolution, so the engine reads it 1:1.  It is written
with zlib (the standard library's codec: no imagecodecs needed) strip by strip,
so memory stays at one strip.  ``benchmarks/gpu_check.sh`` uses it on the
device, where only the repository travels.

``python -m wsi_infer.benchmarks.tiled_slide OUT.tif --size 16384 [--mpp 0.25]``
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
from numpy.typing import NDArray

from wsi_infer.cli.options import PATH, entry_point

__all__ = ["SAMPLE", "main", "tiled_slide", "tiled_slide_command"]

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "CMU-1-Small-Region.svs"
TILE = 256


def _sample_rgb(path: Path) -> NDArray[np.uint8]:
    """Level 0 of the sample, read with OpenSlide as the engine reads slides (its JPEG tiles
    need no imagecodecs)."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        rgba = slide.read_region((0, 0), 0, slide.dimensions)
    return np.ascontiguousarray(np.asarray(rgba)[..., :3], dtype=np.uint8)


def _mirrored(src: NDArray[np.uint8], y0: int, rows: int, width: int) -> NDArray[np.uint8]:
    """Rows ``y0 .. y0 + rows`` of the plane tiled with ``src`` and its mirror images."""
    h, w = src.shape[:2]
    ys = np.arange(y0, y0 + rows) % (2 * h)
    ys = np.where(ys < h, ys, 2 * h - 1 - ys)
    xs = np.arange(width) % (2 * w)
    xs = np.where(xs < w, xs, 2 * w - 1 - xs)
    return src[ys[:, None], xs[None, :]]


def tiled_slide(out: Path, size: int, mpp: float = 0.25, source: Path = SAMPLE) -> Path:
    """Write the ``size`` x ``size`` slide; returns its path."""
    import tifffile

    src = _sample_rgb(source)
    levels = [size]
    while levels[-1] > 2 * TILE:
        levels.append(levels[-1] // 4)

    def strips(edge: int, step: int) -> Iterator[NDArray[np.uint8]]:
        for y in range(0, edge, TILE):
            rows = min(TILE, edge - y)
            full = _mirrored(src, y * step, rows * step, edge * step)
            yield np.ascontiguousarray(full[::step, ::step][:rows, :edge])

    out.parent.mkdir(parents=True, exist_ok=True)
    res = 1e4 / mpp
    with tifffile.TiffWriter(out, bigtiff=size * size * 3 > 2**31) as tif:
        for k, edge in enumerate(levels):
            step = size // edge
            tif.write(
                _tiles(strips(edge, step), edge),
                shape=(edge, edge, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="zlib",
                compressionargs={"level": 1},
                photometric="rgb",
                subfiletype=0 if k == 0 else 1,
                resolution=(res / step, res / step),
                resolutionunit="CENTIMETER",
            )
    return out


def _tiles(strips: Iterator[NDArray[np.uint8]], edge: int) -> Iterator[NDArray[np.uint8]]:
    """Tiles in tifffile's order (rows of tiles, left to right), padded at the edges."""
    for strip in strips:
        pad = np.zeros((TILE, -(-edge // TILE) * TILE, 3), np.uint8)
        pad[: strip.shape[0], : strip.shape[1]] = strip
        for x in range(0, edge, TILE):
            yield pad[:, x : x + TILE]


@click.command(
    "python -m wsi_infer.benchmarks.tiled_slide",
    help=__doc__,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("out", type=PATH)
@click.option("--size", type=int, default=16384, show_default=True, help="edge in pixels")
@click.option("--mpp", type=float, default=0.25, show_default=True, help="micrometres per pixel")
def tiled_slide_command(**options: Any) -> int:
    args = SimpleNamespace(**options)
    sys.stdout.write(f"{tiled_slide(args.out, args.size, args.mpp)}\n")
    return 0


main = entry_point(tiled_slide_command, "python -m wsi_infer.benchmarks.tiled_slide")


if __name__ == "__main__":
    sys.exit(main())
