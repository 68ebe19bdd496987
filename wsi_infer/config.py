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
from importlib import resources
from pathlib import Path
from typing import Any

from wsi_infer.errors import CheckpointError
from wsi_infer.files import file_sha256

if typing.TYPE_CHECKING:
    from wsi_infer.heads import Head

__all__ = [
    "ARCHITECTURES",
    "BUNDLED_MODELS",
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "CONFIG_FILE",
    "DEFAULT_FAMILY",
    "WEIGHTS_FILE",
    "ModelConfig",
    "file_sha256",
    "model_config",
    "resolve_checkpoint",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: The model family of a config that names none (see :mod:`wsi_infer.registry`).
DEFAULT_FAMILY = "segformer"
#: Models shipped inside the package, by name.
BUNDLED_MODELS = ("default",)

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

#: Mix-Transformer encoder sizes (SegFormer paper, table 6: MiT-B0 ... MiT-B5).  All share
#: 1, 2, 5, 8 attention heads, reduction ratios 8, 4, 2, 1 and MLP ratio 4 per stage, the
#: defaults of ``transformers.SegformerConfig``; ``decoder_hidden_size`` is the width of this
#: project's fusion decoder, not of SegFormer's all-MLP head.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "b0": {"depths": [2, 2, 2, 2], "hidden_sizes": [32, 64, 160, 256], "decoder_hidden_size": 128},
    "b1": {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 256},
    "b2": {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 256},
    "b3": {
        "depths": [3, 4, 18, 3],
        "hidden_sizes": [64, 128, 320, 512],
        "decoder_hidden_size": 256,
    },
    "b4": {
        "depths": [3, 8, 27, 3],
        "hidden_sizes": [64, 128, 320, 512],
        "decoder_hidden_size": 256,
    },
    "b5": {
        "depths": [3, 6, 40, 3],
        "hidden_sizes": [64, 128, 320, 512],
        "decoder_hidden_size": 256,
    },
}
#: Downsampling of the encoder's last stage: inputs are multiples of it.
ENCODER_STRIDE = 32

#: Output channels of the network, in order.
OUTPUT_CHANNELS: tuple[str, ...] = ("foreground", "distance", "background_type", *CLASS_NAMES)


