"""Inference backends: a registry of factories, each turning a model source into a runner.

A backend takes batches of RGB tiles as the slide reader gives them, ``uint8
(B, H, W, 3)``, and returns the compact maps the engine needs, ``uint8 (B, H, W,
4)`` (see :mod:`wsi_infer.tilemaps`): normalisation, sigmoid and softmax run in
the model's graph, on its device.  Optional backends import their packages
lazily and raise :class:`BackendUnavailableError` with an install hint.

Add one with :func:`register_backend`; list them with :func:`list_backends`;
make one with :func:`create_backend`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from wsi_infer.config import ModelConfig
from wsi_infer.errors import BackendUnavailableError, CheckpointError
from wsi_infer.files import file_sha256

__all__ = [
    "Backend",
    "BackendInfo",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "TorchBackend",
    "create_backend",
    "default_backend",
    "list_backends",
    "register_backend",
]

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What the engine needs from a backend.

    ``model_sha256`` identifies the bytes that actually run (the ONNX file, the
    TensorRT engine, the checkpoint's weights), never a claim inside a file.
    """

    name: str
    device: str
    config: ModelConfig
    model_sha256: str
    model_source: str
    #: How many calls may run at once in one process without oversubscribing the device:
    #: 1 for a backend whose one call already uses every core (or the one GPU).
    concurrency: int

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]: ...


@dataclass(frozen=True)
class BackendInfo:
    name: str
    factory: Callable[..., Backend]
    description: str


_REGISTRY: dict[str, BackendInfo] = {}


def register_backend(
    name: str, description: str
) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    """Decorator: register ``factory(model, device=..., threads=...)`` under ``name``."""

    def deco(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        _REGISTRY[name] = BackendInfo(name, factory, description)
        return factory

    return deco


def list_backends() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(
    name: str,
    model: str | Path = "default",
    *,
    device: str = "cpu",
    threads: int | None = None,
    **options: Any,
) -> Backend:
    """Build backend ``name`` for ``model`` (a checkpoint dir, bundled name or exported file).

    ``name="auto"`` takes :func:`default_backend` for ``device``.

    ``options`` go to the backend's factory as keywords (e.g. ``cache_dir`` for
    ``onnxruntime`` and ``tensorrt``, ``precision``, TensorRT's ``tile_size``,
    ``min_tile``, ``max_tile``, ``min_batch``, ``opt_batch``, ``max_batch``).
    The backend's ``recipe`` is the complete
    :class:`~wsi_infer.recipe.BackendRecipe` of this call, which dask workers
    build their own copy from.
    """
    from wsi_infer.recipe import BackendRecipe

    if name == "auto":
        name = default_backend(device)
    try:
        info = _REGISTRY[name]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; choose one of {list_backends()}"
        ) from None
    recipe = BackendRecipe.of_call(name, model, device, threads, options)
    backend = info.factory(model, device=device, threads=threads, **options)
    backend.recipe = recipe  # type: ignore[attr-defined]
    return backend


class TorchBackend:
    """PyTorch eager inference, float32 (float16 autocast on CUDA), tiles to maps in one module."""

    name = "torch"
    concurrency = 1  # torch's intra-op pool is one per process

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        precision: str | None = None,
    ) -> None:
        import torch

        from wsi_infer.model import load_model
        from wsi_infer.tilemaps import TileMaps

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu "
                "or install a CUDA build of torch"
            )
        self.threads = threads
        if threads is not None and threads > 0:
            # intra-op threads of this process' torch: the engine's own choice, not a global default
            torch.set_num_threads(threads)
        loaded = load_model(model)
        self.config = loaded.config
        self.model_sha256 = loaded.sha256
        self.model_source = loaded.source
        self.device = device
        self._torch = torch
        on_cuda = device.startswith("cuda")
        if precision not in (None, "fp32", "fp16") or (precision == "fp16" and not on_cuda):
            raise ValueError(f"torch runs fp32 on the CPU, fp32 or fp16 on CUDA, not {precision!r}")
        self.precision = precision or ("fp16" if on_cuda else "fp32")
        self._module = TileMaps(loaded.module, loaded.config).to(device).eval()

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
        torch = self._torch
        x = _check_tiles(tiles)
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, non_blocking=True)
            if self.precision == "fp16":
                with torch.autocast("cuda", dtype=torch.float16):
                    y = self._module(t)
            else:
                y = self._module(t)
            out: NDArray[np.uint8] = y.cpu().numpy()
        return out


