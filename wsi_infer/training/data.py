"""Patch sources and training targets.

A *source* is an indexable collection of labelled patches.  Every item is a
:class:`Sample`: an RGB ``uint8`` image ``(H, W, 3)``, an instance map
``uint32`` ``(H, W)`` (0 background, ids unique within the patch), a type map
``uint8`` ``(H, W)`` (0 background, class index + 1 on nuclei, or
:data:`IGNORE_INDEX` where the class is unknown) and the tissue name.

Two on-disk layouts are read:

* PanNuke folds (``Fold 1/images/fold1/images.npy`` ...), memory-mapped so that
  no fold is ever loaded whole into RAM;
* folders ``images/NAME.(jpg|png)`` + ``labels.npz``: either stacked arrays
  (``inst`` (N, H, W), optional ``types``) or, where the images differ in size,
  one ``inst_NAME`` (and optional ``types_NAME``) array per image; ``names``;
  optional ``mpp`` (one value, or one per image).  Images whose ``mpp`` differs
  from the model's are resampled to it (bilinear image, nearest labels).

:func:`split_by_group` carves a validation split out of training data by source
image or slide (patches of one image never sit on both sides).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

__all__ = [
    "IGNORE_INDEX",
    "CropBatchSampler",
    "FolderSource",
    "PanNukeFold",
    "PatchDataset",
    "Sample",
    "Source",
    "Subset",
    "build_targets",
    "find_pannuke_fold",
    "normalise_image",
    "pannuke_to_sample",
    "per_instance_distance",
    "split_by_group",
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


#: ``(image, inst, types, rng) -> (image, inst, types)``, see :class:`wsi_infer.training.augment.Augmenter`.
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
    """``images/NAME.(jpg|png)`` + ``labels.npz``, one sample per image.

    ``labels.npz`` holds ``names`` and either stacked ``inst`` (N, H, W) (with
    optional ``types``) or, for images of different sizes, ``inst_NAME`` (and
    optional ``types_NAME``) per image.  An optional ``mpp`` (a scalar or one
    value per image) gives each image's resolution: with ``target_mpp`` set,
    images more than 5 % off are resampled to it (image bilinear, labels
    nearest), so a 20x image trains a 40x model at its scale.

    Without types the type target is :data:`IGNORE_INDEX` on nuclei and 0 on
    background, so that such data trains segmentation only.  ``tissue``
    defaults to the folder's name (its parent's name when that is a split name
    such as ``train``).
    """

    SPLITS = ("train", "test", "val", "valid", "validation")
    #: The image files an ``images/`` folder may hold, in the order a name is looked up.
    IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".tif", ".tiff")
    #: Relative resolution difference under which an image is used as it is.
    MPP_TOLERANCE = 0.05

    def __init__(
        self, root: str | Path, tissue: str | None = None, target_mpp: float | None = None
    ) -> None:
        self.root = Path(root)
        labels_file = self.root / "labels.npz"
        if not labels_file.is_file():
            raise FileNotFoundError(f"{self.root}: no labels.npz")
        self.inst: list[NDArray[np.integer]] = []
        self.types: list[NDArray[np.integer]] | None = None
        with np.load(labels_file) as z:
            files = set(z.files)
            if "names" in files:
                self.names = [str(n) for n in z["names"]]
            else:
                image_files = sorted(
                    p
                    for p in (self.root / "images").iterdir()
                    if p.suffix.lower() in (".jpg", ".png")
                )
                self.names = [p.stem for p in image_files]
            if "inst" in files:
                stacked = z["inst"]
                self.inst = list(stacked)
                if "types" in files:
                    self.types = list(z["types"])
            elif self.names and all(f"inst_{n}" in files for n in self.names):
                self.inst = [z[f"inst_{n}"] for n in self.names]
                if all(f"types_{n}" in files for n in self.names):
                    self.types = [z[f"types_{n}"] for n in self.names]
            else:
                missing = [n for n in self.names if f"inst_{n}" not in files][:3]
                raise ValueError(
                    f"{labels_file}: no 'inst' array and no per-image 'inst_NAME' arrays "
                    f"(missing e.g. {missing or ['names']})"
                )
            mpp = z["mpp"] if "mpp" in files else None
        if len(self.names) != len(self.inst):
            raise ValueError(f"{labels_file}: {len(self.names)} names for {len(self.inst)} masks")
        if mpp is None:
            self.mpp: list[float | None] = [None] * len(self.names)
        else:
            values = np.atleast_1d(np.asarray(mpp, dtype=np.float64))
            if values.size == 1:
                values = np.repeat(values, len(self.names))
            if values.size != len(self.names):
                raise ValueError(
                    f"{labels_file}: {values.size} mpp values for {len(self.names)} images"
                )
            self.mpp = [float(v) for v in values]
        self.target_mpp = target_mpp
        self.typed = self.types is not None
        if tissue is None:
            tissue = self.root.name
            if tissue.lower() in self.SPLITS:
                tissue = self.root.parent.name
        self.tissue = tissue
        self._files = [self._image_file(n) for n in self.names]
        logger.info("%s: %d images (typed: %s)", self.root, len(self.names), self.typed)

    def _image_file(self, name: str) -> Path:
        for ext in self.IMAGE_SUFFIXES:
            path = self.root / "images" / f"{name}{ext}"
            if path.is_file():
                return path
        raise FileNotFoundError(f"{self.root / 'images'}: no image named {name}")

    def __len__(self) -> int:
        return len(self.names)

    def zoom(self, index: int) -> float:
        """Factor by which image ``index`` is resampled (1 when used as it is)."""
        mpp = self.mpp[index]
        if mpp is None or self.target_mpp is None:
            return 1.0
        f = mpp / self.target_mpp
        return 1.0 if abs(f - 1.0) <= self.MPP_TOLERANCE else f

    def shape(self, index: int) -> tuple[int, int]:
        h, w = self.inst[index].shape
        f = self.zoom(index)
        return round(int(h) * f), round(int(w) * f)

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
        f = self.zoom(index)
        if f != 1.0:
            image, inst, types = _resample(image, inst, types, self.shape(index))
        return Sample(image, inst, types, self.tissue, self.names[index])


def _resample(
    image: NDArray[np.uint8],
    inst: NDArray[np.uint32],
    types: NDArray[np.uint8],
    shape: tuple[int, int],
) -> tuple[NDArray[np.uint8], NDArray[np.uint32], NDArray[np.uint8]]:
    """Image bilinear (area when shrinking), label maps nearest, to ``shape`` (h, w)."""
    import cv2

    h, w = shape
    interp = cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_LINEAR
    img = np.asarray(cv2.resize(image, (w, h), interpolation=interp), np.uint8)
    ins = relabel_sequential(inst)[0]
    if int(ins.max(initial=0)) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 instances in one image")
    nearest = cv2.INTER_NEAREST_EXACT
    ins16 = cv2.resize(ins.astype(np.uint16), (w, h), interpolation=nearest)
    typ = np.asarray(cv2.resize(types, (w, h), interpolation=nearest), np.uint8)
    return img, np.asarray(ins16, np.uint32), typ


class Subset:
    """Some samples of a source, by index (a validation split, say)."""

    def __init__(self, source: Source, indices: Sequence[int], label: str = "") -> None:
        self.source = source
        self.indices = list(indices)
        self.label = label

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.source[self.indices[index]]

    def shape(self, index: int) -> tuple[int, int]:
        shape = getattr(self.source, "shape", None)
        if shape is None:
            raise AttributeError("shape")
        result: tuple[int, int] = shape(self.indices[index])
        return result


#: A patch name's source image or slide: the name without a trailing ``_NNN`` (CoNSeP's
#: ``train_10_003`` -> ``train_10``, TNBC's ``tnbc_s01_02`` -> ``tnbc_s01``).
_GROUP = re.compile(r"^(.+?)[_-]\d+$")


def group_of(name: str) -> str:
    m = _GROUP.match(name)
    return m.group(1) if m else name


def split_by_group(source: Source, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """``(train, val)`` subsets of ``source``, about ``fraction`` of its source images in val.

    Patches are grouped by :func:`group_of` their name, so patches cut from one
    image (or slide) are never on both sides.  Groups are ranked by a hash of
    their name and ``seed``, so the split does not depend on order or machine.
    At least one group goes to each side when the source has two or more.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction} is not between 0 and 1")
    names = getattr(source, "names", None)
    if names is None:
        names = [source[i].name for i in range(len(source))]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(group_of(str(name)), []).append(i)
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_val = min(max(1, round(len(ranked) * fraction)), len(ranked) - 1) if len(ranked) > 1 else 0
    val_groups = set(ranked[:n_val])
    val = [i for g in ranked if g in val_groups for i in groups[g]]
    train = [i for g in ranked if g not in val_groups for i in groups[g]]
    label = str(getattr(source, "root", ""))
    return Subset(source, sorted(train), label), Subset(source, sorted(val), label)


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


