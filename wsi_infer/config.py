"""The model's input/output contract: a frozen, validated dataclass.

A checkpoint is ``model.safetensors`` beside ``config.json``; the JSON is
:meth:`ModelConfig.to_dict`.  Everything the engine needs to feed the model and
read its output lives here, so an exported model (ONNX) carries the same dict.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_infer.errors import CheckpointError

__all__ = ["ARCHITECTURES", "CLASS_COLOURS", "CLASS_NAMES", "ModelConfig"]

#: PanNuke's five nucleus classes; label value = index + 1, 0 is background.
CLASS_NAMES: tuple[str, ...] = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
#: RGB colours per class, as PanNuke figures and QuPath projects commonly draw them.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 165, 0),
)

#: Mix-Transformer encoder sizes (SegFormer paper, table 6).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "b0": {"depths": [2, 2, 2, 2], "hidden_sizes": [32, 64, 160, 256], "decoder_hidden_size": 128},
    "b1": {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 256},
    "b2": {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 256},
}

#: Output channels of the network, in order.
OUTPUT_CHANNELS: tuple[str, ...] = ("foreground", "distance", "background_type", *CLASS_NAMES)


@dataclass(frozen=True)
class ModelConfig:
    """What a trained model expects and produces.

    ``mpp`` is the resolution (micrometres per pixel) the model was trained at;
    ``tile_size`` the edge of the square tiles it was trained on (any multiple
    of 32 runs); ``mean``/``std`` normalise RGB values scaled to [0, 1].
    """

    name: str = "wsi-infer-nuclei"
    version: str = "0"
    arch: str = "b0"
    mpp: float = 0.25
    tile_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    class_names: tuple[str, ...] = CLASS_NAMES
    class_colours: tuple[tuple[int, int, int], ...] = CLASS_COLOURS
    stem_channels: int = 16
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        wrong = _type_problems(self)
        if wrong:  # the checks below compare values: types first
            raise CheckpointError("invalid model config: " + "; ".join(wrong))
        problems = []
        if self.arch not in ARCHITECTURES:
            problems.append(f"arch {self.arch!r} is not one of {sorted(ARCHITECTURES)}")
        if not 0.01 <= self.mpp <= 100:
            problems.append(f"mpp {self.mpp} is outside 0.01..100")
        if self.tile_size < 32 or self.tile_size % 32:
            problems.append(f"tile_size {self.tile_size} is not a positive multiple of 32")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std > 0")
        if len(self.class_names) != len(self.class_colours) or not self.class_names:
            problems.append("class_names and class_colours must have the same non-zero length")
        if len(self.class_names) > 254:
            problems.append("at most 254 classes fit the uint8 type map")
        if self.stem_channels < 4:
            problems.append("stem_channels must be at least 4")
        if problems:
            raise CheckpointError("invalid model config: " + "; ".join(problems))
        # JSON gives lists: normalise to tuples so equal configs compare equal.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(
            self, "class_colours", tuple(tuple(int(c) for c in col) for col in self.class_colours)
        )

    @property
    def num_classes(self) -> int:
        """Nucleus classes, background excluded."""
        return len(self.class_names)

    @property
    def out_channels(self) -> int:
        """Foreground logit, distance map, then background + class logits."""
        return 2 + 1 + self.num_classes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["class_names"] = list(self.class_names)
        d["class_colours"] = [list(c) for c in self.class_colours]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot read model config ({exc})") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: model config must be a JSON object")
        try:
            return cls.from_dict(data)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}; fix the file or re-export the model") from exc


def _type_problems(config: ModelConfig) -> list[str]:
    """Fields whose value does not have the annotated type (JSON lists count as tuples)."""
    hints = typing.get_type_hints(type(config))
    return [
        f"{f.name} {getattr(config, f.name)!r} is not {_describe(hints[f.name])}"
        for f in dataclasses.fields(config)
        if not _is_a(getattr(config, f.name), hints[f.name])
    ]


def _is_a(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_a(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _is_a(v, a) for v, a in zip(value, args, strict=True)
        )
    if origin is dict:
        return isinstance(value, dict) and all(_is_a(k, args[0]) for k in value)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: "a number", "a list of 3 integers", "lists of strings"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        words = f"list{'s' if plural else ''} of {count}{_describe(args[0], True)}"
    elif origin is dict:
        words = "objects" if plural else "object"
    else:
        noun = {float: "number", int: "integer", str: "string"}.get(hint, str(hint))
        words = noun + "s" if plural else noun
    if plural:
        return words
    return ("an " if words[0] in "aeiou" else "a ") + words