register_backend("torch", "PyTorch eager (CPU or CUDA)")(TorchBackend)


ONNX_HINT = "pip install 'wsi-infer[onnx]' (or 'wsi-infer[gpu]' for CUDA/TensorRT)"
GPU_HINT = (
    "pip install 'wsi-infer[gpu]' (onnxruntime-gpu, tensorrt) on a machine with an NVIDIA GPU"
)
_INPUT = "tiles"
_OUTPUT = "maps"


def _check_tiles(tiles: NDArray[Any]) -> NDArray[np.uint8]:
    """``tiles`` as a contiguous ``uint8 (B, H, W, 3)`` array, or ValueError."""
    x = np.ascontiguousarray(tiles)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"tiles must be uint8 (B, H, W, 3), got {x.dtype} {x.shape}")
    return x


def _parse_device(device: str) -> tuple[str, int]:
    """``"cpu"``, ``"auto"``, ``"cuda"`` or ``"cuda:N"`` as (kind, index)."""
    kind, _, index = device.partition(":")
    if kind in ("cpu", "auto") and not index:
        return kind, 0
    if kind == "cuda" and (not index or index.isdigit()):
        return "cuda", int(index or 0)
    raise BackendUnavailableError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


def _is_onnx_file(model: str | Path) -> bool:
    return Path(model).suffix.lower() == ".onnx"


def _onnx_for(model: str | Path, *, fp16: bool, cache_dir: str | Path | None) -> tuple[Path, str]:
    """(ONNX file, model source) for an .onnx path, a checkpoint dir or a bundled name."""
    if _is_onnx_file(model):
        path = Path(model)
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX model not found")
        return path, str(path)
    from wsi_infer.export.onnx_export import cached_onnx
    from wsi_infer.model import resolve_checkpoint

    ckpt = resolve_checkpoint(model)
    return cached_onnx(ckpt, fp16=fp16, cache_dir=cache_dir), str(ckpt)


