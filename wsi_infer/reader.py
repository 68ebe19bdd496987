"""Reading slides: openslide for what it reads, tifffile for plain and OME-TIFF.

:func:`open_slide` gives a :class:`Slide`; :class:`GridReader` reads RGB regions
of it on another pixel grid (the model's resolution), from the best pyramid
level, resampling where no level matches.
"""

from __future__ import annotations

import logging
import math
import re
import stat
import threading
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_infer.bounds import MAX_ANISOTROPY, MAX_MPP, MIN_MPP
from wsi_infer.errors import (
    MissingMppError,
    ResolutionError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
)

__all__ = ["GridReader", "Slide", "open_slide", "rgb_on_white"]

logger = logging.getLogger(__name__)

_WHITE = 255
#: Pixels per strip when a large region of level 0 is decoded on several threads.
STRIP_PIXELS = 1 << 20
#: Coarser than this (a 0.5x objective) the metadata's resolution is taken as bogus.
MAX_PLAUSIBLE_MPP = MAX_MPP


class Slide:
    """A slide: its pyramid geometry, resolution and a region reader.

    ``level_dimensions`` are ``(width, height)`` per level, level 0 first;
    ``mpp`` is micrometres per level-0 pixel (along X), or ``None`` when the
    file does not say; ``mpp_y`` the same along Y.  :meth:`read_region` returns ``uint8`` RGB ``(h, w, 3)`` with
    everything outside the slide white.
    """

    backend: str = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.level_dimensions: list[tuple[int, int]] = []
        self.level_downsamples: list[float] = []
        self.mpp: float | None = None
        self.mpp_y: float | None = None
        self.properties: dict[str, str] = {}

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> NDArray[np.uint8]:
        """Read ``w x h`` pixels of ``level`` whose top-left is ``(x, y)`` in level pixels."""
        try:
            return self._read(x, y, level, w, h)
        except SlideReadError:
            raise
        except Exception as exc:  # codec errors come as many types
            raise SlideReadError(
                f"{self.path}: cannot read pixels at level {level} ({x}, {y}, {w}x{h}): {exc}; "
                "the file is probably corrupt or truncated"
            ) from exc

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> NDArray[np.uint8]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rgb_on_white(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """RGB of an RGBA region painted over white (openslide's transparent pixels lie
    outside the slide or its scanned areas).

    Only the pixels that are not opaque are composited: a region is opaque nearly
    everywhere, and compositing every pixel costs more than decoding the JPEG tiles.
    """
    rgb = np.ascontiguousarray(rgba[..., :3])
    clear = rgba[..., 3] < 255
    if clear.any():
        rows, cols = np.nonzero(clear)
        alpha = rgba[rows, cols, 3:4].astype(np.uint16)
        colour = rgb[rows, cols].astype(np.uint16)
        rgb[rows, cols] = ((colour * alpha + _WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)
    return rgb


class OpenSlideSlide(Slide):
    backend = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        super().__init__(path)
        self._osr = openslide.OpenSlide(str(path))
        self.level_dimensions = [tuple(d) for d in self._osr.level_dimensions]  # type: ignore[misc]
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        self.properties = dict(self._osr.properties)
        self.mpp = _positive(self.properties.get("openslide.mpp-x"))
        self.mpp_y = _positive(self.properties.get("openslide.mpp-y"))

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> NDArray[np.uint8]:
        d = self.level_downsamples[level]
        img = self._osr.read_region((round(x * d), round(y * d)), level, (w, h))
        return rgb_on_white(np.asarray(img))

    def close(self) -> None:
        self._osr.close()


def _positive(text: str | None) -> float | None:
    """A positive finite number from metadata text, else None."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value > 0 and math.isfinite(value) else None


def _tiff_mpp(tif: Any, axis: str = "X") -> float | None:
    """Micrometres per pixel along ``axis`` (X or Y) from OME or TIFF resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        m = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', tif.ome_metadata)
        if m:
            value = float(m.group(1))
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(
                unit.group(1) if unit else "µm"
            )
            if factor is not None and value > 0:
                return value * factor
    page = tif.pages[0]
    tags = page.tags
    if f"{axis}Resolution" in tags and "ResolutionUnit" in tags:
        num, den = tags[f"{axis}Resolution"].value
        res_unit = int(tags["ResolutionUnit"].value)
        if num and den:
            per_unit = num / den
            micrometres = {2: 25400.0, 3: 10000.0}.get(res_unit)
            if micrometres and per_unit > 1:
                return micrometres / per_unit
    return None


class TiffSlide(Slide):
    """Plain or OME-TIFF read through tifffile's zarr view (chunked, never whole)."""

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        super().__init__(path)
        self._tif = tifffile.TiffFile(str(path))
        series = self._tif.series[0]
        self._levels = []
        for i, lvl in enumerate(series.levels):
            axes = lvl.axes
            if axes not in ("YXS", "YX"):
                raise UnsupportedSlideError(
                    f"{path}: TIFF series axes {axes!r} are not a 2-D RGB image"
                )
            arr = zarr.open_array(series.aszarr(level=i), mode="r")
            self._levels.append((arr, axes))
            self.level_dimensions.append((int(lvl.shape[1]), int(lvl.shape[0])))
        w0 = self.level_dimensions[0][0]
        self.level_downsamples = [w0 / d[0] for d in self.level_dimensions]
        self.mpp = _tiff_mpp(self._tif, "X")
        self.mpp_y = _tiff_mpp(self._tif, "Y")
        self._lock = threading.Lock()

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> NDArray[np.uint8]:
        arr, axes = self._levels[level]
        W, H = self.level_dimensions[level]
        out = np.full((h, w, 3), _WHITE, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            with self._lock:
                block = np.asarray(arr[y0:y1, x0:x1])
            if axes == "YX":
                block = np.repeat(block[..., None], 3, axis=2)
            if block.dtype != np.uint8:
                block = np.clip(block, 0, 255).astype(np.uint8)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = block[..., :3]
        return out

    def close(self) -> None:
        self._tif.close()


def open_slide(path: str | Path) -> Slide:
    """Open a slide with openslide, or tifffile for TIFFs openslide refuses.

    Raises :class:`SlideNotFoundError` or :class:`UnsupportedSlideError` with
    a one-line message naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise SlideNotFoundError(f"{path}: is a directory, not a slide file")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # a pipe or device would block or never end
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket"
        raise UnsupportedSlideError(f"{path}: is {kind}, not a regular file; give the slide file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise SlideReadError(f"{path}: cannot open for reading ({exc.strerror or exc})") from exc
    import openslide

    slide: Slide
    try:
        slide = OpenSlideSlide(path)
    except openslide.OpenSlideError as exc:
        first_error = str(exc) or type(exc).__name__
        try:
            slide = TiffSlide(path)
        except UnsupportedSlideError:
            raise
        except Exception as exc2:
            raise UnsupportedSlideError(
                f"{path}: not a slide openslide or tifffile can read "
                f"(openslide: {first_error}; tifffile: {exc2}); is it truncated or corrupt?"
            ) from exc2
    # Decode a few pixels of the smallest level now, so a corrupt file fails here, by name.
    level = len(slide.level_dimensions) - 1
    w, h = slide.level_dimensions[level]
    try:
        slide.read_region(0, 0, level, min(w, 16), min(h, 16))
    except SlideReadError:
        slide.close()
        raise
    return slide


class GridReader:
    """Reads RGB regions of a slide on a pixel grid ``scale`` level-0 pixels wide.

    ``scale`` = (grid mpp) / (slide mpp); ``scale == 1`` reads level 0 as is.
    The grid's shape is the slide's level-0 shape divided by ``scale``,
    rounded.  Regions come from the coarsest level still at least as fine as
    the grid, resampled bilinearly (box filter when shrinking) where needed.
    """

    def __init__(self, slide: Slide, scale: float) -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.slide = slide
        self.scale = scale
        w0, h0 = slide.dimensions
        self.width = max(1, round(w0 / scale))
        self.height = max(1, round(h0 / scale))
        tol = 1e-3
        candidates = [i for i, d in enumerate(slide.level_downsamples) if d <= scale * (1 + tol)]
        self.level = max(candidates, key=lambda i: slide.level_downsamples[i]) if candidates else 0
        # grid pixel -> level pixel
        self.factor = scale / slide.level_downsamples[self.level]
        self.exact = abs(self.factor - 1.0) < tol

    def read(
        self, x: int, y: int, w: int, h: int, pool: Executor | None = None
    ) -> NDArray[np.uint8]:
        """RGB ``(h, w, 3)`` of grid pixels ``[x, x + w) x [y, y + h)``; white outside the slide.

        With a thread ``pool``, a large region of level 0 is decoded in strips side by
        side (the same pixels: level 0 is read as stored, without resampling).
        """
        if self.exact:
            return self._read_level(x, y, w, h, pool)
        from PIL import Image

        f = self.factor
        lx0, ly0 = x * f, y * f
        lx1, ly1 = (x + w) * f, (y + h) * f
        ix0, iy0 = math.floor(lx0) - 1, math.floor(ly0) - 1
        ix1, iy1 = math.ceil(lx1) + 1, math.ceil(ly1) + 1
        src = self._read_level(ix0, iy0, ix1 - ix0, iy1 - iy0, pool)
        img = Image.fromarray(src)
        box = (lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0)
        resample = Image.Resampling.BILINEAR if f < 1 else Image.Resampling.BOX
        return np.asarray(img.resize((w, h), resample=resample, box=box))

    def _read_level(
        self, x: int, y: int, w: int, h: int, pool: Executor | None
    ) -> NDArray[np.uint8]:
        """Pixels of this reader's level; from level 0, in strips on ``pool`` if given."""
        rows = -(-STRIP_PIXELS // max(w, 1))
        if pool is None or self.level != 0 or h <= rows:
            return self.slide.read_region(x, y, self.level, w, h)
        starts = range(y, y + h, rows)
        strips = pool.map(
            lambda s: self.slide.read_region(x, s, 0, w, min(rows, y + h - s)), starts
        )
        return np.concatenate(list(strips))


def resolve_mpp(slide: Slide, mpp: float | None) -> float:
    """The slide's mpp: ``mpp`` if given, else its metadata, else a one-line error.

    Either must lie in ``MIN_MPP..MAX_MPP`` (:mod:`wsi_infer.bounds`); the
    metadata's X and Y resolutions must agree (``mpp`` overrides both).
    """
    if mpp is not None:
        if not (MIN_MPP <= mpp <= MAX_MPP):  # also refuses NaN
            raise ResolutionError(
                f"{slide.path}: --mpp {mpp:g} µm/px is no microscope's (outside "
                f"{MIN_MPP:g}..{MAX_MPP:g}); give the slide's real resolution "
                "(e.g. 0.25 for 40x, 0.5 for 20x)"
            )
        return float(mpp)
    if slide.mpp is None:
        raise MissingMppError(
            f"{slide.path}: the slide's metadata gives no resolution; pass --mpp "
            "(micrometres per pixel, e.g. --mpp 0.25 for 40x, 0.5 for 20x)"
        )
    if slide.mpp > MAX_MPP:
        raise MissingMppError(
            f"{slide.path}: the metadata's resolution, {slide.mpp:.4g} µm/px, is no microscope's "
            "(a TIFF writer's default dpi?); pass --mpp with the real one"
        )
    if slide.mpp < MIN_MPP:
        raise MissingMppError(
            f"{slide.path}: the metadata's resolution, {slide.mpp:.4g} µm/px, is finer than any "
            f"light microscope's ({MIN_MPP:g}); pass --mpp with the real one"
        )
    if slide.mpp_y is not None and abs(slide.mpp_y - slide.mpp) > MAX_ANISOTROPY * slide.mpp:
        raise ResolutionError(
            f"{slide.path}: X and Y resolutions differ ({slide.mpp:.4g} vs {slide.mpp_y:.4g} "
            "µm/px); non-square pixels are not supported: resample the slide to square pixels, or pass "
            "--mpp if the metadata is wrong"
        )
    return slide.mpp
