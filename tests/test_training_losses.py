"""Losses: known values and the ignore index."""

from __future__ import annotations

import pytest
import torch

from wsi_infer.training.data import IGNORE_INDEX
from wsi_infer.training.losses import (
    LossWeights,
    NucleusLoss,
    dice_loss,
    distance_losses,
    tversky_loss,
)


def test_tversky_weights_false_positives_by_alpha() -> None:
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1  # 8 positives
    perfect = target.clone()
    assert float(tversky_loss(perfect, target, 0.3, 0.7, smooth=0)) == pytest.approx(0.0)
    over = torch.ones(1, 4, 4)  # TP 8, FP 8, FN 0
    under = target.clone()
    under[0, 1] = 0  # TP 4, FP 0, FN 4
    # 1 - 8 / (8 + 0.3 * 8) and 1 - 4 / (4 + 0.7 * 4)
    assert float(tversky_loss(over, target, 0.3, 0.7, smooth=0)) == pytest.approx(1 - 8 / 10.4)
    assert float(tversky_loss(under, target, 0.3, 0.7, smooth=0)) == pytest.approx(1 - 4 / 6.8)
    assert float(dice_loss(over, target, smooth=0)) == pytest.approx(1 - 16 / 24)


def test_distance_loss_counts_nuclei_and_a_ring_only() -> None:
    fg = torch.zeros(1, 16, 16)
    fg[0, 6:9, 6:9] = 1
    target = fg * 0.5
    logit = torch.logit(target.clamp(1e-4, 1 - 1e-4))
    logit_far = logit.clone()
    logit_far[0, 0, 0] = 10.0  # far from any nucleus: ignored
    mse, grad, _ = distance_losses(logit_far, target, fg, ring=2)
    assert float(mse) < 1e-6 and float(grad) < 1e-6
    logit_near = logit.clone()
    logit_near[0, 5, 5] = 10.0  # in the ring: counted
    mse, _, _ = distance_losses(logit_near, target, fg, ring=2)
    assert float(mse) > 1e-3


def test_type_loss_ignores_unknown_classes_and_backpropagates() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 8, 8, requires_grad=True)
    batch = {
        "foreground": torch.zeros(2, 8, 8),
        "distance": torch.zeros(2, 8, 8),
        "type": torch.full((2, 8, 8), IGNORE_INDEX, dtype=torch.long),
    }
    batch["type"][:, :2] = 0
    loss_fn = NucleusLoss(LossWeights(class_weights=[0.1, 1, 1, 1, 1, 1]))
    total, parts = loss_fn(logits, batch)
    # Changing the logits of ignored pixels must not change the type loss.
    logits2 = logits.detach().clone()
    logits2[:, 2:, 4:] += 5.0
    _, parts2 = loss_fn(logits2, batch)
    assert parts["type_ce"] == pytest.approx(parts2["type_ce"])
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # All pixels unknown: type losses vanish, the rest still trains.
    batch["type"][:] = IGNORE_INDEX
    total, parts = loss_fn(logits, batch)
    assert parts["type_ce"] == 0.0 and torch.isfinite(total)
