"""Realistic synthetic whole-slide images for benchmarks: large, pyramidal, tiled JPEG TIFFs.

A slide is glass (near-white with a faint noise) holding a few blob-shaped tissue
sections (``--tissue-fraction`` of its area, 30-50 % by default) whose texture is a
mosaic of real H&E patches at 40x (CoNSeP, MoNuSeg): 256 px patches laid on a 224 px
grid, feathered into each other over 32 px, randomly flipped and rotated.  Each
region draws its patches from one source image, so stain stays consistent within
it, as on a real slide.

The file is what scanners write and openslide reads as a generic tiled TIFF:
256 px JPEG tiles (quality 85), the resolution in the TIFF resolution tags
(``openslide.mpp-x``), and downsampled levels (4x by default, Aperio-like) as
further pages.  Everything is produced strip by strip (256 rows) and streamed to
tifffile as an iterator of tiles: memory depends on the slide's width, never its
area; the reduced levels are accumulated in a temporary memory-mapped file beside
the output.

``python -m wsi_infer.benchmarks.make_slide OUT.tif --size 20000 --seed 0``
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
from numpy.typing import NDArray

from wsi_infer.cli.options import PATH, entry_point, path_option
from wsi_infer.errors import one_line_error
from wsi_infer.files import atomic_write

__all__ = [
    "DEFAULT_NUCLEI_DIR",
    "PatchBank",
    "SlideInfo",
    "SlideSpec",
    "level_shapes",
    "load_patch_bank",
    "main",
    "make_slide",
    "make_slide_command",
    "read_sidecar",
]

logger = logging.getLogger(__name__)

#: TIFF tile edge, and the height of the strips the slide is produced in.
TILE = 256
#: Texture patches: edge, feathered overlap with their neighbours, and grid step.
PATCH = 256
FEATHER = 32
CELL = PATCH - FEATHER
#: The tissue layout is drawn on a field at most this many pixels on its long side.
FIELD_MAX = 1024
GLASS_RGB = (242.0, 241.0, 239.0)
#: The project's labelled nuclei (real H&E at 40x), beside the repository.
DEFAULT_NUCLEI_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "nuclei"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}

#: Feathering weights along one axis of a patch: neighbours' weights sum to 1.
_RAMP = (
    np.clip((np.arange(PATCH) + 0.5) / FEATHER, 0.0, 1.0)
    * np.clip((PATCH - np.arange(PATCH) - 0.5) / FEATHER, 0.0, 1.0)
).astype(np.float32)


@dataclass(frozen=True)
class SlideSpec:
    """What to generate. ``tissue_fraction=None`` draws one in 0.3..0.5 from the seed."""

    width: int
    height: int
    mpp: float = 0.25
    seed: int = 0
    tissue_fraction: float | None = None
    quality: int = 85
    downsample: int = 4

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"slide size must be positive, got {self.width} x {self.height}")
        if not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")
        if self.tissue_fraction is not None and not 0.0 < self.tissue_fraction < 1.0:
            raise ValueError(f"tissue fraction must lie in (0, 1), got {self.tissue_fraction}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must lie in 1..100, got {self.quality}")
        if self.downsample not in (2, 4):
            raise ValueError(f"downsample must be 2 or 4, got {self.downsample}")


@dataclass
class SlideInfo:
    """What was written (also stored as JSON beside the slide, ``OUT.tif.json``)."""

    path: str
    spec: dict[str, Any]
    level_dimensions: list[list[int]]
    tissue_fraction: float
    tissue_area_mm2: float
    file_bytes: int
    seconds: float
    patches: int
    patch_groups: int


@dataclass(frozen=True)
class PatchBank:
    """Real H&E patches ``(n, 256, 256, 3)`` and, per source image, the indices of its patches."""

    patches: NDArray[np.uint8]
    groups: tuple[NDArray[np.intp], ...]


def _crops(img: NDArray[np.uint8]) -> list[NDArray[np.uint8]]:
    """256 px crops covering ``img`` (one when it is 256 px already)."""
    h, w = img.shape[:2]
    ys = np.linspace(0, h - PATCH, max(1, math.ceil(h / PATCH))).round().astype(int)
    xs = np.linspace(0, w - PATCH, max(1, math.ceil(w / PATCH))).round().astype(int)
    return [img[y : y + PATCH, x : x + PATCH] for y in ys for x in xs]


def load_patch_bank(
    root: Path = DEFAULT_NUCLEI_DIR, *, max_groups: int | None = None, seed: int = 0
) -> PatchBank:
    """Load every ``*/*/images/*`` under ``root`` as 256 px patches grouped by source image.

    256 px patches named ``NAME_NNN`` belong to source image ``NAME``; larger images
    are cropped into 256 px patches of one group.  ``max_groups`` keeps that many
    groups, drawn with ``seed`` (for quick tests).
    """
    from PIL import Image

    files = sorted(
        f
        for folder in sorted(root.glob("*/*/images"))
        for f in folder.iterdir()
        if f.suffix.lower() in _IMAGE_SUFFIXES
    )
    if not files:
        raise FileNotFoundError(f"{root}: no H&E patches under */*/images/")
    by_group: dict[str, list[Path]] = {}
    for f in files:
        source = re.sub(r"_\d+$", "", f.stem)
        key = f"{f.parent.parent}/{source}"
        by_group.setdefault(key, []).append(f)
    keys = sorted(by_group)
    if max_groups is not None and max_groups < len(keys):
        rng = np.random.default_rng(seed)
        keys = sorted(rng.choice(keys, size=max_groups, replace=False).tolist())
    patches: list[NDArray[np.uint8]] = []
    groups: list[NDArray[np.intp]] = []
    for key in keys:
        start = len(patches)
        for f in by_group[key]:
            with Image.open(f) as im:
                img = np.asarray(im.convert("RGB"))
            if min(img.shape[:2]) < PATCH:
                continue
            patches.extend(_crops(img))
        if len(patches) > start:
            groups.append(np.arange(start, len(patches), dtype=np.intp))
    if not patches:
        raise FileNotFoundError(f"{root}: no patch of at least {PATCH} x {PATCH} px")
    logger.info("patch bank: %d patches from %d source images", len(patches), len(groups))
    return PatchBank(np.stack(patches), tuple(groups))


