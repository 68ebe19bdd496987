"""The model as the engine runs it: uint8 RGB tiles in, compact maps out, one graph.

Everything per pixel around the network runs where the network runs (on the
GPU when there is one, in ONNX Runtime's or TensorRT's own threads otherwise):
the tiles arrive as the slide reader gives them, ``uint8 (B, H, W, 3)``, and are
normalised inside the graph; the logits never leave it: the graph ends in the
compact maps of :mod:`wsi_infer.postprocess`, ``uint8 (B, H, W, 4)`` (foreground
and distance probabilities, the most likely nucleus class 1..K and its
probability among the K nucleus classes, probabilities scaled to 0..255).  That
is 4 bytes per pixel out of the model instead of ``4 * out_channels`` bytes of
float32 logits (32 for the five PanNuke classes), and no softmax on the CPU.

:func:`maps_from_logits` has exactly the semantics of
:func:`wsi_infer.postprocess.logits_to_maps` (the type head's background logit
is left out; rounding half to even).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wsi_infer.config import ModelConfig
from wsi_infer.heads import Head, NucleusHead

__all__ = ["MAPS_INPUT", "MAPS_OUTPUT", "TileMaps", "maps_from_logits", "normalise_tiles"]

#: Names of the exported graph's input and output.
MAPS_INPUT = "tiles"
MAPS_OUTPUT = "maps"


def normalise_tiles(
    tiles: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
) -> torch.Tensor:
    """uint8 RGB tiles ``(B, H, W, 3)`` -> the network's input, float32 ``(B, 3, H, W)``.

    Values are scaled to [0, 1], then normalised per channel with the model config's
    ``mean`` and ``std`` (tensors shaped ``(1, 3, 1, 1)``, or three numbers each), as
    the network was trained.  The engine's graph, training and evaluation all use this.
    """
    if not isinstance(mean, torch.Tensor):
        mean = torch.tensor(mean, dtype=torch.float32, device=tiles.device).view(1, 3, 1, 1)
    if not isinstance(std, torch.Tensor):
        std = torch.tensor(std, dtype=torch.float32, device=tiles.device).view(1, 3, 1, 1)
    return (tiles.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def maps_from_logits(logits: torch.Tensor, head: NucleusHead | None = None) -> torch.Tensor:
    """Logits ``(B, C, H, W)`` -> compact maps ``(B, H, W, 4)`` uint8 (computed in float32):
    ``head``'s step (:meth:`wsi_infer.heads.NucleusHead.maps_from_logits`), without one the
    default layout of ``C`` channels."""
    if head is None:
        head = NucleusHead.for_logits(int(logits.shape[1]))
    return head.maps_from_logits(logits)


class TileMaps(nn.Module):
    """``net`` wrapped for the engine: ``uint8 (B, H, W, 3)`` tiles -> ``uint8 (B, H, W, 4)`` maps
    (the maps of the config's head, :attr:`~wsi_infer.config.ModelConfig.head`).

    The tiles are scaled to [0, 1] and normalised with the config's mean and
    std, as the network was trained; ``H`` and ``W`` must be multiples of the
    config's ``input_multiple``.
    """

    def __init__(self, net: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.head: Head = config.head
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer(
            "mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        )
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.head.maps_from_logits(self.net(normalise_tiles(tiles, self.mean, self.std)))
