"""The nucleus model: a SegFormer (Mix-Transformer) encoder with a full-resolution decoder.

SegFormer's own all-MLP head predicts at 1/4 of the input, too coarse to
separate touching nuclei.  We keep its multi-scale fusion at 1/4 and add a
light upsampling path with skip features from a small convolutional stem at
1/1 and 1/2, ending in three heads at full resolution:

* ``foreground``: one logit, nucleus vs. background;
* ``distance``: each nucleus' distance transform normalised to [0, 1]
  (1 at its centre), whose peaks are the markers that separate touching
  nuclei (see :mod:`wsi_infer.postprocess`);
* ``type``: background + one logit per nucleus class.

The encoder is built from a config; :func:`load_encoder_weights` copies in
pretrained Mix-Transformer weights (a Hugging Face id such as ``nvidia/mit-b2``,
downloaded by ``transformers`` where the internet is reachable, or a local
directory written by ``save_pretrained``).  Loading a checkpoint never downloads.

With ``config.attention_window`` set, every self-attention layer of the encoder
attends within square windows of that many input pixels (see
:class:`WindowedSegformerAttention`); the weights are those of plain MiT.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsi_infer.config import (
    ARCHITECTURES,
    BUNDLED_MODELS,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    file_sha256,
    model_config,
    resolve_checkpoint,
)
from wsi_infer.errors import CheckpointError
from wsi_infer.files import atomic_write
from wsi_infer.heads import NucleusHead
from wsi_infer.registry import create_model, module_config, register_model

__all__ = [
    "BUNDLED_MODELS",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "LoadedModel",
    "Network",
    "NucleusSegFormer",
    "file_sha256",
    "load_encoder_weights",
    "load_model",
    "model_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "submodule",
]

logger = logging.getLogger(__name__)


def _conv_bn_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


class Network(nn.Module):
    """Base class of the registered networks (:func:`wsi_infer.registry.register_model`):
    a module that keeps the config it was built from as ``.config``."""

    config: ModelConfig


def submodule(module: nn.Module, name: str) -> nn.Module:
    """``module``'s sub-module ``name`` (e.g. the ``encoder`` that training and pretrained
    weights need), or a one-line TypeError naming the family that lacks it."""
    part = getattr(module, name, None)
    if not isinstance(part, nn.Module):
        family = getattr(getattr(module, "config", None), "family", type(module).__name__)
        raise TypeError(f"model family {family!r} has no .{name} sub-module")
    return part


@register_model("segformer", head=NucleusHead.for_config)
class NucleusSegFormer(Network):
    """SegFormer encoder, MLP fusion at 1/4, convolutional upsampling to 1/1.

    Input: float tensor ``(B, 3, H, W)``, already normalised, ``H`` and ``W``
    multiples of 32.  Output: ``(B, config.out_channels, H, W)`` raw logits
    (the distance channel is a logit too; apply a sigmoid).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from transformers import SegformerModel

        from wsi_infer.mit import encoder_config, window_attention

        self.config = config
        arch = ARCHITECTURES[config.arch]
        self.encoder = SegformerModel(encoder_config(config.arch))
        if config.attention_window:
            window_attention(self.encoder, config.attention_window)
        d = int(arch["decoder_hidden_size"])
        self.proj = nn.ModuleList(nn.Conv2d(c, d, 1) for c in arch["hidden_sizes"])
        self.fuse = nn.Sequential(nn.Conv2d(4 * d, d, 1, bias=False), nn.BatchNorm2d(d), nn.GELU())
        s = config.stem_channels
        self.stem1 = _conv_bn_act(3, s)  # 1/1
        self.stem2 = _conv_bn_act(s, 2 * s, stride=2)  # 1/2
        self.up2 = _conv_bn_act(d + 2 * s, 2 * s)  # at 1/2
        self.up1 = _conv_bn_act(2 * s + s, s)  # at 1/1
        self.head = nn.Conv2d(s, config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = self.encoder(x, output_hidden_states=True).hidden_states
        q = feats[0].shape[-2:]  # 1/4
        fused = torch.cat(
            [
                F.interpolate(p(f), size=q, mode="bilinear", align_corners=False)
                for p, f in zip(self.proj, feats, strict=True)
            ],
            dim=1,
        )
        y = self.fuse(fused)
        s1 = self.stem1(x)
        s2 = self.stem2(s1)
        y = F.interpolate(y, size=s2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.up2(torch.cat([y, s2], dim=1))
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        y = self.up1(torch.cat([y, s1], dim=1))
        out: torch.Tensor = self.head(y)
        return out


def load_encoder_weights(module: Network, source: str | Path) -> str:
    """Copy pretrained MiT encoder weights into ``module``; returns a description.

    ``source`` is a local directory written by ``SegformerModel.save_pretrained``
    (or by any SegFormer checkpoint's ``save_pretrained``) or a Hugging Face id
    such as ``nvidia/mit-b0`` (downloaded by ``transformers``, which needs the
    internet once, then its cache).  The encoder's size must match the model's
    ``arch``: a mismatch is a one-line :class:`CheckpointError`.
    """
    from transformers import SegformerModel

    path = Path(source)
    local = path.is_dir()
    if not local and (path.exists() or str(source).startswith((".", "/", "~"))):
        raise CheckpointError(
            f"{source}: not a directory of SegFormer weights (expected config.json and "
            "model.safetensors written by save_pretrained)"
        )
    try:
        pretrained = SegformerModel.from_pretrained(str(source), local_files_only=local)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{source}: cannot load SegFormer encoder weights ({first}); give a local "
            "directory written by save_pretrained, or a Hugging Face id such as nvidia/mit-b2 "
            "on a machine that reaches the hub"
        ) from None
    want = ARCHITECTURES[module.config.arch]
    got_sizes = list(pretrained.config.hidden_sizes)
    got_depths = list(pretrained.config.depths)
    if got_sizes != want["hidden_sizes"] or got_depths != want["depths"]:
        raise CheckpointError(
            f"{source}: encoder has hidden sizes {got_sizes} and depths {got_depths}, but "
            f"arch {module.config.arch} needs {want['hidden_sizes']} and {want['depths']}; "
            f"pass the --arch that matches the weights"
        )
    state = pretrained.state_dict()
    try:
        missing, unexpected = submodule(module, "encoder").load_state_dict(state, strict=False)
    except RuntimeError as exc:  # torch's "size mismatch for ..."
        raise CheckpointError(
            f"{source}: encoder weights do not fit arch {module.config.arch} "
            f"({str(exc).strip().splitlines()[-1].strip()})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: encoder weights do not fit (missing {len(missing)}, unexpected "
            f"{len(unexpected)}, e.g. {(list(missing) + list(unexpected))[:3]})"
        )
    logger.info("encoder weights of MiT-%s loaded from %s", module.config.arch, source)
    return f"{source}"


class LoadedModel:
    """A model with its config and the identity of its checkpoint."""

    def __init__(self, module: Network, config: ModelConfig, sha256: str, source: str):
        self.module = module
        self.config = config
        self.sha256 = sha256
        self.source = source


def load_model(model: str | Path = "default") -> LoadedModel:
    """Load a checkpoint (directory, or a bundled model's name) in eval mode on the CPU.

    The network is built by its config's family (:func:`wsi_infer.registry.create_model`).
    """
    from safetensors.torch import load_file

    path = resolve_checkpoint(model)
    config = ModelConfig.from_json(path / CONFIG_FILE)
    try:
        module = create_model(config)
    except CheckpointError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from None
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path / WEIGHTS_FILE}: cannot read weights ({exc})") from exc
    state = {k: v.float() for k, v in state.items()}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # torch's "size mismatch for ..." (a config of other weights)
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{path}: weights do not match config.json ({first}); use the config saved with "
            "these weights"
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match config (missing {len(missing)}, "
            f"unexpected {len(unexpected)}, e.g. {(missing + unexpected)[:3]})"
        )
    module.eval()
    return LoadedModel(module, config, file_sha256(path / WEIGHTS_FILE), str(path))


def save_checkpoint(
    module: Network,
    out_dir: str | Path,
    *,
    half: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir``.

    ``half`` stores weights as float16 (half the size; they are loaded back as
    float32).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in module.state_dict().items()
    }
    config = module_config(module)  # checked: a state dict alone has no contract
    with atomic_write(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata=metadata or {})
        tmp.chmod(0o644)  # a model is meant to be read by others (the writer's default is 0600)
    with atomic_write(out / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return out
