"""A small, local nucleus detector used as a backend in engine tests.

It is a real convolutional model with fixed weights: nuclei are dark (haematoxylin), so the
foreground logit grows with the darkness of a blurred image, and the distance logit with a
wider blur of it, which peaks at nucleus centres.  Its receptive field (a few pixels) is far
smaller than the tiles' halo, so what it predicts for a pixel does not depend on how the slide
was tiled: engine tests use it to check tiling and stitching apart from any model's
sensitivity to its context (a SegFormer's attention sees its whole tile).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from wsi_infer.config import ModelConfig
from wsi_infer.tilemaps import maps_from_logits


def _gaussian(sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return (g[:, None] * g[None, :])[None, None]


class DarkNucleiBackend:
    name = "dark-nuclei"
    device = "cpu"
    model_sha256 = "dark-nuclei-v1"
    model_source = "tests/localmodel.py"

    def __init__(self, mpp: float = 0.25) -> None:
        self.config = ModelConfig(mpp=mpp)
        self._fine, self._wide = _gaussian(1.0), _gaussian(2.5)

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Tiles ``uint8 (B, H, W, 3)`` -> compact maps ``uint8 (B, H, W, 4)``, as every backend."""
        with torch.inference_mode():
            rgb = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255
            dark = 1.0 - rgb.mean(dim=1, keepdim=True)  # 0 white .. 1 black
            fine = F.conv2d(dark, self._fine, padding=self._fine.shape[-1] // 2)
            wide = F.conv2d(dark, self._wide, padding=self._wide.shape[-1] // 2)
            fg = 40.0 * (fine - 0.55)
            dist = 40.0 * (wide - 0.6)
            red = rgb[:, :1] - rgb[:, 2:3]  # eosin-ish vs haematoxylin-ish
            types = torch.cat([-fg, 10 * red, -10 * red, 0 * red, 0 * red - 5, 0 * red - 5], 1)
            out = maps_from_logits(torch.cat([fg, dist, types], dim=1))
        result: NDArray[np.uint8] = out.numpy()
        return result
