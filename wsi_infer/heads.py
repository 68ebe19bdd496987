"""Output heads: what a model's logits mean and the compact maps the engine keeps of them.

A head is a frozen, validated dataclass owned by the model's config (see
:attr:`wsi_infer.config.ModelConfig.head`; a registered model family names the
head it uses, :func:`wsi_infer.registry.register_model`).  It says

* which logit channels are which (:attr:`NucleusHead.foreground`,
  :attr:`~NucleusHead.distance`, the class logits from
  :attr:`~NucleusHead.first_class` on) and how many there are
  (:attr:`~NucleusHead.out_channels`);
* the logits -> maps step, in NumPy (:meth:`~NucleusHead.logits_to_maps`, the
  host's reference) and in torch (:meth:`~NucleusHead.maps_from_logits`, inside
  the graph every backend runs), with the same rounding;
* the layout of the maps and of the store's scratch array: the channel names
  (:attr:`~NucleusHead.map_channels`), their dtype, which are probabilities and
  which a class index, and which channel marks a tile as written
  (:attr:`~NucleusHead.done_channel`, never 0 in a written tile).

Engine code asks the head for these instead of hard-coding them, so a model
with other outputs brings its own head and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from wsi_infer.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from wsi_infer.config import ModelConfig

__all__ = [
    "MAP_CLASS",
    "MAP_CLASS_PROB",
    "MAP_DISTANCE",
    "MAP_FOREGROUND",
    "NUCLEUS_MAP_CHANNELS",
    "Head",
    "NucleusHead",
]

#: Channels of the nucleus maps: foreground probability, distance, most likely nucleus
#: class (1..K) and its probability among the nucleus classes (probabilities as 0..255).
NUCLEUS_MAP_CHANNELS: tuple[str, ...] = ("foreground", "distance", "type", "type_prob")
MAP_FOREGROUND, MAP_DISTANCE, MAP_CLASS, MAP_CLASS_PROB = range(len(NUCLEUS_MAP_CHANNELS))


class Head(Protocol):
    """What the engine needs to know of a model's output (see :class:`NucleusHead`)."""

    @property
    def out_channels(self) -> int: ...

    @property
    def map_channels(self) -> tuple[str, ...]: ...

    @property
    def num_map_channels(self) -> int: ...

    @property
    def done_channel(self) -> int: ...

    @property
    def class_channel(self) -> int | None: ...

    @property
    def probability_channels(self) -> tuple[int, ...]: ...

    @property
    def map_dtype(self) -> str: ...

    def scratch_shape(self, height: int, width: int) -> tuple[int, int, int]: ...

    def logits_to_maps(self, logits: NDArray[np.floating]) -> NDArray[Any]: ...

    def maps_from_logits(self, logits: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class NucleusHead:
    """Foreground, distance and class logits -> ``uint8`` maps ``(B, H, W, 4)``.

    Logit channels: ``foreground`` (a logit, sigmoid), ``distance`` (a logit,
    sigmoid), the type head's background logit at ``first_class - 1`` and the
    ``num_classes`` nucleus class logits from ``first_class`` on.  The background
    type logit is left out of the maps: whether a pixel is a nucleus is the
    foreground's call, so every nucleus gets a class, whose probability is taken
    among the nucleus classes alone.  Probabilities are scaled to 0..255 and
    rounded half to even.
    """

    num_classes: int
    foreground: int = 0
    distance: int = 1
    first_class: int = 3

    #: Channels of the maps, in order (see :data:`NUCLEUS_MAP_CHANNELS`).
    map_channels: ClassVar[tuple[str, ...]] = NUCLEUS_MAP_CHANNELS
    #: dtype of the maps and of the store's scratch array.
    map_dtype: ClassVar[str] = "uint8"
    #: The class probability: never 0 in a written tile (at least 1/K), 0 in an unwritten chunk.
    done_channel: ClassVar[int] = MAP_CLASS_PROB
    #: The map channel holding a class index (1..K), compared exactly, not in 1/255 steps.
    class_channel: ClassVar[int | None] = MAP_CLASS
    #: The map channels holding probabilities scaled to 0..255.
    probability_channels: ClassVar[tuple[int, ...]] = (MAP_FOREGROUND, MAP_DISTANCE, MAP_CLASS_PROB)

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.num_classes <= 254:
            problems.append(f"num_classes {self.num_classes} is not 1..254 (uint8 class map)")
        fixed = (self.foreground, self.distance)
        if min(fixed) < 0 or len(set(fixed)) != 2 or max(fixed) >= self.first_class - 1:
            problems.append(
                f"foreground {self.foreground} and distance {self.distance} must be distinct "
                f"channels below the background type logit ({self.first_class - 1})"
            )
        if problems:
            raise CheckpointError("invalid nucleus head: " + "; ".join(problems))

    @classmethod
    def for_config(cls, config: ModelConfig) -> NucleusHead:
        """The head of a config's nucleus classes, in the default channel layout."""
        return cls(num_classes=config.num_classes)

    @classmethod
    def for_logits(cls, channels: int) -> NucleusHead:
        """The default layout of a network with ``channels`` output channels."""
        return cls(num_classes=channels - 3)

    @property
    def out_channels(self) -> int:
        """Logit channels the network outputs."""
        return self.first_class + self.num_classes

    @property
    def num_map_channels(self) -> int:
        return len(self.map_channels)

    def scratch_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape of the maps of a ``height`` x ``width`` region."""
        return (height, width, self.num_map_channels)

    def _check(self, channels: int) -> None:
        if channels != self.out_channels:
            raise CheckpointError(
                f"the network outputs {channels} channels, its head needs {self.out_channels} "
                f"(foreground, distance, background type and {self.num_classes} classes); "
                "the weights and config do not belong together"
            )

    def logits_to_maps(self, logits: NDArray[np.floating]) -> NDArray[np.uint8]:
        """Logits ``(B, C, H, W)`` -> maps ``(B, H, W, 4)`` uint8 (NumPy, float32)."""
        logits = np.asarray(logits, dtype=np.float32)
        self._check(logits.shape[1])
        fg = 1.0 / (1.0 + np.exp(-logits[:, self.foreground]))
        dist = 1.0 / (1.0 + np.exp(-logits[:, self.distance]))
        t = logits[:, self.first_class : self.out_channels]
        t = np.exp(t - t.max(axis=1, keepdims=True))
        t /= t.sum(axis=1, keepdims=True)
        cls = t.argmax(axis=1)
        prob = np.take_along_axis(t, cls[:, None], axis=1)[:, 0]
        out = np.empty((*fg.shape, self.num_map_channels), dtype=self.map_dtype)
        out[..., MAP_FOREGROUND] = np.rint(fg * 255)
        out[..., MAP_DISTANCE] = np.rint(dist * 255)
        out[..., MAP_CLASS] = cls + 1
        out[..., MAP_CLASS_PROB] = np.rint(prob * 255)
        return out

    def maps_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """:meth:`logits_to_maps` in torch (traceable, for the exported graph)."""
        import torch

        self._check(int(logits.shape[1]))
        logits = logits.float()
        fg = torch.sigmoid(logits[:, self.foreground])
        dist = torch.sigmoid(logits[:, self.distance])
        prob, cls = torch.softmax(logits[:, self.first_class : self.out_channels], dim=1).max(dim=1)
        maps = torch.stack(
            [
                torch.round(fg * 255.0),
                torch.round(dist * 255.0),
                (cls + 1).float(),
                torch.round(prob * 255.0),
            ],
            dim=-1,
        )
        return maps.to(getattr(torch, self.map_dtype))
