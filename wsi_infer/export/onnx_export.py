"""Export a registered model (:mod:`wsi_infer.registry`) to ONNX with its contract; check parity.

The exported graph is the model as the engine runs it
(:class:`~wsi_infer.tilemaps.TileMaps`): ``uint8 (B, H, W, 3)`` RGB tiles in
(input :data:`INPUT_NAME`), normalised inside the graph, and the compact maps
``uint8 (B, H, W, 4)`` out (output :data:`OUTPUT_NAME`), so neither the host's
normalisation nor float32 logits cross the device boundary.  The ONNX file
carries the model's :class:`~wsi_infer.config.ModelConfig` in its
``metadata_props`` (key :data:`META_CONFIG`), so the file alone is enough to
run it.  Every export is checked the way timm's ``check_forward`` checks a
model: ONNX Runtime (CPU) runs the written file on real tiles, or on a
deterministic random batch when none are given, and its maps are compared with
PyTorch's.  A file that fails the check is never moved into place.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from wsi_infer.config import ModelConfig
from wsi_infer.errors import BackendUnavailableError, CheckpointError, WsiInferError
from wsi_infer.export.cache import resolve_cache_dir
from wsi_infer.files import atomic_write, file_sha256

if TYPE_CHECKING:
    import onnx
    import torch

    from wsi_infer.heads import Head

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "META_CONFIG",
    "META_PRECISION",
    "META_SOURCE_SHA256",
    "OUTPUT_NAME",
    "TOLERANCES",
    "ExportReport",
    "OnnxContract",
    "ParityError",
    "cached_onnx",
    "cached_onnx_path",
    "check_tiles",
    "convert_to_fp16",
    "export_onnx",
    "random_tiles",
    "read_onnx_contract",
]

logger = logging.getLogger(__name__)
#: What a user should see once in a while (a command shows it on stderr unless --quiet).
notice = logging.getLogger("wsi_infer.notice")

#: The logger of torch's ONNX exporter that warns, on every export without torchvision
#: installed, that it skips torchvision's operators (nms, roi_align, ...).
_TORCH_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


class _NoTorchvisionSkips(logging.Filter):
    """Drops the exporter's "torchvision is not installed. Skipping ..." records: no
    wsi-infer model uses torchvision's operators, so they only worry users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


@contextmanager
def _without_torchvision_skips() -> Iterator[None]:
    source = logging.getLogger(_TORCH_REGISTRATION_LOGGER)
    quiet = _NoTorchvisionSkips()
    source.addFilter(quiet)
    try:
        yield
    finally:
        source.removeFilter(quiet)


#: ONNX metadata keys.
META_CONFIG = "wsi_infer.config"
META_SOURCE_SHA256 = "wsi_infer.source_sha256"
META_PRECISION = "wsi_infer.precision"
META_FORMAT = "wsi_infer.format"
#: Bumped when the graph's I/O contract changes (names, layout, meaning of channels).
#: 1: normalised float32 (B, 3, H, W) -> float32 logits; 2: uint8 tiles -> uint8 maps.
FORMAT_VERSION = "2"

INPUT_NAME = "tiles"
OUTPUT_NAME = "maps"
DEFAULT_OPSET = 18

#: Parity bound per precision on the maps, ONNX Runtime against PyTorch:
#: (largest difference of a probability channel in 1/255 steps, share of pixels
#: whose nucleus class differs).  fp32 differs only where a value sits on a
#: rounding edge (measured: at most 1 step, no class flipped on real H&E tiles);
#: float16 activations move probabilities by a few steps and flip the class
#: where two classes are nearly tied (measured on a random b0, whose classes are
#: all nearly tied: see the report).
TOLERANCES: dict[str, tuple[int, float]] = {"fp32": (1, 1e-3), "fp16": (8, 5e-2)}

ONNX_HINT = "pip install 'wsi-infer[onnx]' (onnx, onnxscript, onnxruntime)"


