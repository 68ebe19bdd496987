"""The model's contract: MiT sizes, pretrained encoder weights, windowed attention, maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_infer.config import ARCHITECTURES, ModelConfig
from wsi_infer.errors import CheckpointError, ParameterError
from wsi_infer.mit import WindowedSegformerAttention
from wsi_infer.model import (
    NucleusSegFormer,
    load_encoder_weights,
    load_model,
    model_config,
    save_checkpoint,
)
from wsi_infer.params import RunParams
from wsi_infer.postprocess import instance_types, logits_to_maps, segment
from wsi_infer.tilemaps import maps_from_logits

#: Encoder parameters of MiT-B0 ... B5 in millions (SegFormer paper, table 6).
PAPER_ENCODER_PARAMS = {"b0": 3.4, "b1": 13.1, "b2": 24.2, "b3": 44.0, "b4": 60.8, "b5": 81.4}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_mit_size_has_the_papers_encoder(arch: str) -> None:
    with torch.device("meta"):  # shapes only: b5 is 82 M parameters
        module = NucleusSegFormer(ModelConfig(arch=arch))
    millions = sum(p.numel() for p in module.encoder.parameters()) / 1e6
    assert millions == pytest.approx(PAPER_ENCODER_PARAMS[arch], rel=0.03)
    assert list(module.encoder.config.depths) == ARCHITECTURES[arch]["depths"]


def _mit(arch: str, seed: int) -> torch.nn.Module:
    from transformers import SegformerConfig, SegformerModel

    torch.manual_seed(seed)
    a = ARCHITECTURES[arch]
    return SegformerModel(SegformerConfig(depths=a["depths"], hidden_sizes=a["hidden_sizes"]))


def test_pretrained_encoder_weights_arrive_unchanged_and_survive_a_checkpoint(
    tmp_path: Path,
) -> None:
    pretrained = _mit("b0", seed=1)
    pretrained.save_pretrained(tmp_path / "mit-b0")  # the layout of nvidia/mit-b0 on the hub
    reference = {k: v.clone() for k, v in pretrained.state_dict().items()}

    torch.manual_seed(2)
    module = NucleusSegFormer(ModelConfig(arch="b0", attention_window=64))
    before = module.encoder.state_dict()["stages.0.patch_embeddings.proj.weight"].clone()
    load_encoder_weights(module, tmp_path / "mit-b0")
    got = module.encoder.state_dict()
    assert set(got) == set(reference)
    assert not torch.equal(before, got["stages.0.patch_embeddings.proj.weight"])
    for key, value in reference.items():
        assert torch.equal(got[key], value), key

    save_checkpoint(module, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").module.encoder.state_dict()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key


def test_encoder_weights_of_another_size_fail_in_one_line(tmp_path: Path) -> None:
    _mit("b1", seed=0).save_pretrained(tmp_path / "mit-b1")
    module = NucleusSegFormer(ModelConfig(arch="b0"))
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(module, tmp_path / "mit-b1")
    message = str(err.value)
    assert "\n" not in message and "arch b0" in message and "[64, 128, 320, 512]" in message


def test_missing_encoder_weights_fail_in_one_line(tmp_path: Path) -> None:
    module = NucleusSegFormer(ModelConfig(arch="b0"))
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(module, tmp_path / "nothing-here")
    assert "\n" not in str(err.value) and "nothing-here" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(module, tmp_path / "empty")
    assert "\n" not in str(err.value) and "empty" in str(err.value)


def test_windowed_attention_is_attention_within_each_window() -> None:
    """Each window's output equals the same attention run on that window alone, so a token's
    result depends on its window only, never on the rest of the tile."""
    torch.manual_seed(0)
    module = NucleusSegFormer(ModelConfig(arch="b0", attention_window=64)).eval()
    attn = module.encoder.stages[0].blocks[0].attention
    assert isinstance(attn, WindowedSegformerAttention) and attn.window == 16  # 64 px at 1/4
    h, w, c = 32, 48, 32
    x = torch.randn(2, h * w, c)
    with torch.no_grad():
        whole, _ = attn(x, h, w)
        grid = x.reshape(2, h, w, c)
        for y0 in range(0, h, 16):
            for x0 in range(0, w, 16):
                win = grid[:, y0 : y0 + 16, x0 : x0 + 16].reshape(2, 256, c)
                alone, _ = attn(win, 16, 16)
                got = whole.reshape(2, h, w, c)[:, y0 : y0 + 16, x0 : x0 + 16].reshape(2, 256, c)
                torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-6)
        # A token map that is not whole windows is refused rather than silently misaligned.
        with pytest.raises(ValueError, match="windows"):
            attn(torch.randn(1, 20 * 16, c), 20, 16)


def test_windowed_model_tiles_agree_on_their_common_core() -> None:
    """Two tiles on the same window grid (one twice the size) predict the same pixels far from
    their borders nearly identically: attention sees the same windows in both."""
    torch.manual_seed(0)
    module = NucleusSegFormer(ModelConfig(arch="b0", attention_window=64, stem_channels=4))
    module.eval()
    image = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        big = module(image)
        small = module(image[:, :, 64:320, 64:320])
    core = (slice(None), slice(None), slice(64, 192), slice(64, 192))
    diff = (big[:, :, 64:320, 64:320][core] - small[core]).abs().max().item()
    scale = big.abs().max().item()
    assert diff < 0.05 * scale, (diff, scale)


def test_every_nucleus_gets_a_class() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 8, 64, 64)).astype(np.float32)
    logits[:, 0] = 5.0  # all foreground
    logits[:, 1] = -4.0
    logits[:, 1, 8:24, 8:24] = 4.0  # one core
    logits[:, 1, 40:56, 40:56] = 4.0  # another
    logits[:, 2] = 50.0  # the type head's background logit is the largest everywhere
    maps = logits_to_maps(logits)[0]
    assert maps[..., 2].min() >= 1 and maps[..., 3].min() >= 255 // 5
    # the maps made in the model's graph (every backend) follow the same rule
    np.testing.assert_array_equal(maps_from_logits(torch.from_numpy(logits))[0].numpy(), maps)
    labels = segment(maps)
    types, probs = instance_types(labels, maps)
    assert labels.max() == 2 and types.min() >= 1 and (probs > 0).all()


def test_config_fields_of_the_wrong_type_fail_in_one_line(tmp_path: Path) -> None:
    good = ModelConfig().to_dict()
    for key, value in [("mpp", "0.25"), ("tile_size", None), ("class_colours", [["a"] * 3] * 5)]:
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(CheckpointError) as err:
            ModelConfig.from_json(path)
        assert key in str(err.value) and "\n" not in str(err.value)


def test_run_parameters_come_from_the_model_and_flags_override(tmp_path: Path) -> None:
    config = ModelConfig(
        tile_size=512,
        overlap=128,
        attention_window=64,
        foreground_threshold=0.45,
        marker_threshold=0.6,
        min_marker_area_um2=2.0,
        min_nucleus_area_um2=6.0,
    )
    save_checkpoint(NucleusSegFormer(config), tmp_path / "m")
    assert model_config(tmp_path / "m") == config
    p = RunParams.for_model(config)
    assert (p.tile_size, p.overlap) == (512, 128)
    assert p.post.foreground_threshold == 0.45 and p.post.marker_threshold == 0.6
    assert p.post.min_area == 96 and p.post.min_marker_area == 32  # µm² at 0.25 µm/px
    q = RunParams.for_model(config, tile_size=1024, marker_threshold=0.7, min_area_um2=3.0)
    assert (q.tile_size, q.overlap, q.post.marker_threshold, q.post.min_area) == (
        1024,
        128,
        0.7,
        48,
    )
    with pytest.raises(ParameterError, match="attention window"):
        RunParams.for_model(config, tile_size=480)
    with pytest.raises(ParameterError, match="overlap 96"):
        RunParams.for_model(config, overlap=96)
