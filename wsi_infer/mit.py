"""Mix-Transformer (MiT) encoder parts: sizes as ``transformers`` configs, windowed attention.

Imports ``transformers``; loaded only where a model is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.segformer.modeling_segformer import SegformerAttention

from wsi_infer.config import ARCHITECTURES

__all__ = ["WindowedSegformerAttention", "encoder_config", "window_attention"]


class WindowedSegformerAttention(SegformerAttention):
    """MiT's efficient self-attention computed within square windows of ``window`` tokens.

    The token map ``(B, H*W, C)`` is cut into ``window x window`` windows, each
    attends to itself only (queries, keys and the spatially reduced keys of
    the window), and the windows are put back.  Same parameters as
    :class:`SegformerAttention`, so pretrained and global-attention weights load
    unchanged.  ``window = 0`` is global attention.
    """

    window: int = 0

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        w = self.window
        if not w or (height <= w and width <= w):
            return super().forward(hidden_states, height, width, attention_mask, **kwargs)
        if height % w or width % w:
            raise ValueError(
                f"a {height} x {width} token map is not a whole number of {w}-token windows"
            )
        b, n, c = hidden_states.shape
        gh, gw = height // w, width // w
        x = hidden_states.reshape(b, gh, w, gw, w, c).permute(0, 1, 3, 2, 4, 5)
        y, _ = super().forward(x.reshape(b * gh * gw, w * w, c), w, w, attention_mask, **kwargs)
        y = y.reshape(b, gh, gw, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n, c)
        return y, None


def window_attention(encoder: nn.Module, window_px: int) -> None:
    """Make every attention layer of a SegformerModel attend within ``window_px`` windows."""
    stages: Any = encoder.stages
    for s, stage in enumerate(stages):
        stride = 4 * 2**s  # stage s works at 1/4, 1/8, 1/16, 1/32 of the input
        for block in stage.blocks:
            block.attention.__class__ = WindowedSegformerAttention
            block.attention.window = window_px // stride


def encoder_config(arch: str) -> Any:
    from transformers import SegformerConfig

    a = ARCHITECTURES[arch]
    return SegformerConfig(
        depths=a["depths"],
        hidden_sizes=a["hidden_sizes"],
        decoder_hidden_size=a["decoder_hidden_size"],
        drop_path_rate=0.1,
    )