class ParityError(WsiInferError, ValueError):
    """The exported model's output differs from PyTorch's beyond the stated bound."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how closely it matches PyTorch."""

    onnx_path: Path
    sha256: str
    source_sha256: str
    precision: str
    opset: int
    dynamic_batch: bool
    dynamic_hw: bool
    tiles_source: str
    tile_shape: tuple[int, ...]
    max_abs_diff: int | None
    mean_abs_diff: float | None
    class_mismatch: float | None
    tolerance: tuple[int, float] | None
    export_seconds: float
    config: ModelConfig = field(repr=False)

    @property
    def checked(self) -> bool:
        return self.max_abs_diff is not None

    def summary(self) -> str:
        lines = [
            f"wrote        {self.onnx_path} ({self.precision}, opset {self.opset}, "
            f"{self.onnx_path.stat().st_size / 1e6:.1f} MB, {self.export_seconds:.1f} s)",
            f"sha256       {self.sha256}",
            f"source       {self.source_sha256 or 'unknown'}",
            f"dynamic axes batch={self.dynamic_batch} height/width={self.dynamic_hw}",
        ]
        if self.checked:
            assert self.tolerance is not None
            lines.append(
                f"parity       onnxruntime CPU vs torch maps on {self.tiles_source} "
                f"{list(self.tile_shape)}: probabilities max |diff| {self.max_abs_diff}/255 "
                f"(mean {self.mean_abs_diff:.3g}), class differs at "
                f"{self.class_mismatch:.2%} of pixels; bound {self.tolerance[0]}/255, "
                f"{self.tolerance[1]:.1%}: ok"
            )
        else:
            lines.append("parity       not checked")
        return "\n".join(lines)


@dataclass(frozen=True)
class OnnxContract:
    """The wsi-infer metadata of an exported file."""

    config: ModelConfig
    source_sha256: str
    precision: str


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"ONNX export needs the {module.split('.')[0]!r} package ({exc}); {ONNX_HINT}"
        ) from exc


def _resolve_model(model: Any) -> tuple[torch.nn.Module, ModelConfig, str, str]:
    """(module in eval mode, its config, source sha256 or "", human-readable source)."""
    from torch import nn

    from wsi_infer.model import LoadedModel, load_model
    from wsi_infer.registry import module_config

    if isinstance(model, nn.Module) and isinstance(getattr(model, "config", None), ModelConfig):
        return model.eval(), module_config(model), "", type(model).__name__
    if isinstance(model, LoadedModel):
        return model.module.eval(), model.config, model.sha256, model.source
    if isinstance(model, (str, Path)):
        loaded = load_model(model)
        return loaded.module.eval(), loaded.config, loaded.sha256, loaded.source
    raise TypeError(
        f"cannot export {type(model).__name__}; pass a checkpoint or a model made by create_model"
    )


def check_tiles(tiles: NDArray[Any], config: ModelConfig) -> NDArray[np.uint8]:
    """``uint8`` RGB tiles ``(N, H, W, 3)`` as the exported graph takes them, or ValueError."""
    arr = np.ascontiguousarray(tiles)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"tiles must be uint8 RGB (N, H, W, 3), got {arr.dtype} {arr.shape}")
    k = config.input_multiple
    if arr.shape[1] % k or arr.shape[2] % k:
        raise ValueError(f"tile height and width must be multiples of {k}, got {arr.shape[1:3]}")
    return arr


def random_tiles(
    config: ModelConfig, n: int = 2, size: int | None = None, seed: int = 0
) -> NDArray[np.uint8]:
    """A deterministic batch of random RGB tiles ``(n, size, size, 3)`` (size: the config's)."""
    edge = size or config.tile_size
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, edge, edge, 3), dtype=np.uint8)