class OnnxRuntimeBackend:
    """ONNX Runtime: CPU, or CUDA/TensorRT execution providers with onnxruntime-gpu.

    ``model``: an exported ``.onnx`` file (its metadata is the model contract),
    or a checkpoint dir / bundled name, exported once into
    ``<cache_dir>/onnx/`` (default ``~/.cache/wsi-infer``) keyed by the
    checkpoint's sha256.  ``precision``: for checkpoints, ``fp32`` or ``fp16``
    (default fp32 on the CPU, fp16 on CUDA, as the torch backend autocasts).
    ``providers``: override the execution providers.  On CUDA, inputs and
    outputs are bound to reused device buffers (I/O binding).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: str | Path = "default",
        *,
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        precision: str | None = None,
        providers: list[str] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the onnxruntime backend needs onnxruntime ({exc}); {ONNX_HINT}"
            ) from exc
        from wsi_infer.export.onnx_export import read_onnx_contract

        kind, index = _parse_device(device)
        available = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available
        if kind == "cuda" and not has_cuda:
            raise BackendUnavailableError(
                f"device {device!r} asked for, but onnxruntime has no CUDA execution provider "
                f"(has {available}); {GPU_HINT}"
            )
        want_gpu = kind == "cuda" or (kind == "auto" and has_cuda)
        if precision not in (None, "fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
        fp16 = precision == "fp16" if precision else want_gpu
        onnx_path, source = _onnx_for(model, fp16=fp16, cache_dir=cache_dir)

        if providers is None:
            chosen: list[Any] = []
            if want_gpu:
                if "TensorrtExecutionProvider" in available and _has_module("tensorrt"):
                    from wsi_infer.export.cache import resolve_cache_dir

                    trt_cache = str(resolve_cache_dir(cache_dir, "ort-tensorrt"))
                    chosen.append(
                        (
                            "TensorrtExecutionProvider",
                            {
                                "device_id": index,
                                "trt_fp16_enable": fp16,
                                "trt_engine_cache_enable": True,
                                "trt_engine_cache_path": trt_cache,
                                "trt_timing_cache_enable": True,
                                "trt_timing_cache_path": trt_cache,
                            },
                        )
                    )
                chosen.append(("CUDAExecutionProvider", {"device_id": index}))
            chosen.append("CPUExecutionProvider")
        else:
            chosen = list(providers)

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if threads is not None and threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not want_gpu:
            # Idle inference threads sleep instead of spinning: between and within batches the
            # cores go to reading and segmentation, which run beside the model.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # No memory pattern: with calls from several threads at once it plans (and holds)
            # buffers per call, which cost the bundled model at 1024 px 2.5 GB of peak memory
            # and a second slow first call per thread, for no speed once warm.
            opts.enable_mem_pattern = False
        try:
            session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise CheckpointError(
                f"{onnx_path}: onnxruntime cannot load the model ({exc})"
            ) from exc
        active = session.get_providers()
        on_gpu = any(p in active for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
        if kind == "cuda" and not on_gpu:
            raise BackendUnavailableError(
                f"onnxruntime could not start its CUDA provider for {device!r} (active: {active}); "
                f"check the CUDA/cuDNN libraries; {GPU_HINT}"
            )
        contract = read_onnx_contract(session.get_modelmeta().custom_metadata_map)
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        if names_in != [_INPUT] or names_out != [_OUTPUT]:
            raise CheckpointError(
                f"{onnx_path}: expected input {_INPUT!r} and output {_OUTPUT!r}, "
                f"got {names_in} -> {names_out}"
            )

        if not on_gpu:  # a GPU provider would build an engine for the probe's shape
            _check_outputs(onnx_path, session, contract.config)

        self.config = contract.config
        self.precision = contract.precision
        self.onnx_path = onnx_path
        # A session runs calls from several threads at once.  On the CPU with a fixed number of
        # intra-op threads, as many calls as fit the cores run side by side: each call then
        # runs on its own threads, and no call waits for a core another stage has borrowed.
        self.concurrency = (
            max(1, cpu_cores() // threads)
            if not on_gpu and threads is not None and threads > 0
            else 1
        )
        self.onnx_path = onnx_path
        self.onnx_sha256 = file_sha256(onnx_path)
        # the file that runs identifies the model: the checkpoint hash in its metadata is a
        # claim any file can copy, and fp16 and fp32 exports of one checkpoint differ
        self.model_sha256 = self.onnx_sha256
        self.source_sha256 = contract.source_sha256
        self.model_source = source
        self.providers = active
        self.device = f"cuda:{index}" if on_gpu else "cpu"
        self._ort = ort
        self._session = session
        self._index = index
        self._on_gpu = on_gpu
        self._binding: Any = None
        self._in: Any = None
        self._out: Any = None
        logger.info(
            "onnxruntime backend: %s (%s) on %s via %s",
            onnx_path,
            self.precision,
            self.device,
            active,
        )

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
        x = _check_tiles(tiles)
        if not self._on_gpu:
            out: NDArray[np.uint8] = self._session.run([_OUTPUT], {_INPUT: x})[0]
            return out
        return self._run_bound(x)

    def _run_bound(self, x: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Run with inputs/outputs in device buffers that are reused while the shape holds."""
        ort = self._ort
        if self._in is None or tuple(self._in.shape()) != x.shape:
            b, h, w, _ = x.shape
            self._in = ort.OrtValue.ortvalue_from_numpy(x, "cuda", self._index)
            head = self.config.head
            self._out = ort.OrtValue.ortvalue_from_shape_and_type(
                (b, *head.scratch_shape(h, w)), np.dtype(head.map_dtype), "cuda", self._index
            )
            binding = self._session.io_binding()
            binding.bind_ortvalue_input(_INPUT, self._in)
            binding.bind_ortvalue_output(_OUTPUT, self._out)
            self._binding = binding
        else:
            self._in.update_inplace(x)
        self._session.run_with_iobinding(self._binding)
        out: NDArray[np.uint8] = self._out.numpy()
        return out


