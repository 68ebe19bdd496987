"""The same slide through each CPU backend gives the same nuclei (the trained default model)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_infer.backends import create_backend
from wsi_infer.compare import compare_labels
from wsi_infer.engine import RunParams, run_slide

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("precision", "min_pq"), [("fp32", 0.99), ("fp16", 0.95)])
def test_onnx_file_gives_the_nuclei_of_the_torch_backend(
    he_mosaic: np.ndarray,
    make_slide: Callable[..., Path],
    tmp_path: Path,
    precision: str,
    min_pq: float,
) -> None:
    from wsi_infer.export import export_onnx

    slide = make_slide("parity.tif", he_mosaic, mpp=0.25)
    onnx_file = tmp_path / f"default-{precision}.onnx"
    export_onnx("default", onnx_file, fp16=precision == "fp16")
    params = RunParams(tile_size=256)
    labels = {}
    for name, model in (("torch", "default"), ("onnxruntime", str(onnx_file))):
        out = tmp_path / f"{name}.zarr"
        run_slide(slide, out, create_backend(name, model), params)
        root = zarr.open_group(str(out), mode="r")
        assert root.attrs["wsi_infer"]["backend"]["name"] == name
        labels[name] = root["labels/nuclei/0"][:]
    assert labels["torch"].max() > 200
    pq = compare_labels(labels["torch"], labels["onnxruntime"]).pq
    print(f"PQ torch vs onnxruntime {precision}: {pq:.4f}")
    assert pq >= min_pq
