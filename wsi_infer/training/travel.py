"""Copy training folders compactly, for a machine the data has to travel to.

A device call carries 64 MiB in all (code, wheels and data).  PNG and TIFF images are
re-encoded as JPEG (quality 92, 4:2:0 chroma, as slide scanners store their tiles; about a
fifth of the size); JPEG images and ``labels.npz`` are copied unchanged, so names, masks,
types and ``mpp`` stay exactly those of the source.  A folder keeps its name, and a split
folder (:attr:`FolderSource.SPLITS <wsi_infer.training.data.FolderSource.SPLITS>`) its
parent's too (``consep/train`` stays ``consep/train``): that is what names its tissue.

    python -m wsi_infer.training.travel DATA/nuclei/consep/train DATA/nuclei/tnbc --out .gpu-data
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import click

from wsi_infer.cli.options import entry_point

__all__ = ["pack_folder", "travel_command"]

logger = logging.getLogger(__name__)

#: JPEG settings for re-encoded PNGs (subsampling 2: 4:2:0).
JPEG_QUALITY = 92
JPEG_SUBSAMPLING = 2


def _destination(src: Path, out: Path) -> Path:
    from wsi_infer.training.data import FolderSource

    parts = src.resolve().parts
    if parts[-1].lower() in FolderSource.SPLITS:
        return out / parts[-2] / parts[-1]
    return out / parts[-1]


def pack_folder(src: Path, out: Path) -> Path:
    """Copy one ``images/`` + ``labels.npz`` folder under ``out``; return where it went."""
    from PIL import Image

    from wsi_infer.training.data import FolderSource

    if not (src / "labels.npz").is_file() or not (src / "images").is_dir():
        raise click.ClickException(f"{src}: not a training folder (images/ and labels.npz)")
    dest = _destination(src, out)
    if dest.exists():
        raise click.ClickException(f"{dest}: exists; remove it or choose another --out")
    (dest / "images").mkdir(parents=True)
    shutil.copy2(src / "labels.npz", dest / "labels.npz")
    for image in sorted((src / "images").iterdir()):
        suffix = image.suffix.lower()
        if suffix not in FolderSource.IMAGE_SUFFIXES:
            logger.warning("%s: not an image the training data reads; not copied", image)
        elif suffix in (".jpg", ".jpeg"):
            shutil.copy2(image, dest / "images" / image.name)
        else:
            with Image.open(image) as im:
                im.convert("RGB").save(
                    dest / "images" / f"{image.stem}.jpg",
                    quality=JPEG_QUALITY,
                    subsampling=JPEG_SUBSAMPLING,
                )
    logger.info("%s -> %s", src, dest)
    return dest


@click.command("travel", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument(
    "folders",
    nargs=-1,
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def travel_command(folders: tuple[Path, ...], out: Path) -> int:
    """Copy training FOLDERS under --out, PNG images as JPEG."""
    for folder in folders:
        dest = pack_folder(folder, out)
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        click.echo(f"{dest}: {size / 2**20:.1f} MiB")
    return 0


main = entry_point(travel_command, "travel")

if __name__ == "__main__":
    raise SystemExit(main())