class TensorRTBackend:
    """A TensorRT engine on a CUDA GPU (fp16), through the ``tensorrt`` Python API.

    ``model``: a ``.engine`` file with its ``.engine.json`` sidecar, an
    ``.onnx`` file, or a checkpoint dir / bundled name; the latter two are
    exported and built once, cached in ``cache_dir`` (default
    ``~/.cache/wsi-infer``) per (ONNX sha256, GPU, TensorRT version, profile).
    Device buffers are reused between batches of the same shape.  The engine's
    profile takes batches of ``min_batch..max_batch`` (optimised for
    ``opt_batch``) square tiles of ``min_tile..max_tile`` px (optimised for
    ``tile_size``; all default to the config's tile size): give it the run's
    (:meth:`wsi_infer.recipe.BackendRecipe.for_run` does).
    """

    name = "tensorrt"
    concurrency = 1  # one execution context per engine

    def __init__(
        self,
        model: str | Path = "default",
        *,
        device: str = "cuda",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        min_batch: int = 1,
        opt_batch: int = 8,
        max_batch: int = 32,
        tile_size: int | None = None,
        min_tile: int | None = None,
        max_tile: int | None = None,
        precision: str | None = None,
    ) -> None:
        from wsi_infer.export.tensorrt_build import (
            build_tensorrt_engine,
            gpu_name,
            import_tensorrt,
            read_engine_info,
        )

        trt = import_tensorrt()
        kind, index = _parse_device(device)
        if kind == "cpu":
            raise BackendUnavailableError(
                "the tensorrt backend runs on a CUDA GPU only; use --device cuda, "
                "or --backend torch/onnxruntime on the CPU"
            )
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"the tensorrt backend needs a CUDA GPU visible to torch; {GPU_HINT}"
            )
        path = Path(model)
        if path.suffix.lower() in (".engine", ".plan", ".trt"):
            if not path.is_file():
                raise CheckpointError(f"{path}: TensorRT engine not found")
            engine_path, source = path, str(path)
        else:
            onnx_path, source = _onnx_for(model, fp16=False, cache_dir=cache_dir)
            engine_path = build_tensorrt_engine(
                onnx_path,
                fp16=precision != "fp32",
                min_batch=min_batch,
                opt_batch=min(max(opt_batch, min_batch), max_batch),
                max_batch=max_batch,
                tile_size=tile_size,
                min_tile=min_tile,
                max_tile=max_tile,
                cache_dir=cache_dir,
                device_index=index,
            )
        info = read_engine_info(engine_path)
        gpu = gpu_name(index)
        if info.gpu != gpu or info.tensorrt_version != str(trt.__version__):
            raise CheckpointError(
                f"{engine_path}: built for {info.gpu} with TensorRT {info.tensorrt_version}, "
                f"this is {gpu} with TensorRT {trt.__version__}; rebuild it with wsi-infer-export"
            )
        trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(trt_logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise CheckpointError(f"{engine_path}: TensorRT cannot deserialize the engine")
        self.config = ModelConfig.from_dict(info.config)
        out_dims = tuple(engine.get_tensor_shape(_OUTPUT))
        channels = self.config.head.num_map_channels
        if len(out_dims) != 4 or out_dims[3] not in (-1, channels):
            raise CheckpointError(
                f"{engine_path}: the engine outputs {out_dims}, the engine needs (batch, height, "
                f"width, {channels}) maps; rebuild it with wsi-infer-export"
            )
        self.precision = info.precision
        self.engine_path = engine_path
        self.engine_info = info
        self.model_sha256 = file_sha256(
            engine_path
        )  # the engine's own bytes, not its sidecar's claim
        self.source_sha256 = info.source_sha256
        self.model_source = source
        self.device = f"cuda:{index}"
        self._torch = torch
        self._dev = torch.device("cuda", index)
        self._runtime = runtime
        self._engine = engine
        self._context = engine.create_execution_context()
        self._in: Any = None
        self._out: Any = None

    def check_shapes(self, tile: int, batch: int) -> None:
        """ParameterError unless batches of up to ``batch`` square ``tile`` px tiles fit the
        engine's optimisation profile (the engine asks before the first batch)."""
        info = self.engine_info
        if not (info.min_tile <= tile <= info.max_tile and batch <= info.max_batch):
            from wsi_infer.errors import ParameterError

            raise ParameterError(
                f"{self.engine_path}: built for tiles of {info.min_tile}..{info.max_tile} px and "
                f"batches up to {info.max_batch}, the run has {tile} px tiles in batches of "
                f"{batch}; rebuild it with wsi-infer-export --tensorrt --tile-sizes {tile} "
                f"--max-batch {max(batch, info.max_batch)}"
            )

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
        torch = self._torch
        x = _check_tiles(tiles)
        b, h, w, _ = x.shape
        info = self.engine_info
        if not (
            info.min_batch <= b <= info.max_batch and h == w and info.min_tile <= h <= info.max_tile
        ):
            raise ValueError(
                f"batch {x.shape} is outside the engine's profile (batch {info.min_batch}.."
                f"{info.max_batch}, square tiles {info.min_tile}..{info.max_tile}); rebuild the "
                "engine with wsi-infer-export --tensorrt --tile-sizes and --max-batch to match"
            )
        with torch.inference_mode():
            if self._in is None or tuple(self._in.shape) != x.shape:
                self._in = torch.empty(x.shape, dtype=torch.uint8, device=self._dev)
                head = self.config.head
                self._out = torch.empty(
                    (b, *head.scratch_shape(h, w)),
                    dtype=getattr(torch, head.map_dtype),
                    device=self._dev,
                )
            self._in.copy_(torch.from_numpy(x))
            ctx = self._context
            ctx.set_input_shape(_INPUT, tuple(x.shape))
            ctx.set_tensor_address(_INPUT, int(self._in.data_ptr()))
            ctx.set_tensor_address(_OUTPUT, int(self._out.data_ptr()))
            stream = torch.cuda.current_stream(self._dev)
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.engine_path}: TensorRT execution failed")
            out: NDArray[np.uint8] = self._out.cpu().numpy()
        return out


