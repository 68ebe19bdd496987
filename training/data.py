"""Patch sources and training targets.

A *source* is an indexable collection of labelled patches.  Every item is a
:class:`Sample`: an RGB ``uint8`` image ``(H, W, 3)``, an instance map
``uint32`` ``(H, W)`` (0 background, ids unique within the patch), a type map
``uint8`` ``(H, W)`` (0 background, class index + 1 on nuclei, or
:data:`IGNORE_INDEX` where the class is unknown) and the tissue name.

Two on-disk layouts are read:

* PanNuke folds (``Fold 1/images/fold1/images.npy`` ...), memory-mapped so that
  no fold is ever loaded whole into RAM;
* folders ``images/NAME.(jpg|png)`` + ``labels.npz`` (``inst``, optional
  ``types``, ``names``), as the CoNSeP / MoNuSeg folders of the shared data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = [
    "IGNORE_INDEX",
    "FolderSource",
    "PanNukeFold",
    "PatchDataset",
    "Sample",
    "Source",
    "build_targets",
    "find_pannuke_fold",
    "normalise_image",
    "pannuke_to_sample",
    "per_instance_distance",
]

logger = logging.getLogger(__name__)

#: Type-target value of pixels whose class is unknown (untyped data sets).
IGNORE_INDEX = 255
#: Number of PanNuke nucleus classes.
N_CLASSES = 5


@dataclass
class Sample:
    """One labelled patch."""

    image: NDArray[np.uint8]
    inst: NDArray[np.uint32]
    types: NDArray[np.uint8]
    tissue: str = "unknown"
    name: str = ""


#: ``(image, inst, types, rng) -> (image, inst, types)``, see :class:`training.augment.Augmenter`.
AugmentFn = Callable[
    [NDArray[np.uint8], NDArray[np.uint32], NDArray[np.uint8], np.random.Generator],
    tuple[NDArray[np.uint8], NDArray[np.uint32], NDArray[np.uint8]],
]


class Source(Protocol):
    """Anything that gives :class:`Sample` by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


# --------------------------------------------------------------------------- PanNuke


