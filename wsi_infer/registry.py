"""A registry of model families, after timm's ``register_model`` / ``create_model`` /
``list_models``.

A family is a network class (or any callable) that builds a ``torch.nn.Module``
from a :class:`~wsi_infer.config.ModelConfig`, registered with the head its
outputs follow::

    @register_model("segformer", head=NucleusHead.for_config)
    class NucleusSegFormer(nn.Module):
        def __init__(self, config: ModelConfig) -> None: ...

A checkpoint's ``config.json`` names its family (``family``; absent means
:data:`~wsi_infer.config.DEFAULT_FAMILY`), so :func:`wsi_infer.model.load_model`,
training, export and the benchmarks build every model through
:func:`create_model`; adding a family touches only its own module.  The
built-in families live in :data:`BUILTIN_MODULES`, imported on the first lookup.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from wsi_infer.config import DEFAULT_FAMILY, ModelConfig
from wsi_infer.errors import CheckpointError
from wsi_infer.heads import NucleusHead

if TYPE_CHECKING:
    from wsi_infer.heads import Head
    from wsi_infer.model import Network

__all__ = [
    "BUILTIN_MODULES",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_head",
    "model_info",
    "module_config",
    "register_model",
]

#: Modules that register the built-in families (imported on the first lookup).
BUILTIN_MODULES: tuple[str, ...] = ("wsi_infer.model",)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelInfo:
    """A registered family: ``builder(config)`` makes the network, ``head(config)`` its head."""

    name: str
    builder: Callable[[ModelConfig], Network]
    head: Callable[[ModelConfig], Head]
    description: str

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"model family name {self.name!r} is not a word (a-z, 0-9, - or _)")


_REGISTRY: dict[str, ModelInfo] = {}
_BUILTINS_LOADED = False
_LOCK = threading.Lock()


def register_model(
    name: str,
    *,
    head: Callable[[ModelConfig], Head] = NucleusHead.for_config,
    description: str = "",
) -> Callable[[F], F]:
    """Decorator: register ``builder(config) -> Network`` (a class or a function) as
    family ``name`` whose outputs follow ``head(config)``.  Registering a name twice
    with another builder is a ValueError (re-importing the same module is not)."""

    def deco(builder: F) -> F:
        doc = (builder.__doc__ or "").strip().splitlines()
        info = ModelInfo(name, builder, head, description or (doc[0] if doc else ""))
        old = _REGISTRY.get(name)
        if old is not None and _qualname(old.builder) != _qualname(builder):
            raise ValueError(
                f"model family {name!r} is already registered by {_qualname(old.builder)}"
            )
        _REGISTRY[name] = info
        return builder

    return deco


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    with _LOCK:
        if not _BUILTINS_LOADED:
            for module in BUILTIN_MODULES:
                importlib.import_module(module)
            _BUILTINS_LOADED = True


def list_models() -> list[str]:
    """Names of the registered families, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registered family ``name``; a one-line :class:`CheckpointError` naming the
    choices when there is none."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CheckpointError(
            f"unknown model family {name!r}; choose one of {list_models()} (or import the "
            "module that registers it first)"
        ) from None


def model_head(config: ModelConfig) -> Head:
    """The head of ``config``'s family for ``config``."""
    return model_info(config.family).head(config)


def create_model(config: ModelConfig | str | None = None, **overrides: Any) -> Network:
    """A new (randomly initialised) network of ``config``'s family.

    ``config`` is a :class:`ModelConfig`, a family name (a default config of that
    family) or ``None`` (the default family); ``overrides`` replace config fields.
    The network's ``config`` attribute is the config it was built from.
    """
    if config is None:
        config = DEFAULT_FAMILY
    if isinstance(config, str):
        model_info(config)  # the one-line error before the config's own checks
        config = ModelConfig(family=config, **overrides)
    elif overrides:
        import dataclasses

        config = dataclasses.replace(config, **overrides)
    info = model_info(config.family)
    module = info.builder(config)
    if module_config(module) != config:
        raise TypeError(
            f"model family {info.name!r}: {_qualname(info.builder)} must keep the config it "
            "was built from as the module's .config"
        )
    return module


def module_config(module: Any) -> ModelConfig:
    """The :class:`ModelConfig` a network built by :func:`create_model` carries."""
    config = getattr(module, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{type(module).__name__} carries no ModelConfig as .config")
    return config
