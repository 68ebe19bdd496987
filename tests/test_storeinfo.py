"""The store's provenance, typed (wsi_infer.storeinfo): written and read back equal, and the
stores written before it (by the code that kept it as a plain dict) still read, verify and
resume."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from helpers import invoke

from wsi_infer.errors import IncompleteStoreError
from wsi_infer.store import read_table
from wsi_infer.storeinfo import (
    ATTR,
    BackendRecord,
    ClassStatistics,
    ModelRecord,
    SlideRecord,
    SoftwareRecord,
    Statistics,
    StoreInfo,
    TissueRecord,
)

#: A store written by wsi-infer before StoreInfo (its root attribute a plain dict; the
#: slide's path and the model's source made relative, which no digest covers).
BEFORE = Path(__file__).parent / "data" / "store-before-storeinfo"


def _full_info() -> StoreInfo:
    return StoreInfo(
        software=SoftwareRecord(name="wsi-infer", version="9.9"),
        model=ModelRecord.of(
            {"name": "m", "mpp": 0.5, "class_names": ["a", "b"], "class_colours": [[1, 2, 3]] * 2},
            sha256="1" * 64,
            precision="fp16",
            source="model.onnx",
            source_sha256="2" * 64,
        ),
        backend=BackendRecord(name="onnxruntime", device="cpu"),
        parameters={"tile_size": 512, "threads": 2, "tissue": {"enabled": True}},
        slide=SlideRecord(
            path="/slides/a.svs",
            name="a.svs",
            size_bytes=10,
            mtime_ns=11,
            sample_sha256="3" * 64,
            reader="openslide",
            vendor="aperio",
            dimensions=(100, 80),
            levels=2,
            mpp=0.25,
            mpp_source="metadata",
        ),
        run_mpp=0.5,
        grid_shape=(40, 50),
        grid_to_level0=2.0,
        tissue=TissueRecord(mpp=8.0, fraction=0.25),
        tiles=6,
        fingerprint={"slide": {"path": "/slides/a.svs"}},
        store_id="abc",
        started="2026-01-01T00:00:00+00:00",
        status="complete",
        nuclei=3,
        stage="written",
        statistics=Statistics(
            nuclei=3,
            tissue_area_mm2=0.5,
            density_per_mm2=6.0,
            mean_area_um2=None,
            classes={"a": ClassStatistics(count=3, fraction=1.0), "b": ClassStatistics(count=0)},
            warnings=({"code": "density", "message": "too few", "figures": {}},),
        ),
        digests={"labels": "4" * 64},
        finished="2026-01-01T00:01:00+00:00",
        seconds=60.0,
        timings={"predict_s": 50.0},
        extra={"added_later": [1, 2]},
    )


def test_write_then_read_is_equal(tmp_path: Path) -> None:
    info = _full_info()
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    info.write(group)
    again = StoreInfo.read(zarr.open_group(str(tmp_path / "s.zarr"), mode="r"))
    assert again == info
    assert again.model.class_names == ("a", "b") and again.warning_lines == ["too few"]
    # JSON of its own: nothing but plain values, and the same bytes every time
    assert json.dumps(info.to_dict()) == json.dumps(again.to_dict())
    minimal = StoreInfo(
        model=ModelRecord(),
        slide=SlideRecord(path="x", mpp=1.0),
        run_mpp=1.0,
        grid_shape=(1, 1),
        grid_to_level0=1.0,
        status="running",
    )
    assert StoreInfo.parse("m", minimal.to_dict()) == minimal
    assert set(minimal.to_dict()) == {
        "model",
        "slide",
        "run_mpp",
        "grid_shape",
        "grid_to_level0",
        "status",
    }


def _before_attrs() -> dict[str, Any]:
    attrs: dict[str, Any] = json.loads((BEFORE / "zarr.json").read_text(encoding="utf-8"))
    return attrs["attributes"][ATTR]


def test_the_attribute_of_an_older_store_reads_whole_and_writes_back_unchanged() -> None:
    raw = _before_attrs()
    info = StoreInfo.parse(BEFORE, raw)
    assert info.to_dict() == raw
    assert json.dumps(info.to_dict()) == json.dumps(raw)  # the same keys in the same order
    assert info.status == "complete" and info.nuclei == 0 and info.tiles == 4
    assert info.model.class_names[0] == "neoplastic" and len(info.model.class_colours) == 5
    assert info.model.sha256 is not None and info.model.config["tile_size"] == 256
    assert info.parameters is not None and info.parameters["workers"] == 2  # the former name
    assert info.slide.mpp == 1.0 and info.slide.dimensions == (384, 384)
    assert info.tissue == TissueRecord(mpp=6.0, fraction=0.90576171875)
    assert info.statistics is not None and info.statistics.classes["dead"].count == 0
    assert info.warning_lines and "nuclei per mm²" in info.warning_lines[0]


def test_an_older_store_verifies_and_reads(tmp_path: Path) -> None:
    store = tmp_path / "old.zarr"
    shutil.copytree(BEFORE, store)
    code, out, err = invoke("inspect", store, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["verified"] is True and summary["problems"] == []
    assert summary["parameters"]["workers"] == 2
    assert summary["statistics"]["nuclei"] == 0 and summary["grid"]["shape"] == [384, 384]
    assert len(read_table(store)) == 0
    # a damaged one is still caught (the digests were written by the older code)
    (store / "labels" / "tissue" / "0" / "c" / "0" / "0").write_bytes(b"broken")
    code, out, err = invoke("inspect", store, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["verified"] is False and "labels/tissue/0" in summary["problems"][0]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"grid_shape": "384x384"}, "grid_shape"),
        ({"model": {"class_names": "a b"}}, "model.class_names"),
        ({"tiles": "four"}, "tiles"),
        ({"statistics": {"nuclei": 0}}, "statistics.tissue_area_mm2"),
        ({"status": None}, "status"),
        ({"status": "done"}, "status"),
    ],
)
def test_a_garbled_attribute_is_refused_in_one_line(change: dict[str, Any], named: str) -> None:
    raw = {**_before_attrs(), **change}
    with pytest.raises(IncompleteStoreError) as caught:
        StoreInfo.parse("s.zarr", raw)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("s.zarr: ") and named in message


def _slide(make_slide: Callable[..., Path]) -> Path:
    rng = np.random.default_rng(0)
    img = np.full((384, 384, 3), 235, np.uint8)
    yy, xx = np.mgrid[:384, :384]
    for _ in range(60):
        cy, cx = rng.integers(20, 364, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 60)] = (90, 40, 120)
    img[40:340, 40:340] = np.minimum(img[40:340, 40:340], (220, 150, 200))
    return make_slide("storeinfo.tiff", img, 1.0)


def _as_before(store: Path, **changes: Any) -> None:
    """Rewrite the store's attribute as the code before StoreInfo wrote it: a plain dict
    whose parameters name the thread count ``workers``."""
    meta = json.loads((store / "zarr.json").read_text(encoding="utf-8"))
    info = meta["attributes"][ATTR]
    info["parameters"] = {
        ("workers" if k == "threads" else k): v for k, v in info["parameters"].items()
    }
    for k, v in changes.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    (store / "zarr.json").write_text(json.dumps(meta), encoding="utf-8")


def test_an_older_store_is_skipped_or_resumed_by_the_same_command(
    tiny_model: Path, make_slide: Callable[..., Path], tmp_path: Path
) -> None:
    slide = _slide(make_slide)
    store = tmp_path / "r.zarr"
    args = (slide, "--out", store, "--model", tiny_model, "--backend", "torch")
    args = (*args, "--tile-size", "256", "--overlap", "64")
    code, _, err = invoke(*args, "-q")
    assert code == 0, err
    first = StoreInfo.read(zarr.open_group(str(store), mode="r"))
    assert first.parameters is not None and "threads" in first.parameters
    _as_before(store)
    code, out, err = invoke(*args)
    assert code == 0 and "already complete" in out, err
    # killed after the results were written, before the seal: the same command finishes it
    _as_before(store, status="running", digests=None, finished=None, seconds=None)
    code, _, err = invoke(*args, "-q")
    assert code == 0, err
    done = StoreInfo.read(zarr.open_group(str(store), mode="r"))
    assert done.status == "complete" and done.digests
    assert done.parameters is not None and done.parameters["workers"] == 2
    assert (done.nuclei, done.tiles, done.fingerprint) == (
        first.nuclei,
        first.tiles,
        first.fingerprint,
    )
    code, out, _ = invoke("inspect", store, "--json")
    assert code == 0 and json.loads(out)["verified"] is True
