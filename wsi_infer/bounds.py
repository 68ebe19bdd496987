"""Bounds on everything that sizes a run, checked before any work starts.

* **Resolution**: micrometres per pixel between :data:`MIN_MPP` and
  :data:`MAX_MPP`, whether from ``--mpp`` or the metadata (a 100x oil objective
  gives about 0.1 µm/px, a 0.5x one 20); X and Y must agree within
  :data:`MAX_ANISOTROPY` (non-square pixels are refused).
* **Work**: at most :data:`MAX_TILES` tiles, level-0 sides below 2**31 pixels,
  and at most :data:`MAX_PREVIEW_PIXELS` pixels decoded for the tissue preview
  (a slide without a coarse pyramid level is otherwise read whole for it).
* **Memory**: the memory a batch of tiles needs in the model (an estimate from
  the architecture: activations and the largest attention matrices) must not
  exceed the machine's (or the GPU's) memory.

Each check raises a one-line error with the numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_infer.config import ARCHITECTURES, ModelConfig
from wsi_infer.errors import WorkLimitError
from wsi_infer.tiling import TileGrid

if TYPE_CHECKING:
    from wsi_infer.reader import Slide

__all__ = [
    "MAX_ANISOTROPY",
    "MAX_MPP",
    "MAX_PREVIEW_PIXELS",
    "MAX_TILES",
    "MIN_MPP",
    "batch_memory_bytes",
    "check_grid",
    "check_memory",
    "check_preview",
    "memory_limit",
]

logger = logging.getLogger(__name__)

#: Finer than this no light microscope resolves (a 100x oil objective: ~0.1 µm/px).
MIN_MPP = 0.05
#: Coarser than this (a 0.5x objective) is no slide scan (a TIFF writer's default dpi, say).
MAX_MPP = 20.0
#: Largest relative difference between the X and Y resolution taken as square pixels.
MAX_ANISOTROPY = 0.02
#: Most tiles in one slide: ten times a whole 75 x 25 mm glass slide at 0.25 µm/px.
MAX_TILES = 1_000_000
#: Most pixels decoded for the tissue preview (the largest real level 0 is ~1.5e10).
MAX_PREVIEW_PIXELS = 20_000_000_000
#: Level-0 sides must fit the table's int32 coordinates.
MAX_SIDE = 2**31 - 1

#: SegFormer (Mix Transformer) encoder: per stage, output stride, attention heads and the
#: spatial reduction of keys and values (the same for b0..b5).
_STRIDES = (4, 8, 16, 32)
_HEADS = (1, 2, 5, 8)
_REDUCTION = (8, 4, 2, 1)
_MLP_RATIO = 4


def check_grid(slide_path: Path, level0: tuple[int, int], grid: TileGrid, run_mpp: float) -> None:
    """Refuse a slide too large to address or a grid of more than :data:`MAX_TILES` tiles."""
    w0, h0 = level0
    if max(w0, h0) > MAX_SIDE:
        raise WorkLimitError(
            f"{slide_path}: declares {w0} x {h0} px, beyond the 2^31 px a side that results "
            "can address; is the file corrupt?"
        )
    ny, nx = grid.shape
    if ny * nx > MAX_TILES:
        raise WorkLimitError(
            f"{slide_path}: {nx} x {ny} = {nx * ny} tiles of {grid.stride} px "
            f"({grid.width} x {grid.height} px at {run_mpp:.4g} µm/px), more than the "
            f"{MAX_TILES} a run may take; check the slide's resolution (--mpp) and --tile-size"
        )


def check_preview(slide: Slide, slide_mpp: float, tissue_mpp: float) -> None:
    """Refuse a tissue preview that would decode more than :data:`MAX_PREVIEW_PIXELS` pixels."""
    from wsi_infer.reader import GridReader

    reader = GridReader(slide, max(tissue_mpp / slide_mpp, 1.0))
    w, h = slide.level_dimensions[reader.level]
    if w * h > MAX_PREVIEW_PIXELS:
        raise WorkLimitError(
            f"{slide.path}: the tissue preview would decode {w * h:.3g} px from level "
            f"{reader.level} ({w} x {h} px), more than {MAX_PREVIEW_PIXELS:.3g}: the file has no "
            "coarse pyramid level; add one (e.g. vips tiffsave --tile --pyramid) or pass "
            "--no-tissue-mask"
        )


def batch_memory_bytes(config: ModelConfig, tile: int, batch: int) -> int:
    """An estimate of the memory one batch of ``tile`` px tiles takes in the model (float32).

    Input (uint8 read, float32 normalised), logits, the convolutional stem and
    decoder at full and half resolution, the encoder's activations, and the
    largest attention matrix (scores and softmax), which grows with the fourth
    power of the tile's edge.
    """
    arch = ARCHITECTURES[config.arch]
    hidden = [int(h) for h in arch["hidden_sizes"]]
    d = int(arch["decoder_hidden_size"])
    s = config.stem_channels
    px = tile * tile
    io = px * (3 + 3 * 4 + config.out_channels * 4)
    conv = px * 4 * (5 * s) + (px // 4) * 4 * (6 * s + d)
    encoder = sum(
        (px // st**2) * h * (_MLP_RATIO + 2) * 4 for st, h in zip(_STRIDES, hidden, strict=True)
    )
    attention = max(
        heads * (px // st**2) * max(1, px // (st * r) ** 2) * 4 * 2
        for st, heads, r in zip(_STRIDES, _HEADS, _REDUCTION, strict=True)
    )
    return batch * (io + conv + encoder + attention)


def _cgroup_limit() -> int | None:
    """The memory limit of this process' cgroup (v2), if any."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def memory_limit(device: str) -> int | None:
    """Bytes of memory the model may use on ``device`` (None when unknown)."""
    if device.startswith("cuda"):
        try:
            import torch

            index = int(device.partition(":")[2] or 0)
            return int(torch.cuda.get_device_properties(index).total_memory)
        except (ImportError, RuntimeError, AssertionError, ValueError):
            return None
    total: int | None = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    candidates = [v for v in (total, limit) if v]
    return min(candidates) if candidates else None


def check_memory(slide_path: Path, config: ModelConfig, tile: int, batch: int, device: str) -> None:
    """Refuse a batch whose estimated memory exceeds the device's."""
    need = batch_memory_bytes(config, tile, batch)
    have = memory_limit(device)
    if have is None:
        logger.info("memory of %s unknown; a batch needs about %.2f GiB", device, need / 2**30)
        return
    if need > have:
        where = "GPU" if device.startswith("cuda") else "machine"
        raise WorkLimitError(
            f"{slide_path}: a batch of {batch} tiles of {tile} px needs about "
            f"{_gib(need)} GiB in the model, more than this {where}'s {_gib(have)} GiB; "
            "use a smaller --tile-size or --batch-size"
        )


def _gib(n: int) -> str:
    g = n / 2**30
    return f"{g:.1f}" if g < 1e4 else f"{g:.3g}"
