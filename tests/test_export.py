"""ONNX export: checker, embedded contract, parity with PyTorch on real H&E tiles, dynamic axes.

The exported graph takes uint8 RGB tiles and returns the engine's compact uint8 maps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from testdata import CMU_SLIDE

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import torch  # noqa: E402

from wsi_infer.config import ModelConfig  # noqa: E402
from wsi_infer.errors import BackendUnavailableError, CheckpointError  # noqa: E402
from wsi_infer.export import (  # noqa: E402
    TOLERANCES,
    ExportReport,
    ParityError,
    build_tensorrt_engine,
    read_onnx_contract,
)
from wsi_infer.export.cli import main as export_main  # noqa: E402
from wsi_infer.export.onnx_export import _parity  # noqa: E402
from wsi_infer.model import NucleusSegFormer, file_sha256, load_model  # noqa: E402
from wsi_infer.postprocess import logits_to_maps  # noqa: E402
from wsi_infer.tilemaps import TileMaps  # noqa: E402

CONFIG = ModelConfig(mpp=1.0, stem_channels=4)  # the tiny model's


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path) -> Path:
    """The tiny model, which the session's ``onnx_fp32`` and ``onnx_fp16`` exported."""
    return tiny_model


@pytest.fixture(scope="module")
def fp32(onnx_fp32: ExportReport) -> ExportReport:
    return onnx_fp32


@pytest.fixture(scope="module")
def fp16(onnx_fp16: ExportReport) -> ExportReport:
    return onnx_fp16


_MODULES: dict[Path, NucleusSegFormer] = {}