def _rename_dims(proto: onnx.ModelProto, dynamic_batch: bool, dynamic_hw: bool) -> None:
    """Name the symbolic input dims ``batch``/``height``/``width`` everywhere in the graph."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    wanted = {0: "batch"} if dynamic_batch else {}
    if dynamic_hw:
        wanted.update({1: "height", 2: "width"})
    mapping = {dims[i].dim_param: name for i, name in wanted.items() if dims[i].dim_param}
    if not mapping:
        return
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    for value in values:
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def _dynamic_axes(proto: onnx.ModelProto) -> tuple[bool, bool]:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    sym = [not d.HasField("dim_value") for d in dims]
    return sym[0], sym[1] and sym[2]


def convert_to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and activations to float16; the uint8 input and output stay as they are."""
    _require("onnxruntime")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(proto, keep_io_types=True)
    # the converter appends Cast nodes out of topological order; the checker refuses that
    ir = _require("onnx_ir")
    model_ir = ir.from_proto(half)
    model_ir.graph.sort()
    sorted_proto: onnx.ModelProto = ir.to_proto(model_ir)
    return sorted_proto


def _torch_export(
    module: torch.nn.Module,
    example: torch.Tensor,
    opset: int,
    dynamic_batch: bool,
    dynamic_hw: bool,
) -> onnx.ModelProto:
    import torch

    spec: dict[int, Any] = {}
    if dynamic_batch:
        spec[0] = torch.export.Dim("batch", min=1, max=4096)
    if dynamic_hw:
        spec[1] = torch.export.Dim.AUTO
        spec[2] = torch.export.Dim.AUTO
    with warnings.catch_warnings(), _without_torchvision_skips():
        # deprecation chatter from torch.export internals, not actionable here
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"tiles": spec} if spec else None,
            external_data=False,
            verbose=False,
        )
    if program is None:  # pragma: no cover - only when torch writes to a path itself
        raise RuntimeError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    return proto


