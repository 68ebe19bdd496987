"""Quality-control pictures of a result: what was found where, over the slide itself.

Two RGB images:

* **overview** -- the slide's thumbnail (at most ``max_size`` pixels on its long
  side, read from the slide with :func:`wsi_infer.tissue.read_thumbnail`) with
  the nuclei drawn in their class colours (the outlines of a coarse level of
  ``labels/nuclei``, coloured from the same level of ``labels/types``; at this
  scale a nucleus is a dot of a few pixels), the tissue mask's outline in
  black, a legend with counts, and a magenta box where the zoom is taken.  The
  image has the slide's aspect ratio: its shape is the thumbnail's.
* **zoom** -- ``zoom_size`` x ``zoom_size`` pixels at the model's own resolution
  (the label grid) around the densest region (the most table centroids in a
  window of that size), with each nucleus outlined (inner boundary, 1 px) in
  its class colour; unclassified nuclei in white.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from wsi_infer.errors import OutputExistsError, OutputWriteError, SlideNotFoundError
from wsi_infer.files import atomic_write
from wsi_infer.store import ATTR, open_result, refuse_existing, refuse_inside_store

__all__ = ["Overlay", "densest_window", "level0_box", "render_overlay", "write_overlay"]

logger = logging.getLogger(__name__)

TISSUE_COLOUR = (0, 0, 0)
ZOOM_BOX_COLOUR = (255, 0, 255)
UNCLASSIFIED_COLOUR = (255, 255, 255)


@dataclass
class Overlay:
    """The two pictures and where they come from."""

    overview: NDArray[np.uint8]
    zoom: NDArray[np.uint8]
    overview_mpp: float  # micrometres per overview pixel (labels level x stride)
    label_level: int  # pyramid level of labels/nuclei drawn on the overview
    zoom_box: tuple[int, int, int, int]  # grid pixels x0 y0 x1 y1
    zoom_box_level0: tuple[int, int, int, int]  # level-0 pixels x0 y0 x1 y1
    zoom_nuclei: int  # table centroids inside the zoom
    paths: list[Path] = field(default_factory=list)


def densest_window(
    xy: NDArray[np.floating[Any]], shape: tuple[int, int], size: int
) -> tuple[int, int, int, int]:
    """The ``size`` x ``size`` window of a ``shape`` (h, w) grid holding the most points ``xy``.

    Points are binned at a quarter of ``size``; windows are aligned to bins.
    Returns ``(x0, y0, x1, y1)`` clipped to the grid (the centre when no points).
    """
    h, w = shape
    wh, ww = min(size, h), min(size, w)
    if len(xy) == 0:
        y0, x0 = (h - wh) // 2, (w - ww) // 2
        return x0, y0, x0 + ww, y0 + wh
    b = max(1, size // 4)
    ny, nx = math.ceil(h / b), math.ceil(w / b)
    hist, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=(ny, nx), range=((0, ny * b), (0, nx * b)))
    k = max(1, size // b)
    c = np.zeros((ny + 1, nx + 1))
    c[1:, 1:] = hist.cumsum(0).cumsum(1)
    ky, kx = min(k, ny), min(k, nx)
    sums = c[ky:, kx:] - c[:-ky, kx:] - c[ky:, :-kx] + c[:-ky, :-kx]
    iy, ix = (int(v) for v in np.unravel_index(int(np.argmax(sums)), sums.shape))
    y0 = min(max(iy * b, 0), h - wh)
    x0 = min(max(ix * b, 0), w - ww)
    return x0, y0, x0 + ww, y0 + wh


def _levels(group: zarr.Group) -> list[zarr.Array[Any]]:
    arrays = []
    k = 0
    while str(k) in group:
        a = group[str(k)]
        assert isinstance(a, zarr.Array)
        arrays.append(a)
        k += 1
    return arrays


def _resample(a: NDArray[Any], shape: tuple[int, int], step: tuple[float, float]) -> NDArray[Any]:
    """Nearest ``a`` pixel (each ``step`` = (dy, dx) thumbnail pixels) per pixel of ``shape``."""
    rows = np.clip(((np.arange(shape[0]) + 0.5) / step[0]).astype(np.int64), 0, a.shape[0] - 1)
    cols = np.clip(((np.arange(shape[1]) + 0.5) / step[1]).astype(np.int64), 0, a.shape[1] - 1)
    return a[rows[:, None], cols[None, :]]


def _paint_outlines(
    rgb: NDArray[np.uint8],
    nuclei: NDArray[Any],
    types: NDArray[Any],
    palette: NDArray[np.uint8],
) -> None:
    from skimage.segmentation import find_boundaries

    edge = find_boundaries(nuclei, mode="inner") & (nuclei > 0)
    t = np.clip(types[edge].astype(np.int64), 0, len(palette) - 1)
    rgb[edge] = palette[t]


def _palette(colours: list[list[int]]) -> NDArray[np.uint8]:
    return np.array([UNCLASSIFIED_COLOUR, *[tuple(c[:3]) for c in colours]], np.uint8)


def render_overlay(
    root: zarr.Group,
    *,
    slide_path: str | Path | None = None,
    max_size: int = 2048,
    zoom_size: int = 512,
) -> Overlay:
    """Draw the overview and the zoom of the result ``root`` (see the module docstring).

    The slide is ``slide_path`` or the one recorded in the store; a missing
    slide raises :class:`~wsi_infer.errors.SlideNotFoundError`.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from wsi_infer.reader import GridReader, open_slide
    from wsi_infer.tissue import read_thumbnail

    info: Any = root.attrs[ATTR]
    path = Path(slide_path if slide_path is not None else info["slide"]["path"])
    if not path.exists():
        raise SlideNotFoundError(
            f"{path}: the store's slide is not there; pass --slide to say where it is"
        )
    scale = float(info["grid_to_level0"])
    run_mpp = float(info["run_mpp"])
    slide_mpp = float(info["slide"]["mpp"])
    names = list(info["model"]["class_names"])
    palette = _palette([list(c) for c in info["model"]["class_colours"]])

    nuclei_group, types_group = root["labels/nuclei"], root["labels/types"]
    assert isinstance(nuclei_group, zarr.Group) and isinstance(types_group, zarr.Group)
    nuclei_levels, types_levels = _levels(nuclei_group), _levels(types_group)
    n_levels = min(len(nuclei_levels), len(types_levels))
    level = next(
        (k for k in range(n_levels) if max(nuclei_levels[k].shape) <= max_size), n_levels - 1
    )
    stride = max(1, math.ceil(max(nuclei_levels[level].shape) / max_size))
    factor = 2**level * stride  # grid pixels per overview pixel
    overview_mpp = run_mpp * factor

    table: Any = root["tables/nuclei"]
    centroid = np.asarray(table["centroid"][:], np.float64)
    types = np.asarray(table["type"][:])

    slide = open_slide(path)
    try:
        thumb = read_thumbnail(slide, slide_mpp, overview_mpp)
        shape = (thumb.shape[0], thumb.shape[1])
        # one label pixel in thumbnail pixels (1 unless the thumbnail was clamped to level 0)
        w0, h0 = slide.dimensions
        step = (factor * scale * shape[0] / h0, factor * scale * shape[1] / w0)
        lab = _resample(np.asarray(nuclei_levels[level][::stride, ::stride]), shape, step)
        typ = _resample(np.asarray(types_levels[level][::stride, ::stride]), shape, step)
        overview = thumb.copy()
        _paint_outlines(overview, lab, typ, palette)

        tissue_arr = root["labels/tissue/0"]
        assert isinstance(tissue_arr, zarr.Array)
        tissue = np.asarray(tissue_arr[:]) > 0
        if tissue.size and tissue.any():
            img = Image.fromarray(tissue.astype(np.uint8) * 255)
            big = np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 0
            edge = find_boundaries(big, mode="inner")
            width = max(1, round(max(shape) / 800))
            if width > 1:
                edge = ndi.binary_dilation(edge, iterations=width - 1) & big
            overview[edge] = TISSUE_COLOUR

        # zoom: the densest zoom_size window of the label grid
        grid_shape = (int(nuclei_levels[0].shape[0]), int(nuclei_levels[0].shape[1]))
        grid_xy = (centroid + 0.5) / scale - 0.5 if len(centroid) else centroid
        x0, y0, x1, y1 = densest_window(grid_xy, grid_shape, zoom_size)
        inside = (
            (grid_xy[:, 0] >= x0)
            & (grid_xy[:, 0] < x1)
            & (grid_xy[:, 1] >= y0)
            & (grid_xy[:, 1] < y1)
            if len(grid_xy)
            else np.zeros(0, bool)
        )
        zoom = GridReader(slide, scale).read(x0, y0, x1 - x0, y1 - y0).copy()
        _paint_outlines(
            zoom,
            np.asarray(nuclei_levels[0][y0:y1, x0:x1]),
            np.asarray(types_levels[0][y0:y1, x0:x1]),
            palette,
        )
    finally:
        slide.close()

    pil = Image.fromarray(overview)
    draw = ImageDraw.Draw(pil)
    sy, sx = step
    box = [x0 / factor * sx, y0 / factor * sy, x1 / factor * sx - 1, y1 / factor * sy - 1]
    draw.rectangle(box, outline=ZOOM_BOX_COLOUR, width=max(1, round(max(shape) / 600)))
    counts = np.bincount(types.astype(np.int64), minlength=len(names) + 1)
    entries = [(f"{n}: {int(counts[i + 1])}", tuple(palette[i + 1])) for i, n in enumerate(names)]
    if counts[0]:
        entries.append((f"unclassified: {int(counts[0])}", UNCLASSIFIED_COLOUR))
    _legend(draw, entries, max(shape))
    lz = level0_box((x0, y0, x1, y1), scale)
    logger.debug(
        "overview level %d stride %d (%.2f um/px), zoom %s", level, stride, overview_mpp, lz
    )
    return Overlay(
        np.asarray(pil),
        zoom,
        overview_mpp,
        level,
        (x0, y0, x1, y1),
        lz,
        int(inside.sum()),
    )