def build_targets(
    inst: NDArray[np.integer], types: NDArray[np.uint8]
) -> dict[str, NDArray[np.generic]]:
    """Targets of the three heads from an instance map and a type map.

    ``foreground`` float32 0/1; ``distance`` float32 (see
    :func:`per_instance_distance`); ``type`` int64 with 0 on background, class
    index + 1 on nuclei, :data:`IGNORE_INDEX` where unknown.
    """
    inst = relabel_sequential(inst)[0]
    fg = (inst > 0).astype(np.float32)
    t = types.astype(np.int64)
    t[inst == 0] = 0
    return {"foreground": fg, "distance": per_instance_distance(inst), "type": t}


def normalise_image(
    image: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]
) -> NDArray[np.float32]:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 normalised as the engine does
    (:func:`wsi_infer.tilemaps.normalise_tiles`)."""
    from wsi_infer.tilemaps import normalise_tiles

    tiles = torch.tensor(np.asarray(image, np.uint8)[None])  # a copy: the image may be read-only
    out: NDArray[np.float32] = normalise_tiles(tiles, mean, std)[0].contiguous().numpy()
    return out


# --------------------------------------------------------------------------- dataset


def _shape(source: Source, index: int) -> tuple[int, int] | None:
    shape = getattr(source, "shape", None)
    if shape is None:
        return None
    h, w = shape(index)
    return int(h), int(w)


class PatchDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random crops of the samples of several sources, augmented, with targets.

    Items are ``(crop, sample)`` pairs built per epoch by :meth:`items`: each
    image is worth its area in crops of its size (at least one), so large images
    (MoNuSeg's 1000 x 1000) are seen in proportion, each time through another
    random crop.  With several crop sizes, an image at least as large as a size
    may be cut at that size; smaller images use the smallest.  ``augment(crop)``
    returns a callable ``(image, inst, types, rng) -> (image, inst, types)``
    producing ``crop x crop`` arrays (see :class:`wsi_infer.training.augment.Augmenter`).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        augment: Callable[[int], AugmentFn],
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        crops: Sequence[int] = (256,),
    ) -> None:
        self.sources = list(sources)
        self.crops = sorted(set(crops))
        self.augmenters = {c: augment(c) for c in self.crops}
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.seed = seed
        self.epoch = 0
        self._shapes = [[_shape(src, i) for i in range(len(src))] for src in self.sources]

    def set_epoch(self, epoch: int) -> None:
        """Make the random crops and augmentations of an epoch reproducible."""
        self.epoch = epoch

    def items(self, epoch: int) -> list[tuple[int, int, int]]:
        """The epoch's ``(crop, source, index)`` items, in a fixed order."""
        rng = np.random.default_rng([self.seed, epoch, 7])
        base = self.crops[0]
        out: list[tuple[int, int, int]] = []
        for s, shapes in enumerate(self._shapes):
            for i, shape in enumerate(shapes):
                if shape is None:
                    out.append((base, s, i))
                    continue
                h, w = shape
                fits = [c for c in self.crops if min(h, w) >= c] or [base]
                crop = fits[int(rng.integers(len(fits)))]
                n = max(1, round(h * w / (crop * crop)))
                out.extend([(crop, s, i)] * n)
        return out

    def __len__(self) -> int:
        return len(self.items(self.epoch))

    def __getitem__(self, item: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        crop, s, i, k = item
        sample = self.sources[s][i]
        rng = np.random.default_rng([self.seed, self.epoch, s, i, k])
        image, inst, types = self.augmenters[crop](sample.image, sample.inst, sample.types, rng)
        t = build_targets(inst, types)
        return {
            "image": torch.from_numpy(normalise_image(image, self.mean, self.std)),
            "foreground": torch.from_numpy(t["foreground"]),
            "distance": torch.from_numpy(t["distance"]),
            "type": torch.from_numpy(t["type"]),
        }


class CropBatchSampler(torch.utils.data.Sampler[list[tuple[int, int, int, int]]]):
    """Batches of one crop size each: ``batch_size`` crops of the smallest size, and
    ``batch_size * (smallest / crop)^2`` (at least 1) of larger ones, so that every
    batch holds about the same number of pixels.  Shuffled per epoch, reproducibly;
    incomplete batches are dropped."""

    def __init__(self, dataset: PatchDataset, batch_size: int, seed: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed

    def per_batch(self, crop: int) -> int:
        base = self.dataset.crops[0]
        return max(1, round(self.batch_size * (base / crop) ** 2))

    def batches(self) -> list[list[tuple[int, int, int, int]]]:
        epoch = self.dataset.epoch
        rng = np.random.default_rng([self.seed, epoch, 11])
        items = self.dataset.items(epoch)
        by_crop: dict[int, list[tuple[int, int, int, int]]] = {}
        for k, (crop, s, i) in enumerate(items):
            by_crop.setdefault(crop, []).append((crop, s, i, k))
        batches = []
        for crop in sorted(by_crop):
            group = by_crop[crop]
            order = rng.permutation(len(group))
            n = self.per_batch(crop)
            for b in range(len(group) // n):
                batches.append([group[j] for j in order[b * n : (b + 1) * n]])
        return [batches[j] for j in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
