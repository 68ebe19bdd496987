"""Losses of the three heads.

* foreground: binary cross-entropy + Tversky (``alpha`` weighs false
  positives, ``beta`` false negatives; ``alpha = beta = 0.5`` is Dice);
* distance: mean squared error of ``sigmoid(logit)`` against the normalised
  per-instance distance, on nuclei and a ring of background around them, plus
  the MSE of its spatial gradients (as HoVer-Net's MSGE) and a soft-target BCE
  (set a weight to 0 to drop a term);
* type: cross-entropy with class weights, ignoring :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wsi_infer.training.data import IGNORE_INDEX

__all__ = [
    "LossWeights",
    "NucleusLoss",
    "dice_loss",
    "distance_losses",
    "gradient_mse",
    "tversky_loss",
]

logger = logging.getLogger(__name__)


def tversky_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - TP / (TP + alpha FP + beta FN)`` over the whole batch (soft counts)."""
    if mask is not None:
        prob, target = prob * mask, target * mask
    tp = (prob * target).sum()
    fp = (prob * (1 - target)).sum()
    fn = ((1 - prob) * target).sum()
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the whole batch (Tversky with ``alpha = beta = 0.5``)."""
    return tversky_loss(prob, target, 0.5, 0.5, smooth)


def gradient_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE of horizontal and vertical finite differences, where ``mask`` holds at both ends."""
    dxp, dxt = pred[..., :, 1:] - pred[..., :, :-1], target[..., :, 1:] - target[..., :, :-1]
    dyp, dyt = pred[..., 1:, :] - pred[..., :-1, :], target[..., 1:, :] - target[..., :-1, :]
    mx = mask[..., :, 1:] * mask[..., :, :-1]
    my = mask[..., 1:, :] * mask[..., :-1, :]
    num = ((dxp - dxt) ** 2 * mx).sum() + ((dyp - dyt) ** 2 * my).sum()
    return num / (mx.sum() + my.sum()).clamp_min(1.0)


def distance_losses(
    logit: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor, ring: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(MSE, gradient MSE, soft-target BCE) of ``sigmoid(logit)`` against ``target``, on
    nuclei and a ring of ``ring`` px around them.

    ``logit``, ``target``, ``foreground``: ``(B, H, W)``.  The BCE with soft targets has
    the same optimum as the MSE but does not saturate, so the peaks (which the engine's
    markers need above 0.5) are learnt sooner.
    """
    logit = logit.float()
    pred = torch.sigmoid(logit)
    fg = foreground.float().unsqueeze(1)
    near = F.max_pool2d(fg, 2 * ring + 1, stride=1, padding=ring).squeeze(1) if ring else fg[:, 0]
    count = near.sum().clamp_min(1.0)
    mse = ((pred - target) ** 2 * near).sum() / count
    bce = (F.binary_cross_entropy_with_logits(logit, target, reduction="none") * near).sum() / count
    return mse, gradient_mse(pred, target, near), bce


@dataclass
class LossWeights:
    """Weights and parameters of :class:`NucleusLoss`."""

    bce: float = 1.0
    tversky: float = 1.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    distance: float = 5.0
    distance_gradient: float = 10.0
    distance_bce: float = 2.0
    type_ce: float = 1.0
    type_dice: float = 0.5
    class_weights: list[float] | None = field(default=None)


class NucleusLoss(nn.Module):
    """The sum of all head losses; :meth:`forward` returns it and its parts (floats)."""

    def __init__(self, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.w = weights or LossWeights()
        cw = (
            torch.tensor(self.w.class_weights, dtype=torch.float32)
            if self.w.class_weights
            else None
        )
        self.register_buffer("class_weights", cw, persistent=False)

    def forward(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = logits.float()
        fg_t = batch["foreground"].float()
        dist_t = batch["distance"].float()
        type_t = batch["type"].long()
        fg_logit = logits[:, 0]
        fg_prob = torch.sigmoid(fg_logit)
        parts: dict[str, torch.Tensor] = {}
        parts["bce"] = F.binary_cross_entropy_with_logits(fg_logit, fg_t)
        parts["tversky"] = tversky_loss(fg_prob, fg_t, self.w.tversky_alpha, self.w.tversky_beta)
        dist_parts = distance_losses(logits[:, 1], dist_t, fg_t)
        parts["distance"], parts["distance_gradient"], parts["distance_bce"] = dist_parts
        type_logits = logits[:, 2:]
        known = type_t != IGNORE_INDEX
        if bool(known.any()):
            parts["type_ce"] = F.cross_entropy(
                type_logits,
                type_t,
                weight=self.class_weights,  # type: ignore[arg-type]
                ignore_index=IGNORE_INDEX,
            )
            # Dice over the nucleus classes (background excluded), on labelled pixels only.
            prob = torch.softmax(type_logits, dim=1)[:, 1:]
            onehot = F.one_hot(type_t.clamp_max(type_logits.shape[1] - 1), type_logits.shape[1])
            onehot = onehot.permute(0, 3, 1, 2)[:, 1:].float()
            m = known.unsqueeze(1).float()
            parts["type_dice"] = tversky_loss(prob, onehot, 0.5, 0.5, mask=m)
        else:
            zero = logits.sum() * 0.0
            parts["type_ce"] = zero
            parts["type_dice"] = zero
        total = sum(getattr(self.w, k) * v for k, v in parts.items())
        assert isinstance(total, torch.Tensor)
        return total, {k: float(v.detach()) for k, v in parts.items()}
