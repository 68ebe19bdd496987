"""Stitching round trip: known nuclei, cut into windows with seams, come back exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from numpy.typing import NDArray
from scipy import ndimage as ndi

from wsi_infer.params import RunParams
from wsi_infer.postprocess import PostprocessParams, renumber_raster, segment
from wsi_infer.stitch import stitch
from wsi_infer.store import PyramidStream, pyramid_levels


def random_nuclei(shape: tuple[int, int], n: int, seed: int, touching: bool) -> NDArray[np.int32]:
    """Ellipse-ish nuclei of 5..14 px radius; separated by background unless ``touching``."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(5, 14, size=2)
        disk = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        grown = ndi.binary_dilation(disk, iterations=0 if touching else 2)
        if disk.sum() < 20 or ((labels[grown] > 0).any() and not touching):
            continue
        if touching and (labels[disk] > 0).mean() > 0.2:
            continue
        k += 1
        labels[disk & (labels == 0)] = k
    return renumber_raster(labels)


def maps_from_labels(labels: NDArray[np.int32]) -> NDArray[np.uint8]:
    """The maps a perfect model would give: foreground, normalised distance, class."""
    maps = np.zeros((*labels.shape, 4), np.uint8)
    maps[..., 0] = np.where(labels > 0, 255, 0)
    dist = np.zeros(labels.shape, np.float64)
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = np.pad(labels[sl] == k, 1)
        d = ndi.distance_transform_edt(m)[1:-1, 1:-1]
        dist[sl][labels[sl] == k] = (d / d.max())[labels[sl] == k]
    maps[..., 1] = np.rint(dist * 255)
    maps[..., 2] = np.where(labels > 0, 1 + labels % 5, 0)
    maps[..., 3] = np.where(labels > 0, 200, 255)
    return maps


def run_stitch(maps: NDArray[np.uint8], **kw: Any) -> tuple[NDArray[np.uint32], int, list[dict]]:
    params = RunParams(**{"label_chunk": 64, "window_cols": 128, "margin": 64, **kw})
    out = np.zeros(maps.shape[:2], np.uint32)
    types = np.zeros(maps.shape[:2], np.uint8)
    bands: list[dict] = []
    n = stitch(maps, out, types, params, on_band=bands.append)
    return out, n, bands


def assert_same_partition(a: NDArray, b: NDArray) -> None:
    """Equal up to renaming of labels: a bijection between instances, pixel for pixel."""
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_separated_nuclei(seed: int) -> None:
    truth = random_nuclei((300, 420), 150, seed, touching=False)
    out, n, bands = run_stitch(maps_from_labels(truth))
    assert n == truth.max() > 100
    # every nucleus back, whole, exactly once; ids 1..n
    assert_same_partition(out, truth)
    assert sorted(np.unique(out[out > 0]).tolist()) == list(range(1, n + 1))
    ids = np.concatenate([b["id"] for b in bands if len(b["id"])])
    assert ids.tolist() == list(range(1, n + 1))
    # many nuclei straddle a window seam (rows every 64, columns every 128)
    seam_rows = out[63::64][:, :] if out.shape[0] > 64 else out[:0]
    crossing = {int(v) for v in np.unique(seam_rows) if v} & {
        int(v) for v in np.unique(out[64::64]) if v
    }
    assert len(crossing) >= 5


@pytest.mark.parametrize("min_marker_area", [0, 110])
def test_stitched_equals_whole_image_segmentation_for_touching_nuclei(
    min_marker_area: int,
) -> None:
    truth = random_nuclei((320, 448), 220, 7, touching=True)
    maps = maps_from_labels(truth)
    # lower cores: touching nuclei share pieces of foreground with several cores, some small
    maps[..., 1] = np.where(maps[..., 1] > 60, np.minimum(maps[..., 1].astype(int) + 40, 255), 0)
    post = PostprocessParams(marker_threshold=0.5, min_marker_area=min_marker_area)
    whole = segment(maps, post)
    if min_marker_area:  # some cores are too small to seed a nucleus of their own
        assert whole.max() < segment(maps).max()
    out, n, _ = run_stitch(maps, post=post)
    assert n == whole.max()
    assert_same_partition(out, whole)
    again, _, _ = run_stitch(maps, post=post, label_chunk=128, window_cols=128)
    assert_same_partition(again, out)