@dataclass(frozen=True)
class ModelConfig:
    """What a trained model expects and produces.

    ``mpp`` is the resolution (micrometres per pixel) the model was trained at;
    ``tile_size`` and ``overlap`` the engine's default tile (the largest crop it was
    trained on) and the context kept around each tile's core; ``mean``/``std``
    normalise RGB values scaled to [0, 1].

    ``attention_window`` (pixels, 0 for global attention) restricts the encoder's
    self-attention to square windows laid on a grid anchored at the tile origins.
    When every tile origin lies on one slide-wide grid of that step (tile size and
    ``overlap`` both multiples of the window), a pixel's attention context no longer
    depends on how the slide was cut into tiles: only the convolutions near a tile's
    border see padding, and the overlap discards that border.

    The post-processing defaults belong to the model (chosen on its validation
    split): ``foreground_threshold`` and ``marker_threshold`` (probabilities),
    ``min_marker_area_um2`` (smaller distance peaks seed no nucleus of their own)
    and ``min_nucleus_area_um2`` (smaller fragments are no nuclei).
    ``train_area_um2`` holds the 5th, 50th and 95th percentiles of the nucleus
    areas the model was trained on, for plausibility checks of a run's result.
    """

    name: str = "wsi-infer-nuclei"
    version: str = "0"
    family: str = DEFAULT_FAMILY
    arch: str = "b0"
    mpp: float = 0.25
    tile_size: int = 256
    overlap: int = 64
    attention_window: int = 0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    class_names: tuple[str, ...] = CLASS_NAMES
    class_colours: tuple[tuple[int, int, int], ...] = CLASS_COLOURS
    stem_channels: int = 16
    foreground_threshold: float = 0.5
    marker_threshold: float = 0.5
    min_marker_area_um2: float = 0.0
    min_nucleus_area_um2: float = 3.0
    train_area_um2: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        wrong = _type_problems(self)
        if wrong:  # the checks below compare values: types first
            raise CheckpointError("invalid model config: " + "; ".join(wrong))
        problems = []
        if not self.family.replace("_", "").replace("-", "").isalnum():
            problems.append(f"family {self.family!r} is not a model family's name")
        if self.arch not in ARCHITECTURES:
            problems.append(f"arch {self.arch!r} is not one of {sorted(ARCHITECTURES)}")
        if not 0.01 <= self.mpp <= 100:
            problems.append(f"mpp {self.mpp} is outside 0.01..100")
        if self.tile_size < 32 or self.tile_size % ENCODER_STRIDE:
            problems.append(f"tile_size {self.tile_size} is not a positive multiple of 32")
        if self.overlap < 0 or self.overlap % 2 or self.overlap >= self.tile_size:
            problems.append(f"overlap {self.overlap} is not an even number below tile_size")
        w = self.attention_window
        if w < 0 or w % ENCODER_STRIDE:
            problems.append(f"attention_window {w} is not 0 or a positive multiple of 32")
        elif w and (self.tile_size % w or self.overlap % w):
            problems.append(
                f"tile_size {self.tile_size} and overlap {self.overlap} must be multiples of "
                f"attention_window {w}"
            )
        for key in ("foreground_threshold", "marker_threshold"):
            if not 0 < getattr(self, key) < 1:
                problems.append(f"{key} {getattr(self, key)} is not strictly between 0 and 1")
        if self.min_marker_area_um2 < 0 or self.min_nucleus_area_um2 < 0:
            problems.append("minimum areas must not be negative")
        if self.train_area_um2 is not None and (
            len(self.train_area_um2) != 3
            or list(self.train_area_um2) != sorted(self.train_area_um2)
        ):
            problems.append("train_area_um2 needs 3 increasing percentiles (5th, 50th, 95th)")
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
        if self.train_area_um2 is not None:
            object.__setattr__(self, "train_area_um2", tuple(float(v) for v in self.train_area_um2))

    @property
    def input_multiple(self) -> int:
        """Model inputs must have height and width multiples of this."""
        return max(ENCODER_STRIDE, self.attention_window)

    @property
    def num_classes(self) -> int:
        """Nucleus classes, background excluded."""
        return len(self.class_names)

    @property
    def head(self) -> Head:
        """The output head of this config's model family (see :mod:`wsi_infer.heads`):
        its logit channels, the logits -> maps step and the maps' layout."""
        from wsi_infer.registry import model_head

        return model_head(self)

    @property
    def out_channels(self) -> int:
        """Output channels of the network (the head's)."""
        return self.head.out_channels

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["class_names"] = list(self.class_names)
        d["class_colours"] = [list(c) for c in self.class_colours]
        if self.train_area_um2 is not None:
            d["train_area_um2"] = list(self.train_area_um2)
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


def _bundled_dir(name: str) -> Path:
    return Path(str(resources.files("wsi_infer") / "models" / name))


def resolve_checkpoint(model: str | Path) -> Path:
    """Turn a bundled model's name or a path into a checkpoint directory."""
    if isinstance(model, str) and model in BUNDLED_MODELS:
        path = _bundled_dir(model)
    else:
        path = Path(model)
        if path.is_file() and path.name in (WEIGHTS_FILE, CONFIG_FILE):
            path = path.parent
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{path}: not a model checkpoint (needs {WEIGHTS_FILE} and {CONFIG_FILE}); "
            f"pass a checkpoint directory or one of {list(BUNDLED_MODELS)}"
        )
    return path


def model_config(model: str | Path) -> ModelConfig:
    """The config of a bundled model, a checkpoint directory or an exported ONNX file,
    read without loading weights."""
    path = Path(model)
    if path.suffix.lower() == ".onnx" and path.is_file():
        from wsi_infer.export.onnx_export import read_onnx_contract

        return read_onnx_contract(path).config
    return ModelConfig.from_json(resolve_checkpoint(model) / CONFIG_FILE)
