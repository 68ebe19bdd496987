"""The test data of a clone: files in tests/data and slides written here with tifffile.

:func:`build_data_dir` lays them out as the optional shared data folder is laid out
(``slides/``, ``edge/``, ``bad/``, ``nuclei/``), so a test names a file the same way in both.
The unusual and broken files are written, not copied: each reproduces what openslide says
of the corresponding file in the shared folder (see tests/data/README.md).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
#: Real data kept in the repository (sources and licences in its README.md).
DATA = REPO / "tests" / "data"
#: The sample slide bundled with the package (real H&E, CC0).
CMU_SLIDE = REPO / "wsi_infer" / "data" / "CMU-1-Small-Region.svs"
#: The OME-TIFF TMA core that openslide refuses and tifffile reads.
TMA_SLIDE = DATA / "slides" / "he-tma-core-0.5mpp.ome.tif"
#: 64 CoNSeP test patches (four source images) with their labels.
CONSEP = DATA / "nuclei" / "consep" / "test"

#: An Aperio description as the scanner writes it: openslide reads the vendor and mpp from it.
APERIO_DESCRIPTION = (
    "Aperio Image Library v10.0.51\r\n16x16 [0,0 16x16] (64x64) JPEG/RGB Q=30"
    "|AppMag = 20|MPP = 0.4990"
)


def write_small_svs(path: Path) -> Path:
    """An Aperio SVS of 16 x 16 pixels (smaller than any tile), 0.499 µm/px."""
    import tifffile

    image = np.full((16, 16, 3), 230, np.uint8)
    image[4:12, 4:12] = (120, 60, 160)
    tifffile.imwrite(
        path,
        image,
        tile=(64, 64),
        compression="jpeg",
        photometric="rgb",
        description=APERIO_DESCRIPTION,
        metadata=None,
    )
    return path


def write_unreadable_svs(path: Path) -> Path:
    """The small SVS with its JPEG start-of-scan marker made a table marker: openslide
    opens it and fails reading a region ("Bogus marker length")."""
    import tifffile

    write_small_svs(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        start, size = page.dataoffsets[0], page.databytecounts[0]  # type: ignore[union-attr]
    data = bytearray(path.read_bytes())
    sos = data.index(b"\xff\xda", start, start + size)
    data[sos + 1] = 0xDB
    path.write_bytes(bytes(data))
    return path


def write_unopenable_tiff(path: Path) -> Path:
    """A tiled TIFF whose compression tag names no codec (52479): openslide refuses to open it."""
    import tifffile

    image = np.full((16, 16, 3), 200, np.uint8)
    tifffile.imwrite(
        path, image, tile=(16, 16), compression="zlib", photometric="rgb", metadata=None
    )
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset  # type: ignore[union-attr]
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = struct.pack("<H", 52479)
    path.write_bytes(bytes(data))
    return path


def write_not_a_tiff(path: Path) -> Path:
    """Text with a slide's suffix."""
    path.write_bytes(b"IJrEr1vVVJCwCYMt" * 60)
    return path


def write_boxes_tiff(path: Path) -> Path:
    """A generic tiled TIFF pyramid, 4 levels from 300 x 250, coloured boxes (no tissue),
    at a writer's default 72 dpi (352.8 µm/px: no microscope)."""
    import tifffile

    image = np.full((250, 300, 3), 255, np.uint8)
    image[20:120, 30:150] = (220, 40, 40)
    image[130:230, 160:280] = (40, 40, 220)
    with tifffile.TiffWriter(path) as tif:
        level = image
        for k in range(4):
            tif.write(
                level,
                tile=(64, 64),
                compression="zlib",
                photometric="rgb",
                subfiletype=0 if k == 0 else 1,
                resolution=(72, 72),
                resolutionunit="INCH",
                metadata=None,
            )
            level = level[::2, ::2]
    return path


def cmu_region(x: int, y: int, width: int, height: int) -> NDArray[np.uint8]:
    """RGB pixels of the bundled CMU-1-Small-Region slide (level 0, 0.499 µm/px)."""
    import openslide

    with openslide.OpenSlide(str(CMU_SLIDE)) as osr:
        region = osr.read_region((x, y), 0, (width, height)).convert("RGB")
    return np.ascontiguousarray(np.asarray(region))


def write_no_mpp_pyramid(path: Path) -> Path:
    """Real H&E (a region of the CMU slide), 2 levels from 1000 x 760, without any
    resolution in its metadata: a run needs ``--mpp``."""
    import tifffile

    image = cmu_region(600, 1000, 1000, 760)
    with tifffile.TiffWriter(path) as tif:
        level = image
        for k in range(2):
            tif.write(
                np.ascontiguousarray(level),
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                subfiletype=0 if k == 0 else 1,
                metadata=None,
            )
            level = level[::2, ::2]
    return path


def build_data_dir(root: Path) -> Path:
    """The test data laid out as the shared data folder: the repository's files linked, the
    unusual and broken ones written.  Returns ``root``."""
    for sub in ("slides", "edge", "bad", "nuclei"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "slides" / CMU_SLIDE.name).symlink_to(CMU_SLIDE)
    (root / "slides" / TMA_SLIDE.name).symlink_to(TMA_SLIDE)
    write_no_mpp_pyramid(root / "slides" / "no-mpp.tif")
    write_small_svs(root / "edge" / "small.svs")
    write_boxes_tiff(root / "edge" / "boxes.tiff")
    write_unreadable_svs(root / "bad" / "unreadable.svs")
    write_unopenable_tiff(root / "bad" / "unopenable.tiff")
    write_not_a_tiff(root / "bad" / "not-a-tiff.svs")
    (root / "nuclei" / "consep").mkdir()
    (root / "nuclei" / "consep" / "test").symlink_to(CONSEP, target_is_directory=True)
    return root


def write_pannuke_fold(
    source: Path, out: Path, *, fold: int, limit: int = 0, tissue: str = "Colon"
) -> Path:
    """Patches of a folder (``images/*.jpg`` and ``labels.npz``) in PanNuke's own on-disk
    layout: ``Fold N/images/foldN/images.npy`` float64 (N, 256, 256, 3), ``types.npy`` the
    tissue names, ``Fold N/masks/foldN/masks.npy`` float64 (N, 256, 256, 6) with instance ids
    of the five classes (restarting at 1 in every channel) and background in channel 5."""
    from PIL import Image

    labels = np.load(source / "labels.npz")
    names = labels["names"][: limit or None]
    n = len(names)
    images = np.zeros((n, 256, 256, 3), np.float64)
    masks = np.zeros((n, 256, 256, 6), np.float64)
    for k, name in enumerate(names):
        images[k] = np.asarray(Image.open(source / "images" / f"{name}.jpg").convert("RGB"))
        inst, types = labels["inst"][k], labels["types"][k]  # types: PanNuke class + 1
        for c in range(5):
            ids = np.unique(inst[(types == c + 1) & (inst > 0)])
            for new_id, old_id in enumerate(ids, start=1):
                masks[k, ..., c][inst == old_id] = new_id
        masks[k, ..., 5] = (inst == 0).astype(np.float64)
    img_dir = out / f"Fold {fold}" / "images" / f"fold{fold}"
    mask_dir = out / f"Fold {fold}" / "masks" / f"fold{fold}"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    np.save(img_dir / "images.npy", images)
    np.save(img_dir / "types.npy", np.array([tissue] * n))
    np.save(mask_dir / "masks.npy", masks)
    return out