def _set_metadata(proto: onnx.ModelProto, entries: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key = key
        prop.value = value


def _ort_session(path: Path, threads: int | None = None) -> Any:
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def export_onnx(
    model: Any,
    out_path: str | Path,
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    dynamic_hw: bool = True,
    tiles: NDArray[Any] | None = None,
    check: bool = True,
    max_step: int | None = None,
    max_flips: float | None = None,
) -> ExportReport:
    """Export ``model`` to ``out_path`` and prove it matches PyTorch.

    ``model``: a checkpoint directory, a bundled model's name, a
    :class:`~wsi_infer.model.LoadedModel` or a network made by
    :func:`~wsi_infer.registry.create_model`.
    ``batch``: ``None`` exports a dynamic batch axis, an int fixes it.
    ``dynamic_hw``: export dynamic height/width (any multiple of the config's
    ``input_multiple``); else the config's ``tile_size`` is fixed.  ``fp16``:
    float16 weights and activations (uint8 input and output either way).
    ``tiles``: uint8 RGB ``(N, H, W, 3)`` for the parity check; a deterministic
    random batch when ``None``.  ``check``: run ``onnx.checker`` and the parity
    check of the maps (raises :class:`ParityError` beyond ``max_step`` steps of
    1/255 in a probability channel or a share ``max_flips`` of pixels whose
    class differs; defaults from :data:`TOLERANCES`).
    """
    onnx = _require("onnx")
    _require("onnxscript")
    import torch

    from wsi_infer.tilemaps import TileMaps

    net, config, source_sha256, source = _resolve_model(model)
    module = TileMaps(net, config).eval()
    precision = "fp16" if fp16 else "fp32"
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    dynamic_batch = batch is None
    example_batch = 2 if batch is None else batch  # 1 would be specialised away
    edge = config.tile_size
    # height != width so the tracer cannot tie the two together
    hw = (edge, edge + config.input_multiple) if dynamic_hw else (edge, edge)
    example = torch.from_numpy(_example_rgb(example_batch, hw))

    started = time.perf_counter()
    logger.info("exporting %s to ONNX opset %d (%s)", source, opset, precision)
    proto = _torch_export(module, example, opset, dynamic_batch, dynamic_hw)
    got_batch, got_hw = _dynamic_axes(proto)
    if dynamic_hw and not got_hw:
        logger.warning(
            "height/width were specialised by the exporter; the model is fixed at %s", hw
        )
    if dynamic_batch and not got_batch:
        logger.warning("the batch axis was specialised by the exporter")
    _rename_dims(proto, got_batch, got_hw)
    if fp16:
        proto = convert_to_fp16(proto)
    _set_metadata(
        proto,
        {
            META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
            META_SOURCE_SHA256: source_sha256,
            META_PRECISION: precision,
            META_FORMAT: FORMAT_VERSION,
            "wsi_infer.exporter": f"torch {torch.__version__}",
        },
    )
    head = config.head
    proto.doc_string = (
        f"wsi-infer nucleus model {config.name} v{config.version} ({config.arch}, {precision}); "
        f"input {INPUT_NAME} uint8 (B,H,W,3) RGB; output {OUTPUT_NAME} {head.map_dtype} "
        f"(B,H,W,{head.num_map_channels}) {', '.join(head.map_channels)}"
    )

    with atomic_write(out, ".tmp") as tmp:
        onnx.save_model(proto, str(tmp))
        export_seconds = time.perf_counter() - started
        stats: tuple[int, float, float, tuple[int, float]] | None = None
        parity_tiles: NDArray[np.uint8] | None = None
        tiles_source = "none"
        if check:
            onnx.checker.check_model(str(tmp), full_check=True)
            tiles_source = "given tiles" if tiles is not None else "random tiles"
            raw = tiles if tiles is not None else random_tiles(config, example_batch, seed=0)
            parity_tiles = check_tiles(raw, config)
            if not got_hw and parity_tiles.shape[1:3] != hw:
                raise ValueError(
                    f"tiles are {parity_tiles.shape[1:3]} but the model is fixed at {hw}"
                )
            stats = _parity(
                module, tmp, parity_tiles, batch, precision, max_step, max_flips, config.head
            )

    report = ExportReport(
        onnx_path=out,
        sha256=file_sha256(out),
        source_sha256=source_sha256,
        precision=precision,
        opset=opset,
        dynamic_batch=got_batch,
        dynamic_hw=got_hw,
        tiles_source=tiles_source,
        tile_shape=tuple(parity_tiles.shape) if parity_tiles is not None else (),
        max_abs_diff=stats[0] if stats else None,
        mean_abs_diff=stats[1] if stats else None,
        class_mismatch=stats[2] if stats else None,
        tolerance=stats[3] if stats else None,
        export_seconds=export_seconds,
        config=config,
    )
    logger.info("exported %s", report.summary().replace("\n", "; "))
    return report


def _example_rgb(n: int, hw: tuple[int, int]) -> NDArray[np.uint8]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(n, hw[0], hw[1], 3), dtype=np.uint8)


