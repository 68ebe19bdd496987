"""Inference backends: a registry of factories, each turning a model source into a runner.

A backend takes normalised float32 batches ``(B, 3, H, W)`` and returns logits
``(B, C, H, W)`` as a NumPy array.  Optional backends import their packages
lazily and raise :class:`BackendUnavailableError` with an install hint.

Add one with :func:`register_backend`; list them with :func:`list_backends`;
make one with :func:`create_backend`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from wsi_infer.config import ModelConfig
from wsi_infer.errors import BackendUnavailableError

__all__ = [
    "Backend",
    "BackendInfo",
    "create_backend",
    "list_backends",
    "register_backend",
]

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What the engine needs from a backend."""

    name: str
    device: str
    config: ModelConfig
    model_sha256: str
    model_source: str

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]: ...


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
    name: str, model: str | Path = "default", *, device: str = "cpu", threads: int | None = None
) -> Backend:
    """Build backend ``name`` for ``model`` (a checkpoint dir, bundled name or exported file)."""
    try:
        info = _REGISTRY[name]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; choose one of {list_backends()}"
        ) from None
    return info.factory(model, device=device, threads=threads)


class TorchBackend:
    """PyTorch eager inference, float32 (float16 autocast on CUDA)."""

    name = "torch"

    def __init__(
        self, model: str | Path, *, device: str = "cpu", threads: int | None = None
    ) -> None:
        import torch

        from wsi_infer.model import load_model

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu "
                "or install a CUDA build of torch"
            )
        if threads is not None and threads > 0:
            # intra-op threads of this process' torch: the engine's own choice, not a global default
            torch.set_num_threads(threads)
        loaded = load_model(model)
        self.config = loaded.config
        self.model_sha256 = loaded.sha256
        self.model_source = loaded.source
        self.device = device
        self._torch = torch
        self._module = loaded.module.to(device)

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if self.device.startswith("cuda"):
                with torch.autocast("cuda", dtype=torch.float16):
                    y = self._module(x)
            else:
                y = self._module(x)
            out: NDArray[np.float32] = y.float().cpu().numpy()
        return out


register_backend("torch", "PyTorch eager (CPU or CUDA)")(TorchBackend)