def test_table_rows_agree_with_labels() -> None:
    truth = random_nuclei((256, 256), 80, 3, touching=False)
    out, n, bands = run_stitch(maps_from_labels(truth))
    rows = {k: np.concatenate([b[k] for b in bands if len(b["id"])]) for k in bands[0]}
    area = np.bincount(out.ravel(), minlength=n + 1)[1:]
    np.testing.assert_allclose(rows["area_um2"], area)  # 1 mpp, scale 1
    for i, (x0, y0, x1, y1) in zip(rows["id"], rows["bbox"], strict=True):
        ys, xs = np.nonzero(out == i)
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)
    cx = np.bincount(out.ravel(), weights=np.indices(out.shape)[1].ravel())[1:] / area
    np.testing.assert_allclose(rows["centroid"][:, 0], cx, atol=1e-3)


def test_window_size_does_not_change_result() -> None:
    truth = random_nuclei((300, 300), 120, 11, touching=True)
    maps = maps_from_labels(truth)
    a, na, _ = run_stitch(maps, label_chunk=64, window_cols=64)
    b, nb, _ = run_stitch(maps, label_chunk=128, window_cols=256)
    assert na == nb
    assert_same_partition(a, b)


def test_pyramid_levels_streamed_with_the_stitch_are_level_0_subsampled(tmp_path: Path) -> None:
    # the coarser levels are written from the rows the stitch hands over, band by band,
    # never read back: each level is level 0 taken every 2**k rows and columns
    truth = random_nuclei((300, 420), 150, 5, touching=False)
    root = zarr.open_group(tmp_path / "labels.zarr", mode="w")
    nuclei = root.create_group("nuclei")
    types = root.create_group("types")
    base_n = nuclei.create_array("0", shape=truth.shape, chunks=(64, 64), dtype="uint32")
    base_t = types.create_array("0", shape=truth.shape, chunks=(64, 64), dtype="uint8")
    streams = [PyramidStream(nuclei, 64), PyramidStream(types, 64)]
    seen: list[int] = []

    def on_rows(y0: int, labels: NDArray[np.uint32], classes: NDArray[np.uint8]) -> None:
        seen.append(y0)
        streams[0].add(y0, labels)
        streams[1].add(y0, classes)

    params = RunParams(tile_size=128, overlap=32, label_chunk=64, window_cols=128, margin=32)
    n = stitch(maps_from_labels(truth), base_n, base_t, params, on_rows=on_rows)
    for s in streams:
        s.close()
    assert n == truth.max() and seen == list(range(0, 300, 64))
    levels = pyramid_levels(truth.shape, 64)
    assert streams[0].levels == levels == 4  # 420 -> 210 -> 105 -> 53 columns
    for group in (nuclei, types):
        base = np.asarray(group["0"][:])
        assert base.any()
        for k in range(1, levels):
            np.testing.assert_array_equal(group[str(k)][:], base[:: 2**k, :: 2**k])
        assert str(levels) not in group


def test_a_pyramid_stream_takes_rows_in_any_runs_but_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 5, (101, 77), dtype=np.uint8)
    group = zarr.open_group(tmp_path / "p.zarr", mode="w")
    group.create_array("0", data=base, chunks=(8, 8))
    stream = PyramidStream(group, 8)
    y = 0
    for size in (1, 2, 7, 9, 30, 52):  # runs that start on odd rows too
        rows = base[y : y + size].copy()
        stream.add(y, rows)
        rows[:] = 0  # the caller reuses its buffer
        y += size
    stream.close()
    assert y == 101 and stream.levels == pyramid_levels(base.shape, 8) == 5
    for k in range(1, 5):
        np.testing.assert_array_equal(group[str(k)][:], base[:: 2**k, :: 2**k])
    again = PyramidStream(group, 8)  # levels made anew, as a resumed run makes them
    again.add(0, base[:10])
    with pytest.raises(ValueError, match="out of order"):
        again.add(12, base[12:20])