def find_pannuke_fold(root: str | Path, fold: int) -> Path:
    """The directory of fold ``fold`` under a PanNuke root (``Fold 1``, ``Fold1`` or ``fold1``)."""
    root = Path(root)
    for name in (f"Fold {fold}", f"Fold{fold}", f"fold{fold}", f"fold {fold}"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(
        f"{root}: no folder for PanNuke fold {fold} (looked for 'Fold {fold}', "
        f"'Fold{fold}', 'fold{fold}')"
    )


def _find_file(fold_dir: Path, kind: str, fold: int, filename: str) -> Path:
    """``fold_dir/<kind>/fold<N>/<filename>``, tolerating a missing inner ``foldN`` level."""
    candidates = [
        fold_dir / kind / f"fold{fold}" / filename,
        fold_dir / kind / f"Fold {fold}" / filename,
        fold_dir / kind / f"Fold{fold}" / filename,
        fold_dir / kind / filename,
        fold_dir / filename,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{fold_dir}: no {kind}/fold{fold}/{filename}")


def pannuke_to_sample(
    image: NDArray[np.floating], mask: NDArray[np.floating], tissue: str = "unknown", name: str = ""
) -> Sample:
    """One PanNuke patch (float image ``(H, W, 3)``, float mask ``(H, W, 6)``) as a :class:`Sample`.

    Instance ids of the five class channels may restart per channel: every
    (channel, id) pair becomes its own instance, numbered 1..n.  A pixel set in
    several channels (it does not happen in PanNuke, but costs nothing to
    handle) belongs to the last one.
    """
    img = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
    mask = np.asarray(mask)
    inst = np.zeros(mask.shape[:2], dtype=np.uint32)
    types = np.zeros(mask.shape[:2], dtype=np.uint8)
    next_id = 1
    for c in range(N_CLASSES):
        ch = np.rint(mask[..., c]).astype(np.int64)
        ids = np.unique(ch)
        ids = ids[ids > 0]
        if ids.size == 0:
            continue
        lut = np.zeros(int(ids.max()) + 1, dtype=np.uint32)
        lut[ids] = np.arange(next_id, next_id + ids.size, dtype=np.uint32)
        sel = ch > 0
        inst[sel] = lut[ch[sel]]
        types[sel] = c + 1
        next_id += ids.size
    return Sample(img, inst, types, tissue, name)


class PanNukeFold:
    """One PanNuke fold, memory-mapped; items are converted patch by patch."""

    def __init__(self, root: str | Path, fold: int) -> None:
        self.fold = fold
        self.dir = find_pannuke_fold(root, fold)
        self.images = np.load(_find_file(self.dir, "images", fold, "images.npy"), mmap_mode="r")
        self.masks = np.load(_find_file(self.dir, "masks", fold, "masks.npy"), mmap_mode="r")
        try:
            tissue_file = _find_file(self.dir, "images", fold, "types.npy")
            self.tissues = [str(t) for t in np.load(tissue_file)]
        except FileNotFoundError:
            self.tissues = ["unknown"] * len(self.images)
        if not (len(self.images) == len(self.masks) == len(self.tissues)):
            raise ValueError(
                f"{self.dir}: images ({len(self.images)}), masks ({len(self.masks)}) and "
                f"types ({len(self.tissues)}) differ in length"
            )
        if self.images.ndim != 4 or self.masks.ndim != 4 or self.masks.shape[-1] < N_CLASSES:
            raise ValueError(
                f"{self.dir}: unexpected shapes {self.images.shape} / {self.masks.shape}"
            )
        logger.info("PanNuke fold %d: %d patches in %s", fold, len(self.images), self.dir)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return pannuke_to_sample(
            self.images[index],
            self.masks[index],
            self.tissues[index],
            f"fold{self.fold}_{index:05d}",
        )


# --------------------------------------------------------------------------- folders


class FolderSource:
    """``images/NAME.(jpg|png)`` + ``labels.npz`` (``inst``, optional ``types``, ``names``).

    Without ``types`` the type target is :data:`IGNORE_INDEX` on nuclei and 0
    on background, so that such data trains segmentation only.  ``tissue``
    defaults to the folder's name (its parent's name when that is a split name
    such as ``train``).
    """

    SPLITS = ("train", "test", "val", "valid", "validation")

    def __init__(self, root: str | Path, tissue: str | None = None) -> None:
        self.root = Path(root)
        labels_file = self.root / "labels.npz"
        if not labels_file.is_file():
            raise FileNotFoundError(f"{self.root}: no labels.npz")
        with np.load(labels_file) as z:
            if "inst" not in z.files:
                raise ValueError(f"{labels_file}: no 'inst' array")
            self.inst = z["inst"]
            self.types = z["types"] if "types" in z.files else None
            names = z["names"] if "names" in z.files else None
        if names is None:
            files = sorted(
                p for p in (self.root / "images").iterdir() if p.suffix.lower() in (".jpg", ".png")
            )
            self.names = [p.stem for p in files]
        else:
            self.names = [str(n) for n in names]
        if len(self.names) != len(self.inst):
            raise ValueError(f"{labels_file}: {len(self.names)} names for {len(self.inst)} masks")
        self.typed = self.types is not None
        if tissue is None:
            tissue = self.root.name
            if tissue.lower() in self.SPLITS:
                tissue = self.root.parent.name
        self.tissue = tissue
        self._files = [self._image_file(n) for n in self.names]
        logger.info("%s: %d images (typed: %s)", self.root, len(self.names), self.typed)

    def _image_file(self, name: str) -> Path:
        for ext in (".jpg", ".png", ".jpeg", ".tif", ".tiff"):
            path = self.root / "images" / f"{name}{ext}"
            if path.is_file():
                return path
        raise FileNotFoundError(f"{self.root / 'images'}: no image named {name}")

    def __len__(self) -> int:
        return len(self.names)

    def shape(self, index: int) -> tuple[int, int]:
        h, w = self.inst[index].shape
        return int(h), int(w)

    def __getitem__(self, index: int) -> Sample:
        from PIL import Image

        with Image.open(self._files[index]) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.uint8)
        inst = self.inst[index].astype(np.uint32)
        if self.types is not None:
            types = self.types[index].astype(np.uint8)
        else:
            types = np.where(inst > 0, IGNORE_INDEX, 0).astype(np.uint8)
        if image.shape[:2] != inst.shape:
            raise ValueError(
                f"{self._files[index]}: image {image.shape[:2]} and mask {inst.shape} differ"
            )
        return Sample(image, inst, types, self.tissue, self.names[index])


# --------------------------------------------------------------------------- targets


def per_instance_distance(inst: NDArray[np.integer]) -> NDArray[np.float32]:
    """Each instance's Euclidean distance transform, divided by its own maximum.

    1 at each nucleus' centre (its pixel farthest from the border), falling to
    ``1/max`` at its border, 0 on background.
    """
    out = np.zeros(inst.shape, dtype=np.float32)
    if not inst.any():
        return out
    objects = ndi.find_objects(inst.astype(np.int64))
    for idx, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        # Pad by one pixel so the border of the crop counts as outside.
        region = inst[sl] == idx
        padded = np.pad(region, 1)
        dist = ndi.distance_transform_edt(padded)[1:-1, 1:-1]
        peak = float(dist.max())
        if peak > 0:
            out[sl][region] = (dist[region] / peak).astype(np.float32)
    return out


def relabel_sequential(inst: NDArray[np.integer]) -> NDArray[np.uint32]:
    """Ids 1..n in increasing order of the old ids (0 stays 0)."""
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros(inst.shape, np.uint32)
    lut = np.zeros(int(ids.max()) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
    return lut[inst]


def build_targets(
    inst: NDArray[np.integer], types: NDArray[np.uint8]
) -> dict[str, NDArray[np.generic]]:
    """Targets of the three heads from an instance map and a type map.

    ``foreground`` float32 0/1; ``distance`` float32 (see
    :func:`per_instance_distance`); ``type`` int64 with 0 on background, class
    index + 1 on nuclei, :data:`IGNORE_INDEX` where unknown.
    """
    inst = relabel_sequential(inst)
    fg = (inst > 0).astype(np.float32)
    t = types.astype(np.int64)
    t[inst == 0] = 0
    return {"foreground": fg, "distance": per_instance_distance(inst), "type": t}


def normalise_image(
    image: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]
) -> NDArray[np.float32]:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 normalised as the engine does."""
    x = image.astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    out: NDArray[np.float32] = ((x - m) / s).astype(np.float32, copy=False)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# --------------------------------------------------------------------------- dataset


def _area_weight(source: Source, index: int, tile: int) -> int:
    """How many crops an image is worth: its area in ``tile``-sized patches (at least 1)."""
    shape = getattr(source, "shape", None)
    if shape is None:
        return 1
    h, w = shape(index)
    return max(1, round(h * w / (tile * tile)))


class PatchDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random crops of the samples of several sources, augmented, with targets.

    Large images (e.g. MoNuSeg's 1000 x 1000) appear once per 256 x 256 of
    their area per epoch, each time with another random crop.  ``augment`` is
    a callable ``(image, inst, types, rng) -> (image, inst, types)`` producing
    ``crop x crop`` arrays (see :class:`training.augment.Augmenter`).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        augment: AugmentFn,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        area_tile: int = 256,
    ) -> None:
        self.sources = list(sources)
        self.augment = augment
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.seed = seed
        self.epoch = 0
        self.index: list[tuple[int, int]] = []
        for s, src in enumerate(self.sources):
            for i in range(len(src)):
                self.index.extend([(s, i)] * _area_weight(src, i, area_tile))

    def set_epoch(self, epoch: int) -> None:
        """Make the random crops and augmentations of an epoch reproducible."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        s, i = self.index[item]
        sample = self.sources[s][i]
        rng = np.random.default_rng([self.seed, self.epoch, item])
        image, inst, types = self.augment(sample.image, sample.inst, sample.types, rng)
        t = build_targets(inst, types)
        return {
            "image": torch.from_numpy(normalise_image(image, self.mean, self.std)),
            "foreground": torch.from_numpy(t["foreground"]),
            "distance": torch.from_numpy(t["distance"]),
            "type": torch.from_numpy(t["type"]),
        }
