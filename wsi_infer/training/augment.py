"""Augmentation applied identically to an image and its label maps.

Geometric transforms (random scaled crop, flips and 90 degree rotations,
elastic deformation) move image and masks together; the masks always use
nearest-neighbour interpolation so instance ids and classes are never blended.
Photometric transforms (HED stain jitter, colour jitter, blur) touch the image
only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from skimage.color import hed_from_rgb, rgb_from_hed
from skimage.segmentation import relabel_sequential

__all__ = ["Augmenter", "hed_jitter", "random_scaled_crop"]

logger = logging.getLogger(__name__)

# skimage's H&E-DAB stain matrices (Ruifrok & Johnston), as rgb2hed / hed2rgb use them.
_RGB_FROM_HED = np.asarray(rgb_from_hed, dtype=np.float64)
_HED_FROM_RGB = np.asarray(hed_from_rgb, dtype=np.float64)
_LOG_ADJUST = float(np.log(1e-6))


def hed_jitter(
    image: NDArray[np.uint8], rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.05
) -> NDArray[np.uint8]:
    """Perturb the haematoxylin / eosin / DAB concentrations (Tellez et al., 2018).

    Each stain's optical density is scaled by ``1 + U(-sigma, sigma)`` and
    shifted by ``U(-bias, bias)``, the same colour deconvolution as
    ``skimage.color.rgb2hed`` / ``hed2rgb``.
    """
    rgb = np.maximum(image.astype(np.float64) / 255.0, 1e-6)
    od = np.log(rgb) / _LOG_ADJUST  # skimage's scaling: optical density over -log(1e-6)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB
    alpha = 1.0 + rng.uniform(-sigma, sigma, size=3)
    beta = rng.uniform(-bias, bias, size=3)
    hed = hed * alpha + beta
    od2 = hed @ _RGB_FROM_HED
    out = np.exp(od2 * _LOG_ADJUST).reshape(image.shape)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def random_scaled_crop(
    image: NDArray[np.uint8],
    inst: NDArray[np.integer],
    types: NDArray[np.uint8],
    crop: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[NDArray[np.uint8], NDArray[np.uint32], NDArray[np.uint8]]:
    """A random square region, zoomed by a log-uniform factor in ``scale``, resized to ``crop``.

    A zoom factor ``s`` takes a region of ``crop / s`` pixels (clipped to the
    image), so ``s > 1`` magnifies.  Images smaller than ``crop`` are padded
    (image white, masks background).
    """
    h, w = inst.shape
    if h < crop or w < crop:
        ph, pw = max(0, crop - h), max(0, crop - w)
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image = np.pad(image, (*pad, (0, 0)), constant_values=255)
        inst = np.pad(inst, pad)
        types = np.pad(types, pad)
        h, w = inst.shape
    lo, hi = np.log(scale[0]), np.log(scale[1])
    s = float(np.exp(rng.uniform(lo, hi))) if hi > lo else float(scale[0])
    region = int(min(h, w, max(8, round(crop / s))))
    y = int(rng.integers(0, h - region + 1))
    x = int(rng.integers(0, w - region + 1))
    img = np.ascontiguousarray(image[y : y + region, x : x + region])
    ins = relabel_sequential(inst[y : y + region, x : x + region])[0]
    typ = np.ascontiguousarray(types[y : y + region, x : x + region])
    if region != crop:
        interp = cv2.INTER_AREA if region > crop else cv2.INTER_LINEAR
        nearest = cv2.INTER_NEAREST_EXACT  # same pixel centres as the linear resize
        img = np.asarray(cv2.resize(img, (crop, crop), interpolation=interp), np.uint8)
        ins16 = cv2.resize(_as_u16(ins), (crop, crop), interpolation=nearest)
        ins = np.asarray(ins16, np.uint32)
        typ = np.asarray(cv2.resize(typ, (crop, crop), interpolation=nearest), np.uint8)
    return img, ins, typ


def _as_u16(inst: NDArray[np.integer]) -> NDArray[np.uint16]:
    """OpenCV warps 16-bit but not 32-bit unsigned maps: renumber, then narrow."""
    inst = relabel_sequential(inst)[0]
    if int(inst.max(initial=0)) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 instances in one crop")
    return inst.astype(np.uint16)


@dataclass
class Augmenter:
    """Callable ``(image, inst, types, rng) -> (image, inst, types)`` of ``crop x crop`` arrays.

    ``train=False`` gives a plain random crop (no zoom, no other change).
    """

    crop: int = 256
    train: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    p_elastic: float = 0.2
    p_blur: float = 0.2
    p_hed: float = 0.6
    p_colour: float = 0.5

    def __post_init__(self) -> None:
        import albumentations as A

        nearest = cv2.INTER_NEAREST
        self._geometric = A.Compose(
            [
                A.D4(p=1.0),
                A.ElasticTransform(
                    alpha=20.0,
                    sigma=8.0,
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=nearest,
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=self.p_elastic,
                ),
            ],
            seed=0,
        )
        self._photometric = A.Compose(
            [
                A.ColorJitter(
                    brightness=0.15, contrast=0.15, saturation=0.15, hue=0.04, p=self.p_colour
                ),
                A.GaussianBlur(sigma_limit=(0.1, 1.0), blur_limit=(3, 5), p=self.p_blur),
            ],
            seed=0,
        )

    def __call__(
        self,
        image: NDArray[np.uint8],
        inst: NDArray[np.integer],
        types: NDArray[np.uint8],
        rng: np.random.Generator,
    ) -> tuple[NDArray[np.uint8], NDArray[np.uint32], NDArray[np.uint8]]:
        scale = self.scale if self.train else (1.0, 1.0)
        img, ins, typ = random_scaled_crop(image, inst, types, self.crop, rng, scale)
        if not self.train:
            return img, ins, typ
        seed = int(rng.integers(0, 2**31 - 1))
        self._geometric.set_random_seed(seed)
        self._photometric.set_random_seed(seed + 1)
        # Reflect-padding in the elastic warp could copy a nucleus with its id; such
        # copies are split from the original by relabelling connected pieces below.
        out = self._geometric(image=img, masks=[_as_u16(ins), typ])
        img, (ins16, typ) = out["image"], out["masks"]
        ins = _split_disconnected(np.asarray(ins16))
        if rng.random() < self.p_hed:
            img = hed_jitter(img, rng)
        img = self._photometric(image=img)["image"]
        return (
            np.ascontiguousarray(img, dtype=np.uint8),
            ins,
            np.ascontiguousarray(typ, dtype=np.uint8),
        )


def _split_disconnected(inst: NDArray[np.integer]) -> NDArray[np.uint32]:
    """Give each 8-connected piece of an instance its own id (warps can cut nuclei)."""
    from skimage.measure import label

    if not inst.any():
        return np.zeros(inst.shape, np.uint32)
    # Label pieces of equal id: background 0 stays 0.
    pieces = label(inst.astype(np.int64), background=0, connectivity=2)
    return np.asarray(pieces, dtype=np.uint32)