def _parity(
    module: torch.nn.Module,
    path: Path,
    tiles: NDArray[np.uint8],
    batch: int | None,
    precision: str,
    max_step: int | None,
    max_flips: float | None,
    head: Head,
) -> tuple[int, float, float, tuple[int, float]]:
    """(max probability step, mean step, share of pixels whose class differs, bound);
    raises ParityError beyond the bound.  ``head`` says which map channels are
    probabilities and which the class."""
    import torch

    session = _ort_session(path)
    step = batch or len(tiles)
    worst = 0
    sum_diff = 0.0
    flips = 0
    count = 0
    for i in range(0, len(tiles), step):
        chunk = tiles[i : i + step]
        if batch is not None and len(chunk) != batch:
            break  # a fixed-batch model cannot take the remainder
        with torch.inference_mode():
            ref = module(torch.from_numpy(chunk)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise ParityError(
                f"{path}: ONNX maps {got.dtype} {got.shape} != torch {ref.dtype} {ref.shape}"
            )
        probs = list(head.probability_channels)
        diff = np.abs(got[..., probs].astype(np.int16) - ref[..., probs])
        worst = max(worst, int(diff.max()))
        sum_diff += float(diff.sum())
        if head.class_channel is not None:
            flips += int((got[..., head.class_channel] != ref[..., head.class_channel]).sum())
        count += got[..., 0].size
    if count == 0:
        raise ValueError(f"parity check needs at least {batch} tiles for a fixed-batch export")
    a, r = TOLERANCES[precision]
    bound = (a if max_step is None else max_step, r if max_flips is None else max_flips)
    mean_diff, flipped = sum_diff / (len(head.probability_channels) * count), flips / count
    if worst > bound[0] or flipped > bound[1]:
        raise ParityError(
            f"{path}: {precision} ONNX maps differ from torch by up to {worst}/255 "
            f"(mean {mean_diff:.3g}) with the class differing at {flipped:.2%} of pixels, "
            f"beyond the bound {bound[0]}/255 and {bound[1]:.1%}"
        )
    return worst, mean_diff, flipped, bound


def read_onnx_contract(path_or_metadata: str | Path | dict[str, str]) -> OnnxContract:
    """The wsi-infer contract stored in an ONNX file (or its metadata map)."""
    if isinstance(path_or_metadata, dict):
        meta = path_or_metadata
        where = "ONNX metadata"
    else:
        onnx = _require("onnx")
        where = str(path_or_metadata)
        try:
            proto = onnx.load_model(where, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, OSError...
            raise CheckpointError(f"{where}: cannot read ONNX model ({exc})") from exc
        meta = {p.key: p.value for p in proto.metadata_props}
    if META_CONFIG not in meta:
        raise CheckpointError(
            f"{where}: no {META_CONFIG!r} metadata; export it with wsi-infer-export"
        )
    try:
        data = json.loads(meta[META_CONFIG])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: {META_CONFIG!r} is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: {META_CONFIG!r} must be a JSON object")
    fmt = meta.get(META_FORMAT, FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: export format {fmt} is not {FORMAT_VERSION}; "
            "re-export it with this wsi-infer"
        )
    return OnnxContract(
        config=ModelConfig.from_dict(data),
        source_sha256=meta.get(META_SOURCE_SHA256, ""),
        precision=meta.get(META_PRECISION, "fp32"),
    )


def cached_onnx_path(
    model: str | Path,
    *,
    fp16: bool = False,
    cache_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Where :func:`cached_onnx` keeps (or will keep) the export of checkpoint ``model``."""
    import hashlib

    from wsi_infer.model import CONFIG_FILE, WEIGHTS_FILE, resolve_checkpoint

    ckpt = resolve_checkpoint(model)
    weights_sha = file_sha256(ckpt / WEIGHTS_FILE)
    config = ModelConfig.from_json(ckpt / CONFIG_FILE)
    config_sha = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    precision = "fp16" if fp16 else "fp32"
    name = f"{weights_sha[:20]}-{config_sha[:8]}-{precision}-opset{opset}-v{FORMAT_VERSION}.onnx"
    return resolve_cache_dir(cache_dir, "onnx") / name


def cached_onnx(
    model: str | Path,
    *,
    fp16: bool = False,
    cache_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """An ONNX export of checkpoint ``model``, made once and kept in the cache.

    The file is keyed by the checkpoint's weights sha256, its config and the
    precision, so an edited config.json or new weights give a new export.
    """
    from wsi_infer.model import resolve_checkpoint

    ckpt = resolve_checkpoint(model)
    path = cached_onnx_path(ckpt, fp16=fp16, cache_dir=cache_dir, opset=opset)
    if path.is_file():
        logger.info("using cached ONNX export %s", path)
        return path
    logger.info("no cached ONNX export of %s; exporting to %s", ckpt, path)
    notice.info("exporting the model for ONNX Runtime (once, ~30 s)")
    started = time.perf_counter()
    export_onnx(ckpt, path, fp16=fp16, opset=opset, check=True)
    notice.info(
        "exported the model for ONNX Runtime in %.0f s (kept in %s)",
        time.perf_counter() - started,
        path.parent,
    )
    return path
