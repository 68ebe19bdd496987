"""Backends from one complete recipe; TensorRT's profile covers the run's tiles."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest

from wsi_infer.params import RunParams
from wsi_infer.predict import BackendSpec, _process_backend
from wsi_infer.recipe import BackendRecipe

HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "onnxscript"))


def test_the_run_makes_the_recipe_and_tensorrt_builds_for_its_tiles() -> None:
    params = RunParams(tile_size=512, overlap=64, batch_size=16)
    recipe = BackendRecipe.for_run(
        "tensorrt", "default", params, device="cuda:1", precision="fp16", cache_dir="/c"
    )
    assert recipe.tile_sizes == (512,) and recipe.batch == (1, 16, 16)
    opts = recipe.options()
    assert opts == {
        "cache_dir": "/c",
        "precision": "fp16",
        "min_batch": 1,
        "opt_batch": 16,
        "max_batch": 16,
        "tile_size": 512,
        "min_tile": 512,
        "max_tile": 512,
    }
    # the profile TensorRT is given takes the run's uint8 tiles, not the config's 256 px
    from wsi_infer.export.tensorrt_build import profile_for, profile_shapes

    profile = profile_for(
        256, **{k: v for k, v in opts.items() if k not in ("cache_dir", "precision")}
    )
    assert profile_shapes(profile) == ((1, 512, 512, 3), (16, 512, 512, 3), (16, 512, 512, 3))
    # without a tile size the config's is used, as before
    assert profile_shapes(profile_for(256))[1] == (8, 256, 256, 3)


def test_bad_profiles_and_recipes_are_refused() -> None:
    from wsi_infer.export.tensorrt_build import profile_for

    with pytest.raises(ValueError, match="multiples of 32"):
        profile_for(256, tile_size=500)
    with pytest.raises(ValueError, match="min_batch <= opt_batch"):
        profile_for(256, min_batch=4, opt_batch=2)
    with pytest.raises(ValueError, match="precision"):
        BackendRecipe("torch", "default", precision="int4")
    with pytest.raises(ValueError, match="batch profile"):
        BackendRecipe("torch", "default", batch=(2, 1, 4))
    with pytest.raises(ValueError, match="tile sizes"):
        BackendRecipe("tensorrt", "default", tile_sizes=(100,))


def test_export_cli_takes_tile_sizes_and_batch_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_infer.export.cli import export_command, main

    args = export_command.make_context(
        "wsi-infer-export",
        [
            "default",
            "--onnx",
            "m.onnx",
            "--tensorrt",
            "m.engine",
            "--tile-sizes",
            "512",
            "256",
            "--min-batch",
            "2",
            "--opt-batch",
            "8",
            "--max-batch",
            "64",
        ],
    ).params
    assert (args["tile_sizes"], args["min_batch"], args["opt_batch"], args["max_batch"]) == (
        [512, 256],
        2,
        8,
        64,
    )
    # a tile size the model cannot take fails at once, before any export, in one line
    rc = main(
        ["default", "--onnx", str(tmp_path / "m.onnx"), "--tensorrt", "x", "--tile-sizes", "500"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--tile-sizes [500]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_torch_recipe_is_complete_and_rebuilds_the_same_backend(tiny_model: Path) -> None:
    from wsi_infer.backends import create_backend

    backend = create_backend("torch", tiny_model, threads=1, precision="fp32")
    recipe = BackendRecipe.of(backend)
    assert (recipe.backend, recipe.model, recipe.device) == ("torch", str(tiny_model), "cpu")
    assert (recipe.threads, recipe.precision) == (1, "fp32")
    assert recipe.sha256 == backend.model_sha256
    shipped = pickle.loads(pickle.dumps(recipe))
    assert shipped == recipe and shipped.sha256 == recipe.sha256
    rebuilt, _ = _process_backend(shipped)
    tiles = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), np.uint8)
    np.testing.assert_array_equal(rebuilt(tiles), backend(tiles))
    assert BackendSpec is BackendRecipe


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime extra absent")
def test_onnxruntime_recipe_keeps_precision_cache_and_threads(
    tiny_model: Path, onnx_cache: Path, onnx_fp16: object
) -> None:
    """What the client built (fp16 export in its cache dir, one thread) is what a worker
    builds: before, the worker's copy fell back to fp32, the default cache and all cores."""
    from wsi_infer.backends import create_backend

    client = create_backend(
        "onnxruntime", tiny_model, threads=1, cache_dir=onnx_cache, precision="fp16"
    )
    recipe = BackendRecipe.of(client)
    assert (recipe.precision, recipe.threads, recipe.cache_dir) == ("fp16", 1, str(onnx_cache))
    _process_backend.cache_clear()
    worker, _ = _process_backend(pickle.loads(pickle.dumps(recipe)))
    assert worker is not client
    assert worker.precision == client.precision == "fp16"  # type: ignore[attr-defined]
    assert worker.onnx_path == client.onnx_path  # type: ignore[attr-defined]
    assert worker.onnx_path.parent == onnx_cache / "onnx"  # type: ignore[attr-defined]
    options = worker._session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1
    # its idle threads leave the cores to reading and segmentation
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime, onnx and onnxscript")
def test_onnxruntime_on_the_cpu_shares_the_cores_between_concurrent_calls(
    tiny_model: Path, onnx_cache: Path, onnx_fp32: object
) -> None:
    """The run's threads each get their share of the cores and call the model side by side;
    the maps are those of one call at a time on all cores."""
    import threading

    from wsi_infer.backends import cpu_cores
    from wsi_infer.predict import model_slots

    params = RunParams(tile_size=256, overlap=32, batch_size=2, threads=2)
    recipe = BackendRecipe.for_run("onnxruntime", tiny_model, params, cache_dir=onnx_cache)
    assert recipe.threads == max(1, cpu_cores() // 2)
    shared = recipe.build()
    assert shared.concurrency == cpu_cores() // recipe.threads
    assert model_slots(shared, params.threads) == min(2, shared.concurrency)
    assert model_slots(shared, 1) == 1
    # torch has one intra-op pool per process: one call at a time, its threads untouched
    assert BackendRecipe.for_run("torch", tiny_model, params).threads is None
    alone = BackendRecipe.for_run(
        "onnxruntime", tiny_model, params, threads=cpu_cores(), cache_dir=onnx_cache
    )
    single = alone.build()
    assert single.concurrency == 1

    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8) for _ in range(4)]
    expected = [single(b) for b in batches]
    got: list[np.ndarray | None] = [None] * len(batches)

    def call(k: int) -> None:
        got[k] = shared(batches[k])

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(batches))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for e, g in zip(expected, got, strict=True):
        assert g is not None and np.array_equal(e, g)
