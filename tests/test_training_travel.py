"""Training folders packed for a device call: the same samples, PNGs as JPEG, nothing overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_infer.training.data import FolderSource
from wsi_infer.training.travel import main, pack_folder


def _png_folder(data: Path, dest: Path, n: int = 4) -> Path:
    """The first ``n`` bundled CoNSeP test patches as a PNG folder with per-image masks."""
    src = data / "nuclei" / "consep" / "test"
    with np.load(src / "labels.npz") as z:
        names = [str(x) for x in z["names"][:n]]
        inst = z["inst"][:n]
    (dest / "images").mkdir(parents=True)
    for name in names:
        with Image.open(src / "images" / f"{name}.jpg") as im:
            im.convert("RGB").save(dest / "images" / f"{name}.png")
    np.savez(
        dest / "labels.npz",
        names=np.array(names),
        mpp=np.array([0.25] * n),
        **{f"inst_{name}": inst[i] for i, name in enumerate(names)},
    )
    return dest


def test_packed_folder_holds_the_same_samples(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _png_folder(data, tmp_path / "src" / "tissue" / "train")
    (folder / "images" / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="wsi_infer.training.travel"):
        packed = pack_folder(folder, tmp_path / "out")
    assert "notes.txt: not an image the training data reads" in caplog.text
    assert packed == tmp_path / "out" / "tissue" / "train"  # split folders keep their parent
    assert (packed / "labels.npz").read_bytes() == (folder / "labels.npz").read_bytes()
    assert sorted(p.suffix for p in (packed / "images").iterdir()) == [".jpg"] * 4
    before, after = FolderSource(folder), FolderSource(packed)
    assert after.names == before.names and after.tissue == before.tissue == "tissue"
    for i in range(len(before)):
        a, b = before[i], after[i]
        assert np.array_equal(a.inst, b.inst) and np.array_equal(a.types, b.types)
        diff = np.abs(a.image.astype(np.int16) - b.image.astype(np.int16))
        assert 0 < diff.mean() < 3.0  # re-encoded, close to the original


def test_jpeg_images_travel_unchanged_and_nothing_is_overwritten(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "consep"
    shutil.copytree(data / "nuclei" / "consep" / "test", src)
    assert main([str(src), "--out", str(tmp_path / "out")]) == 0
    packed = tmp_path / "out" / "consep"
    for image in (src / "images").iterdir():
        assert (packed / "images" / image.name).read_bytes() == image.read_bytes()
    assert "MiB" in capsys.readouterr().out
    (packed / "labels.npz").write_bytes(b"kept")
    assert main([str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1
    assert (packed / "labels.npz").read_bytes() == b"kept"
    not_a_folder = tmp_path / "empty"
    not_a_folder.mkdir()
    assert main([str(not_a_folder), "--out", str(tmp_path / "o2")]) == 1
    assert "not a training folder" in capsys.readouterr().err