def level_shapes(width: int, height: int, downsample: int = 4) -> list[tuple[int, int]]:
    """``(width, height)`` of each pyramid level: level k is ``downsample**k`` smaller,
    down to the last whose long side still fills a tile."""
    shapes = [(width, height)]
    k = 1
    while True:
        f = downsample**k
        wk, hk = math.ceil(width / f), math.ceil(height / f)
        if max(wk, hk) < TILE:
            return shapes
        shapes.append((wk, hk))
        k += 1


def _unit_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> NDArray[Any]:
    from scipy import ndimage as ndi

    n = ndi.gaussian_filter(rng.standard_normal(shape), max(sigma, 0.5), mode="reflect")
    return (n - n.mean()) / (n.std() + 1e-12)


@dataclass(frozen=True)
class _Layout:
    """The tissue layout: a smooth field on a coarse grid; tissue where ``field > threshold``."""

    field: NDArray[np.float32]  # (fh, fw), padded on the bottom/right with its edge values
    threshold: float
    soft: float  # field units over which tissue fades into glass
    step: int  # slide pixels per field pixel
    seeds: NDArray[np.float64]  # (s, 2) region seeds, slide pixels (y, x)
    seed_groups: NDArray[np.intp]  # patch group of each seed's region
    hot: NDArray[np.bool_]  # field pixels near tissue (texture needed there)


