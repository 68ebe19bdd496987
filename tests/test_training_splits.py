"""Folders with per-image label arrays and resolutions, validation splits, crop batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_infer.compare import compare_labels
from wsi_infer.training.augment import Augmenter
from wsi_infer.training.data import (
    CropBatchSampler,
    FolderSource,
    PatchDataset,
    group_of,
    split_by_group,
)
from wsi_infer.training.tune import nucleus_area_percentiles


def _write_folder(root: Path, shapes: dict[str, tuple[int, int]], mpp: list[float]) -> None:
    """A folder like CPM-15's: images of different sizes, one ``inst_NAME`` array each."""
    (root / "images").mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for name, (h, w) in shapes.items():
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        inst = np.zeros((h, w), np.uint16)
        inst[10:20, 10:30] = 1  # 10 x 20 px
        inst[h - 12 : h - 2, w - 12 : w - 2] = 2  # 10 x 10 px
        arrays[f"inst_{name}"] = inst
    np.savez(root / "labels.npz", names=np.array(list(shapes)), mpp=np.array(mpp), **arrays)


def test_per_image_arrays_and_resolutions(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"img_a": (60, 80), "img_b": (90, 50)}, [0.5, 0.25])
    src = FolderSource(tmp_path, target_mpp=0.25)
    assert len(src) == 2 and not src.typed
    a, b = src[0], src[1]
    # 20x (0.5 mpp) is resampled to the model's 0.25 mpp: twice the pixels each way.
    assert a.image.shape == (120, 160, 3) and a.inst.shape == (120, 160)
    assert src.shape(0) == (120, 160)
    assert np.bincount(a.inst.ravel())[1:].tolist() == [800, 400]
    assert b.image.shape == (90, 50, 3) and np.bincount(b.inst.ravel())[1:].tolist() == [200, 100]
    # Without a target resolution the images are used as they are.
    assert FolderSource(tmp_path)[0].image.shape == (60, 80, 3)


def test_real_cpm15_folder_loads(shared: Path) -> None:
    src = FolderSource(shared / "nuclei" / "cpm15", target_mpp=0.25)
    assert len(src) == 15
    first, last = src[0], src[14]  # image01 is 20x, image15 is 40x
    assert first.image.shape[:2] == first.inst.shape == src.shape(0)
    assert last.image.shape[:2] == last.inst.shape
    assert int(first.inst.max()) > 50


def test_missing_per_image_array_is_named(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"img_a": (40, 40)}, [0.25])
    with np.load(tmp_path / "labels.npz") as z:
        np.savez(tmp_path / "labels.npz", names=np.array(["img_a", "img_z"]), mpp=z["mpp"])
    with pytest.raises(ValueError, match="img_a"):
        FolderSource(tmp_path)


@pytest.mark.parametrize(
    ("folder", "split", "fraction", "images"),
    [
        ("shared", "train", 0.12, 3),  # 3 of 27 images
        ("data", "test", 0.5, 2),  # 2 of the 4 images in the repository
    ],
)
def test_validation_split_keeps_source_images_whole(
    request: pytest.FixtureRequest, folder: str, split: str, fraction: float, images: int
) -> None:
    src = FolderSource(request.getfixturevalue(folder) / "nuclei" / "consep" / split)
    train, val = split_by_group(src, fraction, seed=0)
    assert sorted(train.indices + val.indices) == list(range(len(src)))
    train_groups = {group_of(src.names[i]) for i in train.indices}
    val_groups = {group_of(src.names[i]) for i in val.indices}
    assert not train_groups & val_groups
    assert len(val_groups) == images and len(val) == 16 * images  # 16 patches an image
    again = split_by_group(src, fraction, seed=0)[1]
    assert again.indices == val.indices
    assert group_of("tnbc_s01_02") == "tnbc_s01" and group_of("TCGA-21-5784-01Z-00-DX1") == (
        "TCGA-21-5784-01Z-00-DX1"
    )


def test_crop_batches_hold_one_size_and_equal_pixels(tmp_path: Path) -> None:
    _write_folder(tmp_path / "big", {f"big_{k}": (520, 530) for k in range(6)}, [0.25] * 6)
    _write_folder(tmp_path / "small", {f"small_{k}": (256, 256) for k in range(12)}, [0.25] * 12)
    sources = [FolderSource(tmp_path / "big"), FolderSource(tmp_path / "small")]
    ds = PatchDataset(
        sources,
        lambda crop: Augmenter(crop=crop, train=False),
        (0.5,) * 3,
        (0.25,) * 3,
        crops=(256, 512),
    )
    sampler = CropBatchSampler(ds, batch_size=8)
    batches = sampler.batches()
    assert batches and all(len({item[0] for item in b}) == 1 for b in batches)
    for b in batches:
        assert len(b) * b[0][0] ** 2 == 8 * 256**2
    assert {item[0] for b in batches for item in b} == {256, 512}
    assert sampler.batches() == batches  # reproducible
    x = ds[batches[0][0]]
    assert x["image"].shape[-1] == batches[0][0][0]


def test_training_nucleus_areas(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"img_a": (60, 80)}, [0.25])
    # nucleus 2 touches no border here (h - 12 .. h - 2): both are whole
    p5, p50, p95 = nucleus_area_percentiles([FolderSource(tmp_path)], mpp=0.25)
    assert p5 <= p50 <= p95 and p50 == pytest.approx((200 + 100) / 2 * 0.0625)


def test_compare_labels_matches_at_iou_half() -> None:
    a = np.zeros((20, 20), np.int32)
    a[0:4, 0:4] = 1
    a[10:14, 10:14] = 2
    a[15:19, 0:4] = 3
    b = np.zeros_like(a)
    b[0:4, 0:3] = 7  # IoU 0.75 with 1
    b[10:12, 10:14] = 9  # IoU 0.5 with 2: not a match
    m = compare_labels(a, b)
    assert (m.nuclei_a, m.nuclei_b, m.matched) == (3, 2, 1)
    assert m.agreement == pytest.approx(2 / 5) and m.mean_iou == pytest.approx(0.75)
    assert compare_labels(a, a).agreement == 1.0