def level0_box(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    """A grid-pixel box ``(x0, y0, x1, y1)`` in level-0 pixels (the table's bbox convention)."""
    x0, y0, x1, y1 = box
    return (
        math.floor(x0 * scale),
        math.floor(y0 * scale),
        math.ceil(x1 * scale),
        math.ceil(y1 * scale),
    )


def _legend(draw: Any, entries: list[tuple[str, tuple[int, ...]]], long_side: int) -> None:
    from PIL import ImageFont

    size = max(10, long_side // 60)
    try:
        font: Any = ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType
        font = ImageFont.load_default()
    pad = max(2, size // 3)
    swatch = size
    widths = [draw.textlength(text, font=font) for text, _ in entries]
    box_w = int(pad * 3 + swatch + max(widths, default=0))
    box_h = int(pad + len(entries) * (size + pad))
    draw.rectangle([0, 0, box_w, box_h], fill=(255, 255, 255), outline=(0, 0, 0))
    for k, (text, colour) in enumerate(entries):
        y = pad + k * (size + pad)
        draw.rectangle(
            [pad, y, pad + swatch, y + swatch],
            fill=tuple(int(v) for v in colour),
            outline=(0, 0, 0),
        )
        draw.text((2 * pad + swatch, y), text, fill=(0, 0, 0), font=font)


def write_overlay(
    store: str | Path,
    overview_path: str | Path,
    zoom_path: str | Path,
    *,
    slide_path: str | Path | None = None,
    max_size: int = 2048,
    zoom_size: int = 512,
    overwrite: bool = False,
) -> Overlay:
    """Render the complete result ``store``'s overlay and write the two PNGs.

    Existing outputs are refused (:class:`~wsi_infer.errors.OutputExistsError`)
    unless ``overwrite``; the store must be complete.
    """
    from PIL import Image

    root = open_result(store)
    paths = [Path(overview_path), Path(zoom_path)]
    for p in paths:
        refuse_inside_store(p, "overlay")
        refuse_existing(p, overwrite)
        if p.is_dir():
            raise OutputExistsError(f"{p}: is a directory")
    result = render_overlay(root, slide_path=slide_path, max_size=max_size, zoom_size=zoom_size)
    for p, img in zip(paths, (result.overview, result.zoom), strict=True):
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(p) as partial:
                Image.fromarray(img).save(partial, format="PNG", optimize=True)
        except OSError as exc:
            raise OutputWriteError(
                f"{p}: cannot write the overlay ({exc.strerror or exc}); choose a writable folder"
            ) from exc
    result.paths = paths
    return result