def _check_outputs(onnx_path: Path, session: Any, config: ModelConfig) -> None:
    """Run a small probe batch: ``uint8 (B, H, W, 3)`` tiles must give ``uint8 (B, H, W, 4)``
    maps whose class channel names one of the config's nucleus classes."""
    shape = session.get_inputs()[0].shape
    side = 2 * config.input_multiple
    probe_shape = [
        d if isinstance(d, int) and d > 0 else (1 if k == 0 else 3 if k == 3 else side)
        for k, d in enumerate(shape)
    ]
    if len(probe_shape) != 4 or probe_shape[3] != 3:
        raise CheckpointError(
            f"{onnx_path}: the model's input is {shape}, not uint8 (batch, height, width, 3); "
            "export it with wsi-infer-export"
        )
    probe = np.zeros(probe_shape, np.uint8)
    try:
        out = session.run([_OUTPUT], {_INPUT: probe})[0]
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise CheckpointError(
            f"{onnx_path}: the model fails on a {tuple(probe_shape)} probe ({exc})"
        ) from exc
    b, h, w, _ = probe_shape
    head = config.head
    want = (b, *head.scratch_shape(h, w))
    if tuple(out.shape) != want or out.dtype != np.dtype(head.map_dtype):
        raise CheckpointError(
            f"{onnx_path}: the model outputs {out.dtype} {tuple(out.shape)} for a "
            f"{tuple(probe_shape)} input, the engine needs {head.map_dtype} {want} maps "
            f"({', '.join(head.map_channels)}); this file and its metadata do not "
            "belong together: export the model again with wsi-infer-export"
        )
    if head.class_channel is None:
        return
    classes = out[..., head.class_channel]
    if classes.min() < 1 or classes.max() > config.num_classes:
        raise CheckpointError(
            f"{onnx_path}: the model gives nucleus classes {int(classes.min())}.."
            f"{int(classes.max())} where its config has 1..{config.num_classes}; this file and its metadata do not belong "
            "together: export the model again with wsi-infer-export"
        )


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


register_backend("onnxruntime", "ONNX Runtime (CPU; CUDA/TensorRT providers with onnxruntime-gpu)")(
    OnnxRuntimeBackend
)
register_backend("tensorrt", "TensorRT engine, fp16 (NVIDIA GPU; wsi-infer[gpu])")(TensorRTBackend)


def default_backend(device: str = "cpu") -> str:
    """The backend ``--backend auto`` should use on ``device``.

    CPU: ``onnxruntime`` when it and the exporter (onnx, onnxscript) are
    installed, else ``torch``.  Measured on 2 shared CPU cores with a b0
    model (3 runs), onnxruntime fp32 ran 1.8-4x faster than torch eager on
    batches of 4 x 256 px and 2 x 512 px; the first run of a checkpoint pays a one-off
    export (~15 s) into the cache.  CUDA: ``torch`` (fp16 autocast, nothing to
    build); ``tensorrt`` builds an engine per GPU and TensorRT version the
    first time (minutes), so it stays opt-in.  ``auto``: CUDA when torch sees
    a GPU, else the CPU choice.
    """
    kind, _ = _parse_device(device)
    if kind == "auto":
        import torch

        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu" and all(_has_module(m) for m in ("onnxruntime", "onnx", "onnxscript")):
        return "onnxruntime"
    return "torch"
