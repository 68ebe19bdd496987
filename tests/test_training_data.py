"""Patch sources (PanNuke layout, images/ + labels.npz folders) and training targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import PANNUKE_PATCHES

from wsi_infer.training.data import (
    IGNORE_INDEX,
    FolderSource,
    PanNukeFold,
    build_targets,
    find_pannuke_fold,
    normalise_image,
    pannuke_to_sample,
    per_instance_distance,
)


def test_pannuke_fold_matches_the_source_labels(pannuke_root: Path, data: Path) -> None:
    fold = PanNukeFold(pannuke_root, 3)
    assert len(fold) == PANNUKE_PATCHES
    assert isinstance(fold.images, np.memmap) and isinstance(fold.masks, np.memmap)
    ref = FolderSource(data / "nuclei" / "consep" / "test")
    for k in (0, 5):
        s, r = fold[k], ref[k]
        assert s.image.dtype == np.uint8 and s.image.shape == (256, 256, 3)
        assert s.inst.dtype == np.uint32 and s.types.dtype == np.uint8
        assert s.tissue == "Colon"
        np.testing.assert_array_equal(s.image, r.image)
        np.testing.assert_array_equal(s.inst > 0, r.inst > 0)
        np.testing.assert_array_equal(s.types, r.types)
        # Ids restart per class channel in the file, yet every nucleus stays one instance.
        assert len(np.unique(s.inst)) == len(np.unique(r.inst))
        for i in np.unique(s.inst)[1:]:
            assert len(np.unique(r.inst[s.inst == i])) == 1
            assert len(np.unique(s.types[s.inst == i])) == 1


@pytest.mark.parametrize("spelling", ["Fold 3", "Fold3", "fold3"])
def test_all_fold_folder_spellings(pannuke_root: Path, tmp_path: Path, spelling: str) -> None:
    (tmp_path / spelling).symlink_to(pannuke_root / "Fold 3", target_is_directory=True)
    assert find_pannuke_fold(tmp_path, 3) == tmp_path / spelling
    fold = PanNukeFold(tmp_path, 3)
    assert len(fold) == PANNUKE_PATCHES and fold[1].inst.max() > 0


def test_missing_fold_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Fold 2"):
        find_pannuke_fold(tmp_path, 2)


def test_pannuke_ids_restarting_per_channel_stay_apart() -> None:
    mask = np.zeros((8, 8, 6))
    mask[0:2, 0:2, 0] = 1  # neoplastic #1
    mask[4:6, 4:6, 0] = 2  # neoplastic #2
    mask[0:2, 5:7, 1] = 1  # inflammatory #1: same id as neoplastic #1
    mask[..., 5] = (mask[..., :5].sum(-1) == 0).astype(float)
    s = pannuke_to_sample(np.full((8, 8, 3), 200.0), mask)
    assert len(np.unique(s.inst)) == 4  # background + 3 nuclei
    assert s.types[0, 0] == 1 and s.types[0, 5] == 2 and s.types[4, 4] == 1
    assert s.inst[0, 0] != s.inst[0, 5]


def test_untyped_folder_gets_ignore_index_on_nuclei(shared: Path) -> None:
    src = FolderSource(shared / "nuclei" / "monuseg" / "train")
    assert not src.typed and src.tissue == "monuseg"
    s = src[0]
    assert s.image.shape == (1000, 1000, 3)
    np.testing.assert_array_equal(s.types == IGNORE_INDEX, s.inst > 0)
    assert set(np.unique(s.types)) == {0, IGNORE_INDEX}


def test_distance_target_is_one_at_each_centre() -> None:
    inst = np.zeros((20, 30), np.uint32)
    inst[2:9, 2:9] = 1  # 7x7 square: centre (5, 5)
    inst[10:15, 10:25] = 7  # elongated, non-consecutive id
    d = per_instance_distance(inst)
    assert d[5, 5] == 1.0
    assert d[inst == 0].max() == 0.0
    for i in (1, 7):
        v = d[inst == i]
        assert v.max() == 1.0 and v.min() > 0
    # Border pixels are at distance 1 px, the centre of the square at 4 px.
    assert d[2, 5] == pytest.approx(0.25)


def test_build_targets_types_and_foreground() -> None:
    inst = np.zeros((10, 10), np.uint32)
    inst[1:4, 1:4] = 3
    types = np.zeros((10, 10), np.uint8)
    types[1:4, 1:4] = 2
    types[8, 8] = 4  # a class outside any nucleus is background
    t = build_targets(inst, types)
    assert t["foreground"].sum() == 9 and t["type"][2, 2] == 2 and t["type"][8, 8] == 0
    assert t["distance"][2, 2] == 1.0


def test_training_input_is_the_engines_normalisation_bit_for_bit() -> None:
    import torch

    from wsi_infer.config import ModelConfig
    from wsi_infer.tilemaps import TileMaps

    config = ModelConfig()
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    image[0, :, :] = np.arange(256, dtype=np.uint8).reshape(64, 4)[:, :3]  # every value
    image.flags.writeable = False  # as a memory-mapped PanNuke patch is
    x = normalise_image(image, config.mean, config.std)
    assert x.dtype == np.float32 and x.shape == (3, 32, 64) and x.flags.c_contiguous
    # what the network of the engine's graph is given for the same tile
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t)
            return torch.zeros(t.shape[0], 8, *t.shape[2:])

    TileMaps(Spy(), config)(torch.from_numpy(image.copy()[None]))
    np.testing.assert_array_equal(seen[0][0].numpy(), x)
    # the formula the training data used before it shared the engine's function
    m, s = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    old = ((image.astype(np.float32) / np.float32(255.0) - m) / s).transpose(2, 0, 1)
    np.testing.assert_array_equal(old, x)


def test_relabelling_numbers_ids_in_increasing_order() -> None:
    from wsi_infer.training.metrics import remap_label

    inst = np.array([[0, 5, 5, 40], [9, 0, 2, 40]], np.uint32)
    t = build_targets(inst, np.ones_like(inst, np.uint8))
    assert t["type"].tolist() == [[0, 1, 1, 1], [1, 0, 1, 1]]
    out = remap_label(inst)
    assert out.dtype == np.int64 and out.tolist() == [[0, 2, 2, 4], [3, 0, 1, 4]]
    assert remap_label(np.zeros((2, 2), np.int32)).tolist() == [[0, 0], [0, 0]]