def _torch_logits(checkpoint: Path, tiles: np.ndarray) -> np.ndarray:
    """The plain network's logits, normalised on the host as the engine used to."""
    if checkpoint not in _MODULES:
        _MODULES[checkpoint] = load_model(checkpoint).module
    mean, std = np.asarray(CONFIG.mean, np.float32), np.asarray(CONFIG.std, np.float32)
    x = np.ascontiguousarray(
        ((tiles.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    )
    with torch.inference_mode():
        out: np.ndarray = _MODULES[checkpoint](torch.from_numpy(x)).numpy()
    return out


def _run(path: Path, tiles: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {"tiles": tiles})[0]
    return out


def _steps(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Largest probability difference (1/255 steps) and share of pixels whose class differs."""
    diff = np.abs(a[..., [0, 1, 3]].astype(int) - b[..., [0, 1, 3]])
    return int(diff.max()), float((a[..., 2] != b[..., 2]).mean())


def test_export_passes_checker_with_named_dynamic_axes(fp32: ExportReport) -> None:
    onnx.checker.check_model(str(fp32.onnx_path), full_check=True)
    model = onnx.load(str(fp32.onnx_path))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("tiles", "maps")

    def dims(v: object) -> list[object]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # type: ignore[attr-defined]

    assert dims(inp) == ["batch", "height", "width", 3]
    assert dims(out) == ["batch", "height", "width", 4]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert fp32.dynamic_batch and fp32.dynamic_hw
    assert fp32.sha256 == file_sha256(fp32.onnx_path)
    assert "parity" in fp32.summary() and "given tiles" in fp32.summary()


def test_metadata_round_trip(fp32: ExportReport, checkpoint: Path) -> None:
    contract = read_onnx_contract(fp32.onnx_path)
    original = load_model(checkpoint).config
    assert contract.config == original
    assert contract.config.to_dict() == original.to_dict()
    assert contract.source_sha256 == file_sha256(checkpoint / "model.safetensors")
    assert contract.precision == "fp32"
    # onnxruntime exposes the same map: the file alone is enough to run
    sess = ort.InferenceSession(str(fp32.onnx_path), providers=["CPUExecutionProvider"])
    assert read_onnx_contract(sess.get_modelmeta().custom_metadata_map).config == original


def test_graph_maps_are_the_engines_maps_of_the_logits(
    fp32: ExportReport, checkpoint: Path, he_tiles: np.ndarray
) -> None:
    """Normalisation, sigmoid, softmax over the nucleus classes and rounding in the graph
    give what the host computed from float32 logits before."""
    host = logits_to_maps(_torch_logits(checkpoint, he_tiles))
    with torch.inference_mode():
        module = TileMaps(load_model(checkpoint).module, CONFIG).eval()
        in_torch = module(torch.from_numpy(he_tiles)).numpy()
    got = _run(fp32.onnx_path, he_tiles)
    assert got.dtype == in_torch.dtype == np.uint8
    assert got.shape == in_torch.shape == host.shape == (3, 256, 256, 4)
    np.testing.assert_array_equal(in_torch, host)  # same float32 arithmetic, same rounding
    step, flips = _steps(got, host)
    assert step <= 1 and flips <= 1e-3  # onnxruntime's kernels differ in the last bits
    assert got[..., 2].min() >= 1 and got[..., 3].min() >= 255 // CONFIG.num_classes


def test_fp32_parity_on_real_tiles(
    fp32: ExportReport, checkpoint: Path, he_tiles: np.ndarray
) -> None:
    with torch.inference_mode():
        ref = TileMaps(load_model(checkpoint).module, CONFIG).eval()(torch.from_numpy(he_tiles))
    step, flips = _steps(_run(fp32.onnx_path, he_tiles), ref.numpy())
    assert fp32.max_abs_diff == step and fp32.class_mismatch == pytest.approx(flips)
    assert fp32.tolerance == TOLERANCES["fp32"]
    assert step <= TOLERANCES["fp32"][0] and flips <= TOLERANCES["fp32"][1]


def test_fp16_parity_on_real_tiles(
    fp16: ExportReport, checkpoint: Path, he_tiles: np.ndarray
) -> None:
    model = onnx.load(str(fp16.onnx_path))
    half = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) > 20  # the weights really are float16
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert read_onnx_contract(fp16.onnx_path).precision == "fp16"

    host = logits_to_maps(_torch_logits(checkpoint, he_tiles))
    got = _run(fp16.onnx_path, he_tiles)
    step, flips = _steps(got, host)
    bound_step, bound_flips = TOLERANCES["fp16"]
    assert step <= bound_step and flips <= bound_flips
    assert not np.array_equal(got, host)  # float16 really ran
    assert fp16.max_abs_diff is not None and fp16.max_abs_diff <= bound_step


def test_fp16_file_is_smaller(fp16: ExportReport, fp32: ExportReport) -> None:
    assert fp16.onnx_path.stat().st_size < 0.7 * fp32.onnx_path.stat().st_size


@pytest.mark.parametrize(("batch", "h", "w"), [(1, 256, 256), (3, 256, 256), (2, 64, 96)])
def test_dynamic_batch_and_size(
    fp32: ExportReport, checkpoint: Path, batch: int, h: int, w: int
) -> None:
    x = np.random.default_rng(batch).integers(0, 256, (batch, h, w, 3), np.uint8)
    got = _run(fp32.onnx_path, x)
    assert got.shape == (batch, h, w, 4)
    step, flips = _steps(got, logits_to_maps(_torch_logits(checkpoint, x)))
    assert step <= 1 and flips <= 1e-3


def test_parity_check_catches_a_different_model(fp32: ExportReport) -> None:
    torch.manual_seed(1)
    other = NucleusSegFormer(CONFIG).eval()
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
    with pytest.raises(ParityError, match="beyond the bound"):
        _parity(
            TileMaps(other, CONFIG).eval(), fp32.onnx_path, x, None, "fp32", None, None, CONFIG.head
        )


def test_contract_missing_is_a_checkpoint_error(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Identity", ["tiles"], ["maps"])
    io = [
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, [1, 32, 32, 3])
        for n in ("tiles", "maps")
    ]
    graph = onnx.helper.make_graph([node], "g", [io[0]], [io[1]])
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match=r"wsi_infer\.config"):
        read_onnx_contract(path)
    with pytest.raises(CheckpointError, match="cannot read ONNX"):
        read_onnx_contract(tmp_path / "missing.onnx")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt installed")
def test_tensorrt_build_without_tensorrt_gives_install_hint(
    fp32: ExportReport, tmp_path: Path
) -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install 'wsi-infer\[gpu\]'"):
        build_tensorrt_engine(fp32.onnx_path, tmp_path / "m.engine", cache_dir=tmp_path)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.slow
def test_cli_exports_and_prints_parity(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openslide")
    out = tmp_path / "cli.onnx"
    args = [str(checkpoint), "--onnx", str(out), "--slide", str(CMU_SLIDE), "--tiles", "2"]
    if importlib.util.find_spec("tensorrt") is None:
        args += ["--tensorrt", str(tmp_path / "cli.engine")]
    rc = export_main(args)
    captured = capsys.readouterr()
    assert "parity" in captured.out and "given tiles [2, 256, 256, 3]" in captured.out
    assert read_onnx_contract(out).config == CONFIG
    if "--tensorrt" in args:  # no tensorrt here: a clean error with the hint, not a traceback
        assert rc == 2 and "pip install" in captured.err
    else:
        assert rc == 0


def test_export_does_not_warn_about_torchvision() -> None:
    """torch's exporter warns four times that torchvision is missing (it registers
    torchvision's operators); wsi-infer models use none, so the export keeps it quiet."""
    import logging

    from wsi_infer.export.onnx_export import _TORCH_REGISTRATION_LOGGER, _torch_export

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    source = logging.getLogger(_TORCH_REGISTRATION_LOGGER)
    keep = Keep()
    source.addHandler(keep)  # the records that pass the logger's filters, wherever they go
    try:
        _torch_export(Double().eval(), torch.zeros(1, 8, 8, 3), 18, False, False)
        assert not [m for m in seen if "torchvision" in m]
        # the same record outside an export still passes: only the export is quietened
        source.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        assert seen[-1] == "torchvision is not installed. Skipping torchvision::nms"
    finally:
        source.removeHandler(keep)
