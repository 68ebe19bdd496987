"""Identities that are checked, not claimed: model files, slides, and what workers see.

ONNX files are built with ``onnx.helper`` (a real graph run by a real ONNX Runtime)
and carry the metadata wsi-infer's exporter writes for the bundled model, so a file
that merely claims to be that model is tested as the issue found it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from helpers import assert_same_store, invoke
from numpy.typing import NDArray

from wsi_infer.config import ModelConfig
from wsi_infer.errors import IdentityMismatchError
from wsi_infer.identity import slide_identity
from wsi_infer.model import file_sha256, resolve_checkpoint

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from wsi_infer.export.onnx_export import (  # noqa: E402
    FORMAT_VERSION,
    META_CONFIG,
    META_FORMAT,
    META_PRECISION,
    META_SOURCE_SHA256,
    convert_to_fp16,
)

#: An ONNX model over the whole 1024 px crop in 64 px tiles: 256 model calls, long enough
#: to be killed midway.
ONNX_RUN = ("--backend", "onnxruntime", "--tile-size", "64", "--overlap", "0")
ONNX_RUN += ("--batch-size", "1", "--no-tissue-mask", "-q")


def one_line_error(code: int, stderr: str, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("wsi-infer: error:") and "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def bundled_metadata(precision: str) -> dict[str, str]:
    """The wsi-infer metadata the exporter writes for the bundled model."""
    ckpt = resolve_checkpoint("default")
    config = ModelConfig.from_json(ckpt / "config.json")
    return {
        META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
        META_SOURCE_SHA256: file_sha256(ckpt / "model.safetensors"),
        META_PRECISION: precision,
        META_FORMAT: FORMAT_VERSION,
    }


def save(nodes: list[Any], inits: list[Any], path: Path, precision: str, channels: int) -> Path:
    """A format-2 graph: ``tiles`` uint8 (B, H, W, 3) in, ``maps`` uint8 (B, H, W, channels)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("tiles", TensorProto.UINT8, ["batch", "h", "w", 3])],
        [helper.make_tensor_value_info("maps", TensorProto.UINT8, ["batch", "h", "w", channels])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    if precision == "fp16":
        proto = convert_to_fp16(proto)
    for key, value in bundled_metadata(precision).items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return path


def dark_nuclei_onnx(path: Path, precision: str = "fp32") -> Path:
    """A real 8-logit model ending in the engine's maps: dark (haematoxylin) pixels are
    nuclei, their darkest cores markers (a 1x1 convolution on the normalised tiles, then
    sigmoid, softmax over the nucleus classes and the uint8 maps, as the exporter's graph)."""
    from onnx import helper, numpy_helper

    config = ModelConfig.from_json(resolve_checkpoint("default") / "config.json")
    w = np.zeros((3, 8), np.float32)
    w[:, 0:2] = -4.0  # foreground and distance grow with darkness
    b = np.array([-2.0, -6.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], np.float32)
    consts = {
        "w": w,
        "b": b,
        "k255": np.array(255.0, np.float32),
        "one": np.array(1.0, np.float32),
        "mean": np.asarray(config.mean, np.float32),
        "std": np.asarray(config.std, np.float32),
        "s0": np.array([0], np.int64),
        "s2": np.array([2], np.int64),
        "s3": np.array([3], np.int64),
        "s8": np.array([8], np.int64),
        "ax": np.array([-1], np.int64),
    }
    node = helper.make_node
    nodes = [
        node("Cast", ["tiles"], ["x"], to=onnx.TensorProto.FLOAT),
        node("Div", ["x", "k255"], ["x1"]),
        node("Sub", ["x1", "mean"], ["x2"]),
        node("Div", ["x2", "std"], ["x3"]),
        node("MatMul", ["x3", "w"], ["xw"]),
        node("Add", ["xw", "b"], ["logits"]),  # (B, H, W, 8)
        node("Slice", ["logits", "s0", "s2", "ax"], ["fd"]),
        node("Sigmoid", ["fd"], ["fd_p"]),
        node("Mul", ["fd_p", "k255"], ["fd_255"]),
        node("Slice", ["logits", "s3", "s8", "ax"], ["types"]),
        node("Softmax", ["types"], ["tp"], axis=-1),
        node("ArgMax", ["tp"], ["cls0"], axis=-1, keepdims=1),
        node("Cast", ["cls0"], ["cls0f"], to=onnx.TensorProto.FLOAT),
        node("Add", ["cls0f", "one"], ["cls"]),
        node("ReduceMax", ["tp", "ax"], ["prob"], keepdims=1),
        node("Mul", ["prob", "k255"], ["prob_255"]),
        node("Concat", ["fd_255", "cls", "prob_255"], ["cat"], axis=-1),
        node("Round", ["cat"], ["rounded"]),
        node("Cast", ["rounded"], ["maps"], to=onnx.TensorProto.UINT8),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    return save(nodes, inits, path, precision, 4)


def identity_onnx(path: Path) -> Path:
    """A graph that outputs its input, dressed in the bundled model's metadata."""
    node = onnx.helper.make_node("Identity", ["tiles"], ["maps"])
    return save([node], [], path, "fp32", 3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "fp32": dark_nuclei_onnx(folder / "fp32.onnx"),
        "fp16": dark_nuclei_onnx(folder / "fp16.onnx", "fp16"),
        "identity": identity_onnx(folder / "identity.onnx"),
    }


@pytest.fixture(scope="module")
def crop(cmu_crop: Callable[..., Path]) -> Path:
    return cmu_crop("identity-crop.tif", 1024)


def test_a_file_claiming_to_be_the_bundled_model_is_refused_at_load(
    models: dict[str, Path], crop: Path, tmp_path: Path
) -> None:
    from wsi_infer.model import model_config

    side = 2 * model_config("default").input_multiple  # the load check's probe
    out = tmp_path / "r.zarr"
    code, _, err = invoke(crop, "--out", out, "--model", models["identity"], *ONNX_RUN)
    one_line_error(
        code,
        err,
        str(models["identity"]),
        f"outputs uint8 (1, {side}, {side}, 3)",
        f"(1, {side}, {side}, 4)",
    )
    assert not out.exists()


@pytest.mark.slow
def test_the_store_records_the_file_that_ran_and_precisions_never_mix(
    models: dict[str, Path], crop: Path, tmp_path: Path
) -> None:
    fp32, fp16 = models["fp32"], models["fp16"]
    reference = tmp_path / "fp32.zarr"
    code, _, err = invoke(crop, "--out", reference, "--model", fp32, *ONNX_RUN)
    assert code == 0, err
    info = zarr.open_group(str(reference), mode="r").attrs["wsi_infer"]
    assert info["model"]["sha256"] == file_sha256(fp32) != file_sha256(fp16)
    assert info["model"]["precision"] == "fp32"
    assert info["model"]["source_sha256"] == bundled_metadata("fp32")[META_SOURCE_SHA256]
    assert info["nuclei"] > 100
    # a complete fp32 store is not taken as done by an fp16 run
    code, _, err = invoke(crop, "--out", reference, "--model", fp16, *ONNX_RUN)
    one_line_error(code, err, str(reference), "another model", "--overwrite")

    # an fp32 run killed midway is not finished by an fp16 one
    out = tmp_path / "r.zarr"
    cmd = [sys.executable, "-m", "wsi_infer", str(crop), "--out", str(out), "--model", str(fp32)]
    scratch = out / "_scratch" / "maps" / "c"
    with subprocess.Popen([*cmd, *ONNX_RUN], stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 300
        while not (scratch.exists() and any(scratch.rglob("0"))):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert zarr.open_group(str(out), mode="r").attrs["wsi_infer"]["status"] == "running"
    before = sorted(p for p in scratch.rglob("*") if p.is_file())
    code, _, err = invoke(crop, "--out", out, "--model", fp16, *ONNX_RUN)
    one_line_error(code, err, "another model")
    assert sorted(p for p in scratch.rglob("*") if p.is_file()) == before
    code, _, err = invoke(crop, "--out", out, "--model", fp32, *ONNX_RUN)
    assert code == 0, err
    assert_same_store(out, reference)


def write_plain_tiff(path: Path, image: NDArray[np.uint8]) -> Path:
    """An uncompressed tiled TIFF at 0.25 µm/px: its size depends on its shape only."""
    import tifffile

    tifffile.imwrite(
        path,
        image,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    return path


def test_a_slide_replaced_by_one_of_equal_size_and_head_is_noticed(
    data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from PIL import Image

    folder = data / "nuclei" / "consep" / "test" / "images"
    patches = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())[:24]]
    rows = [np.concatenate(patches[4 * r : 4 * r + 4], axis=1) for r in range(6)]
    first = np.ascontiguousarray(np.concatenate(rows[:4], axis=0))  # 1024 x 1024
    second = first.copy()
    second[768:] = np.concatenate(rows[4:], axis=0)[:256]  # other tissue in the last tile row
    slide = write_plain_tiff(tmp_path / "slide.tif", first)
    other = write_plain_tiff(tmp_path / "other.tif", second)
    assert slide.stat().st_size == other.stat().st_size > 3 << 20
    with slide.open("rb") as a, other.open("rb") as b:
        assert a.read(1 << 20) == b.read(1 << 20)
    out = tmp_path / "r.zarr"
    args = ("--out", out, "--model", tiny_model, "--backend", "torch", "--tile-size", "256", "-q")
    code, _, err = invoke(slide, *args)
    assert code == 0, err
    stamp = slide.stat().st_mtime_ns
    shutil.copy(other, slide)
    os.utime(slide, ns=(stamp, stamp))  # same size, same first MiB, same time: only content
    code, _, err = invoke(slide, *args)
    one_line_error(code, err, str(out), "another slide", "--overwrite")


def test_a_worker_refuses_another_slide_or_store_at_the_same_path(
    crop: Path, cmu_crop: Callable[..., Path], tiny_model: Path, tmp_path: Path
) -> None:
    """What a dask worker checks before its first tile: the client's slide and store."""
    from wsi_infer.backends import create_backend
    from wsi_infer.engine import RunParams, run_slide
    from wsi_infer.predict import BackendSpec, PredictJob, predict_tiles
    from wsi_infer.tiling import TileGrid

    backend = create_backend("torch", tiny_model)
    store = tmp_path / "r.zarr"
    run_slide(crop, store, backend, RunParams(tile_size=256))
    root = zarr.open_group(str(store), mode="r")
    store_id = root.attrs["wsi_infer"]["store_id"]
    other_store = shutil.copytree(store, tmp_path / "other.zarr")
    zarr.open_group(str(other_store), mode="r+").attrs["wsi_infer"] = {
        **root.attrs["wsi_infer"],
        "store_id": "0" * 32,
    }
    (Path(store) / "_scratch" / "maps").mkdir(parents=True)  # a scratch array to write into
    zarr.create_array(str(store / "_scratch" / "maps"), shape=(64, 64, 4), dtype="uint8")
    decoy = cmu_crop("identity-decoy.tif", 1024, flip=True)

    def job(slide: Path, where: Path) -> PredictJob:
        return PredictJob(
            str(slide),
            slide_identity(crop).content,
            str(where),
            store_id,
            1.0,
            TileGrid(64, 64, 64, 0),
            None,
            BackendSpec.of(backend),
        )

    with pytest.raises(
        IdentityMismatchError, match=re.escape(f"{decoy}: this worker sees another file")
    ):
        predict_tiles(job(decoy, store), [(0, 0)])
    with pytest.raises(IdentityMismatchError, match="does not see the client's store"):
        predict_tiles(job(crop, Path(other_store)), [(0, 0)])
    with pytest.raises(IdentityMismatchError, match="does not see the client's store"):
        predict_tiles(job(crop, tmp_path / "missing.zarr"), [(0, 0)])
    # the client's slide and store: the tile is predicted and written
    assert predict_tiles(job(crop, store), [(0, 0)]).tiles == [(0, 0)]
    assert (store / "_scratch" / "maps" / "c" / "0" / "0" / "0").is_file()


def test_slide_identity_reads_a_bounded_sample(tmp_path: Path) -> None:
    """A 1 GiB file is identified from ~3 MiB: its head, 32 spread blocks and its tail."""
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB, sparse
    a = slide_identity(big)
    with big.open("r+b") as fh:
        fh.seek((1 << 29) + 12345)  # somewhere in the middle...
        fh.write(b"x")
    b = slide_identity(big)
    assert a.size == b.size and a.sample_sha256 == b.sample_sha256  # ...between the samples
    with big.open("r+b") as fh:
        fh.seek((1 << 30) - 10)  # the tail is always read
        fh.write(b"x")
    assert slide_identity(big).sample_sha256 != a.sample_sha256


def test_tiles_whose_maps_are_not_in_the_store_are_listed(tmp_path: Path) -> None:
    """What the engine checks before it seals a store: every predicted tile is in it."""
    from wsi_infer.predict import missing_tiles

    maps = zarr.create_array(
        str(tmp_path / "r.zarr" / "_scratch" / "maps"),
        shape=(300, 300, 4),
        chunks=(100, 100, 4),
        dtype="uint8",
        fill_value=0,
    )
    maps[0:100, 100:200] = 7  # tile (0, 1)
    maps[200:300, 0:100] = 7  # tile (2, 0)
    tiles = [(0, 0), (0, 1), (2, 0), (2, 2)]
    assert missing_tiles(tmp_path / "r.zarr", tiles) == [(0, 0), (2, 2)]
    assert missing_tiles(tmp_path / "elsewhere.zarr", tiles) == tiles
