"""The model registry and the head: every registered family builds, runs and round-trips,
as timm's tests/test_models.py checks every model; a new family needs only its module."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsi_infer.config import CONFIG_FILE, DEFAULT_FAMILY, ModelConfig
from wsi_infer.errors import CheckpointError
from wsi_infer.heads import NucleusHead
from wsi_infer.model import Network, load_model, resolve_checkpoint, save_checkpoint
from wsi_infer.postprocess import logits_to_maps, segment
from wsi_infer.registry import create_model, list_models, model_info, register_model
from wsi_infer.tilemaps import TileMaps, maps_from_logits

#: Small enough for the CPU: the smallest stem (inputs are two input multiples a side).
SMALL = {"stem_channels": 4, "mpp": 1.0}


def _small(name: str) -> ModelConfig:
    return ModelConfig(family=name, stem_channels=4, mpp=1.0)


def _input(config: ModelConfig, batch: int = 2) -> torch.Tensor:
    side = 2 * config.input_multiple
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_models())
def test_registered_model_builds_runs_and_has_its_heads_channels(name: str) -> None:
    torch.manual_seed(0)
    config = _small(name)
    module = create_model(config).eval()
    assert module.config == config and module.config.family == name
    x = _input(config)
    with torch.inference_mode():
        logits = module(x)
    head = config.head
    assert tuple(logits.shape) == (2, head.out_channels, *x.shape[-2:])
    maps = head.logits_to_maps(logits.numpy())
    assert maps.shape == (2, *head.scratch_shape(*x.shape[-2:]))
    assert maps.dtype == np.dtype(head.map_dtype)
    assert len(head.map_channels) == head.num_map_channels
    # a written tile is never "not done": the done channel has no 0
    assert maps[..., head.done_channel].min() > 0
    # the graph's step (every backend's) gives the host's maps, up to a rounding edge
    graph = head.maps_from_logits(logits).numpy()
    assert graph.shape == maps.shape and graph.dtype == maps.dtype
    assert np.abs(graph.astype(np.int16) - maps).max() <= 1


@pytest.mark.parametrize("name", list_models())
def test_registered_model_round_trips_its_weights(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = _small(name)
    module = create_model(config).eval()
    save_checkpoint(module, tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert saved["family"] == name
    loaded = load_model(tmp_path / "ckpt")
    assert type(loaded.module) is type(module) and loaded.config == config
    for (k, a), (k2, b) in zip(
        module.state_dict().items(), loaded.module.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    x = _input(config, 1)
    with torch.inference_mode():
        assert torch.equal(module(x), loaded.module(x))


def test_unknown_family_is_one_line_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        create_model("no-such-net")
    message = str(err.value)
    assert "\n" not in message and "no-such-net" in message and DEFAULT_FAMILY in message
    # a checkpoint naming an unknown family fails to load the same way, naming its file
    ckpt = tmp_path / "m"
    save_checkpoint(create_model(_small(DEFAULT_FAMILY)), ckpt)
    data = json.loads((ckpt / CONFIG_FILE).read_text())
    (ckpt / CONFIG_FILE).write_text(json.dumps({**data, "family": "no-such-net"}))
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt)
    assert "\n" not in str(err.value) and CONFIG_FILE in str(err.value)
    assert DEFAULT_FAMILY in str(err.value)


def test_a_config_without_family_is_the_default_family() -> None:
    """Checkpoints written before the registry (version 2 of the bundled one, say) name no
    family: the bundled config without that key reads as the default family."""
    raw = json.loads((resolve_checkpoint("default") / CONFIG_FILE).read_text())
    assert raw.pop("family") == DEFAULT_FAMILY
    config = ModelConfig.from_dict(raw)
    assert config.family == DEFAULT_FAMILY
    assert config.head == NucleusHead(num_classes=len(raw["class_names"]))
    assert config.out_channels == 3 + len(raw["class_names"])


def test_head_steps_match_the_reference_layout() -> None:
    """The head's maps are those of the layout the engine always had: foreground and
    distance sigmoids, class argmax over channels 3.. (the type background left out)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(2, 8, 16, 16)).astype(np.float32)
    maps = NucleusHead(num_classes=5).logits_to_maps(logits)
    sig = 1.0 / (1.0 + np.exp(-logits[:, :2]))
    soft = np.exp(logits[:, 3:] - logits[:, 3:].max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(maps[..., 0], np.rint(sig[:, 0] * 255))
    np.testing.assert_array_equal(maps[..., 1], np.rint(sig[:, 1] * 255))
    np.testing.assert_array_equal(maps[..., 2], soft.argmax(axis=1) + 1)
    np.testing.assert_array_equal(maps[..., 3], np.rint(soft.max(axis=1) * 255))
    np.testing.assert_array_equal(logits_to_maps(logits), maps)  # no head: C channels' layout
    np.testing.assert_array_equal(maps_from_logits(torch.from_numpy(logits)).numpy(), maps)


def test_head_refuses_logits_of_another_width_and_bad_layouts() -> None:
    head = NucleusHead(num_classes=5)
    with pytest.raises(CheckpointError, match="outputs 7 channels"):
        head.logits_to_maps(np.zeros((1, 7, 4, 4), np.float32))
    with pytest.raises(CheckpointError, match="num_classes"):
        NucleusHead(num_classes=0)
    with pytest.raises(CheckpointError, match="distinct"):
        NucleusHead(num_classes=2, foreground=1, distance=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        head.num_classes = 3  # type: ignore[misc]


# --- a second family, defined here alone: nothing outside this block knows of it ----------


@dataclasses.dataclass(frozen=True)
class _SwappedHead(NucleusHead):
    """The nucleus maps from logits laid out distance first, then foreground."""

    foreground: int = 1
    distance: int = 0


@register_model("tiny-conv-test", head=_SwappedHead.for_config)
class _TinyConv(Network):
    """Two convolutions: a test family."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(
            nn.Conv2d(3, config.stem_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(config.stem_channels, config.head.out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def test_a_new_family_needs_only_its_module(tmp_path: Path) -> None:
    assert "tiny-conv-test" in list_models()
    assert model_info("tiny-conv-test").description == "Two convolutions: a test family."
    torch.manual_seed(0)
    config = _small("tiny-conv-test")
    module = create_model("tiny-conv-test", **SMALL)
    assert isinstance(module, _TinyConv) and module.config == config
    assert isinstance(config.head, _SwappedHead)
    x = _input(config)
    with torch.inference_mode():
        logits = module(x)
    maps = config.head.logits_to_maps(logits.numpy())
    # the head, not a constant, says which channel is the foreground
    swapped = logits[:, [1, 0, *range(2, logits.shape[1])]].numpy()
    np.testing.assert_array_equal(maps, NucleusHead(num_classes=5).logits_to_maps(swapped))
    assert segment(maps[0]).shape == x.shape[-2:]
    # the engine's graph (every backend) runs the family's head too
    tiles = torch.randint(0, 256, (1, *x.shape[-2:], 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = TileMaps(module, config).eval()(tiles)
    assert out.shape == (1, *config.head.scratch_shape(*x.shape[-2:])) and out.dtype == torch.uint8
    # and its checkpoints load through the registry
    save_checkpoint(module, tmp_path / "tiny")
    assert type(load_model(tmp_path / "tiny").module) is _TinyConv