def _layout(spec: SlideSpec, fraction: float, n_groups: int, rng: np.random.Generator) -> _Layout:
    from scipy import ndimage as ndi

    step = max(1, math.ceil(max(spec.width, spec.height) / FIELD_MAX))
    fh, fw = math.ceil(spec.height / step), math.ceil(spec.width / step)
    side = min(fh, fw)
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float64)
    yy, xx = (yy + 0.5) / side, (xx + 0.5) / side  # units of the short side
    field = np.zeros((fh, fw))
    n_blobs = int(rng.integers(3, 8))
    for _ in range(n_blobs):
        cy = rng.uniform(0.2, 0.8) * fh / side
        cx = rng.uniform(0.2, 0.8) * fw / side
        ra = rng.uniform(0.1, 0.28)
        rb = ra * rng.uniform(0.35, 1.0)
        th = rng.uniform(0.0, math.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * math.cos(th) + dy * math.sin(th)) / ra
        v = (-dx * math.sin(th) + dy * math.cos(th)) / rb
        field += rng.uniform(0.7, 1.0) * np.exp(-0.5 * (u * u + v * v))
    field += 0.3 * _unit_noise((fh, fw), 0.05 * side, rng)
    field += 0.1 * _unit_noise((fh, fw), 0.012 * side, rng)
    # Sections keep clear of the slide's edges.
    ty, tx = (np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw
    taper = np.minimum.outer(np.minimum(ty, 1 - ty), np.minimum(tx, 1 - tx))
    field = field * np.clip(taper / 0.08, 0.0, 1.0) - (taper < 0.02)
    threshold = float(np.quantile(field, 1.0 - fraction))
    soft = 0.02 * float(field.std())
    hot = ndi.maximum_filter(field, size=3) > threshold - soft
    pad = TILE // step + 2
    field = np.pad(field, ((0, pad), (0, pad)), mode="edge")
    hot = np.pad(hot, ((0, pad), (0, pad)), mode="edge")
    n_seeds = max(4, 3 * n_blobs)
    seeds = rng.uniform(0, 1, (n_seeds, 2)) * (spec.height, spec.width)
    seed_groups = rng.integers(0, n_groups, n_seeds).astype(np.intp)
    return _Layout(field.astype(np.float32), threshold, soft, step, seeds, seed_groups, hot)


def _glass_bank(rng: np.random.Generator, n: int = 8) -> NDArray[np.uint8]:
    base = np.asarray(GLASS_RGB) + rng.normal(0.0, 1.5, 3)
    lum = rng.normal(0.0, 1.6, (n, TILE, TILE, 1))
    chroma = rng.normal(0.0, 0.6, (n, TILE, TILE, 3))
    return np.clip(np.rint(base + lum + chroma), 0, 255).astype(np.uint8)


def _orient(patch: NDArray[np.uint8], code: int) -> NDArray[np.uint8]:
    """One of the 8 flips/rotations of a square patch."""
    out = np.rot90(patch, code & 3)
    return out[:, ::-1] if code & 4 else out


def _box_down(a: NDArray[np.uint8], f: int) -> NDArray[np.uint8]:
    """Mean of ``f x f`` blocks; ``a``'s height and width are padded (edge) to multiples of f."""
    h, w = a.shape[:2]
    ph, pw = -h % f, -w % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="edge")
        h, w = h + ph, w + pw
    s = a.reshape(h // f, f, w // f, f, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((s + f * f // 2) // (f * f)).astype(np.uint8)


class _Level0:
    """Produces level 0 strip by strip (``TILE`` rows, full width, padded to whole tiles)."""

    def __init__(self, spec: SlideSpec, bank: PatchBank, fraction: float) -> None:
        from PIL import Image

        self.spec = spec
        self.bank = bank
        rng = np.random.default_rng([spec.seed, 0])
        self.layout = _layout(spec, fraction, len(bank.groups), rng)
        self.glass = _glass_bank(rng)
        self.wp = math.ceil(spec.width / TILE) * TILE
        self.hp = math.ceil(spec.height / TILE) * TILE
        self._field_img = Image.fromarray(self.layout.field, mode="F")
        self._rows: dict[int, NDArray[np.uint8]] = {}
        self.tissue_pixels = 0

    def alpha(self, y0: int) -> NDArray[np.float32]:
        """Tissue opacity (0 glass .. 1 tissue) of strip rows ``[y0, y0 + TILE)``."""
        from PIL import Image

        s = self.layout.step
        box = (0.0, y0 / s, self.wp / s, (y0 + TILE) / s)
        f = np.asarray(
            self._field_img.resize((self.wp, TILE), Image.Resampling.BILINEAR, box=box),
            dtype=np.float32,
        )
        lay = self.layout
        return np.clip(0.5 + (f - lay.threshold) / lay.soft, 0.0, 1.0)

    def _cells_needed(self, k: int, n_cells: int) -> NDArray[np.bool_]:
        s, hot = self.layout.step, self.layout.hot
        r0 = max(0, (CELL * k - FEATHER) // s)
        r1 = max(r0 + 1, math.ceil((CELL * k - FEATHER + PATCH) / s))
        band: NDArray[np.bool_] = np.asarray(hot[r0:r1].any(axis=0))
        out = np.zeros(n_cells, bool)
        for j in range(n_cells):
            c0 = max(0, (CELL * j - FEATHER) // s)
            c1 = max(c0 + 1, math.ceil((CELL * j - FEATHER + PATCH) / s))
            out[j] = band[c0:c1].any()
        return out

    def _row_image(self, k: int) -> NDArray[np.uint8]:
        """Cell row ``k`` (slide rows ``[CELL*k - FEATHER, CELL*k - FEATHER + PATCH)``),
        patches feathered into each other along x."""
        if k in self._rows:
            return self._rows[k]
        wp = self.wp
        n_cells = wp // CELL + 2
        rng = np.random.default_rng([self.spec.seed, 1, k])
        picks = rng.random(n_cells)
        codes = rng.integers(0, 8, n_cells)
        needed = self._cells_needed(k, n_cells)
        cy = CELL * k - FEATHER + PATCH / 2
        cx = CELL * np.arange(n_cells) - FEATHER + PATCH / 2
        seeds = self.layout.seeds
        d2 = (seeds[:, 0:1] - cy) ** 2 + (seeds[:, 1:2] - cx[None, :]) ** 2
        groups = self.layout.seed_groups[d2.argmin(axis=0)]
        acc = np.zeros((PATCH, wp, 3), np.float32)
        for j in np.flatnonzero(needed):
            members = self.bank.groups[int(groups[j])]
            patch = _orient(self.bank.patches[members[int(picks[j] * len(members))]], int(codes[j]))
            gx0 = CELL * int(j) - FEATHER
            lx0, lx1 = max(0, -gx0), PATCH - max(0, gx0 + PATCH - wp)
            if lx1 > lx0:
                acc[:, gx0 + lx0 : gx0 + lx1] += patch[:, lx0:lx1] * _RAMP[lx0:lx1, None]
        row = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
        self._rows[k] = row
        return row

    def texture(self, y0: int) -> NDArray[np.float32]:
        """H&E texture of strip rows ``[y0, y0 + TILE)`` (float, 0..255)."""
        y1 = y0 + TILE
        for k in [k for k in self._rows if CELL * k - FEATHER + PATCH <= y0]:
            del self._rows[k]  # above this strip: never needed again
        out = np.zeros((TILE, self.wp, 3), np.float32)
        k0 = max(0, (y0 + FEATHER - PATCH) // CELL)
        for k in range(k0, (y1 + FEATHER) // CELL + 1):
            top = CELL * k - FEATHER
            a, b = max(y0, top), min(y1, top + PATCH)
            if b <= a:
                continue
            w = _RAMP[a - top : b - top, None, None]
            out[a - y0 : b - y0] += w * self._row_image(k)[a - top : b - top]
        return out

    def strip(self, index: int) -> NDArray[np.uint8]:
        y0 = index * TILE
        n_tiles = self.wp // TILE
        rng = np.random.default_rng([self.spec.seed, 2, index])
        glass = self.glass[rng.integers(0, len(self.glass), n_tiles)]
        glass = glass.transpose(1, 0, 2, 3).reshape(TILE, self.wp, 3)
        alpha = self.alpha(y0)
        rows = max(0, min(TILE, self.spec.height - y0))
        self.tissue_pixels += int(np.count_nonzero(alpha[:rows, : self.spec.width] > 0.5))
        if not alpha.any():
            return np.ascontiguousarray(glass)
        tex = self.texture(y0)
        g = glass.astype(np.float32)
        out = g + alpha[..., None] * (tex - g)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def tiles(self, level1: NDArray[np.uint8] | None, factor: int) -> Iterator[NDArray[np.uint8]]:
        """Level-0 tiles in TIFF order; each strip also goes, ``factor``x smaller, into ``level1``."""
        n_strips = self.hp // TILE
        for i in range(n_strips):
            s = self.strip(i)
            if level1 is not None:
                small = _box_down(s, factor)
                r0 = i * TILE // factor
                r1 = min(r0 + small.shape[0], level1.shape[0])
                c1 = min(small.shape[1], level1.shape[1])
                if r1 > r0:
                    level1[r0:r1, :] = small[: r1 - r0, :c1]
            for x in range(0, self.spec.width, TILE):
                yield s[:, x : x + TILE]
            if i % 16 == 15:
                logger.debug("strip %d/%d", i + 1, n_strips)


def _array_tiles(arr: NDArray[np.uint8], fill: int = 242) -> Iterator[NDArray[np.uint8]]:
    h, w = arr.shape[:2]
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            block = arr[y : y + TILE, x : x + TILE]
            if block.shape[:2] == (TILE, TILE):
                yield np.ascontiguousarray(block)
            else:
                t = np.full((TILE, TILE, 3), fill, np.uint8)
                t[: block.shape[0], : block.shape[1]] = block
                yield t


def _downsample_into(src: NDArray[np.uint8], dst: NDArray[np.uint8], f: int) -> None:
    rows = TILE * f
    for y in range(0, src.shape[0], rows):
        small = _box_down(np.asarray(src[y : y + rows]), f)
        r0 = y // f
        r1 = min(r0 + small.shape[0], dst.shape[0])
        dst[r0:r1] = small[: r1 - r0, : dst.shape[1]]


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_sidecar(path: Path) -> SlideInfo | None:
    """The :class:`SlideInfo` written beside ``path``, or ``None``."""
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        return None
    try:
        return SlideInfo(**json.loads(side.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def make_slide(
    out: str | Path,
    spec: SlideSpec,
    bank: PatchBank | None = None,
    *,
    nuclei_dir: Path = DEFAULT_NUCLEI_DIR,
) -> SlideInfo:
    """Write the slide ``spec`` to ``out`` (atomically) and its :class:`SlideInfo` beside it."""
    import tifffile

    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if bank is None:
        bank = load_patch_bank(nuclei_dir)
    rng = np.random.default_rng([spec.seed, 3])
    fraction = spec.tissue_fraction
    if fraction is None:
        fraction = float(rng.uniform(0.3, 0.5))
    shapes = level_shapes(spec.width, spec.height, spec.downsample)
    level0 = _Level0(spec, bank, fraction)
    f = spec.downsample
    # JPEG stores well under a byte per pixel; BigTIFF where 4 GB might not suffice.
    bigtiff = spec.width * spec.height > 2**31
    description = (
        f"wsi-infer synthetic slide {spec.width}x{spec.height} mpp={spec.mpp} seed={spec.seed}"
    )

    def options(level: int) -> dict[str, Any]:
        res = 1e4 / (spec.mpp * f**level)
        return {
            "dtype": np.uint8,
            "tile": (TILE, TILE),
            "photometric": "rgb",
            "compression": "jpeg",
            "compressionargs": {"level": spec.quality},
            "resolution": (res, res),
            "resolutionunit": "CENTIMETER",
            "subfiletype": 0 if level == 0 else 1,
            "metadata": None,
        }

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".make_slide-") as tmp:
        levels: list[NDArray[np.uint8]] = []
        for k, (wk, hk) in enumerate(shapes[1:], start=1):
            levels.append(
                np.lib.format.open_memmap(
                    Path(tmp) / f"level{k}.npy", mode="w+", dtype=np.uint8, shape=(hk, wk, 3)
                )
            )
        with atomic_write(out) as partial, tifffile.TiffWriter(partial, bigtiff=bigtiff) as tif:
            tif.write(
                level0.tiles(levels[0] if levels else None, f),
                shape=(spec.height, spec.width, 3),
                description=description,
                **options(0),
            )
            for k, arr in enumerate(levels, start=1):
                if k > 1:
                    _downsample_into(levels[k - 2], arr, f)
                tif.write(_array_tiles(arr), shape=arr.shape, **options(k))
        del levels
    area = spec.width * spec.height
    info = SlideInfo(
        path=str(out),
        spec=asdict(spec),
        level_dimensions=[list(s) for s in shapes],
        tissue_fraction=level0.tissue_pixels / area,
        tissue_area_mm2=level0.tissue_pixels * (spec.mpp * 1e-3) ** 2,
        file_bytes=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        patches=len(bank.patches),
        patch_groups=len(bank.groups),
    )
    sidecar_path(out).write_text(json.dumps(asdict(info), indent=2) + "\n")
    logger.info(
        "%s: %d x %d, %d levels, tissue %.1f %%, %.1f MB in %.1f s",
        out,
        spec.width,
        spec.height,
        len(shapes),
        100 * info.tissue_fraction,
        info.file_bytes / 1e6,
        info.seconds,
    )
    return info


def parse_size(text: str) -> tuple[int, int]:
    """``"20000"`` or ``"20000x15000"`` (width x height) as ``(width, height)``."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise ValueError(f"size must be N or WxH, got {text!r}")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) else w
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return w, h


class _Size(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """``N`` or ``WxH`` pixels (:func:`parse_size`)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command(
    "python -m wsi_infer.benchmarks.make_slide",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("out", type=PATH)
@click.option(
    "--size",
    type=_Size(),
    default="20000",
    show_default=True,
    metavar="N|WxH",
    help="N or WxH pixels",
)
@click.option("--mpp", type=float, default=0.25, help="micrometres per pixel (0.25)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tissue-fraction", type=float, default=None, help="default: drawn in 0.3..0.5")
@click.option("--quality", type=int, default=85, help="JPEG quality (85)")
@click.option("--downsample", type=click.Choice(["2", "4"]), default="4", help="level step (4)")
@path_option("--nuclei-dir", default=DEFAULT_NUCLEI_DIR, help="H&E patches")
@click.option("-v", "--verbose", is_flag=True, help="log the steps")
def make_slide_command(**options: Any) -> int:
    """Write a realistic synthetic H&E whole-slide image (pyramidal JPEG TIFF).

    OUT: output .tif
    """
    args = SimpleNamespace(**options)
    args.downsample = int(args.downsample)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.verbose:
        logging.getLogger(__name__).setLevel(logging.DEBUG)
    w, h = args.size
    try:
        spec = SlideSpec(
            width=w,
            height=h,
            mpp=args.mpp,
            seed=args.seed,
            tissue_fraction=args.tissue_fraction,
            quality=args.quality,
            downsample=args.downsample,
        )
        info = make_slide(args.out, spec, nuclei_dir=args.nuclei_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(one_line_error("make_slide", exc), file=sys.stderr)
        return 1
    print(
        f"{info.path}: {w} x {h} px at {args.mpp} mpp, levels "
        f"{[tuple(d) for d in info.level_dimensions]}, tissue {100 * info.tissue_fraction:.1f} % "
        f"({info.tissue_area_mm2:.1f} mm²), {info.file_bytes / 1e6:.1f} MB, {info.seconds:.1f} s"
    )
    return 0


main = entry_point(make_slide_command, "python -m wsi_infer.benchmarks.make_slide")


if __name__ == "__main__":
    sys.exit(main())
