"""Run a model (or any instance predictor) over a source and score it.

Prediction uses the engine's own post-processing (:mod:`wsi_infer.postprocess`):
``logits_to_maps`` -> ``segment`` -> ``instance_types``, so the scores are the
scores of what the engine would output for the same pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from tqdm import tqdm

from wsi_infer.config import ModelConfig
from wsi_infer.postprocess import PostprocessParams, instance_types, logits_to_maps, segment
from wsi_infer.training.data import Sample, Source, normalise_image
from wsi_infer.training.metrics import ScoreBoard

__all__ = [
    "Prediction",
    "Predictor",
    "evaluate",
    "maps_to_prediction",
    "model_predictor",
    "predict_maps",
]

logger = logging.getLogger(__name__)

#: (instance map int32, per-pixel class map uint8) of one image.
Prediction = tuple[NDArray[np.int32], NDArray[np.uint8]]
Predictor = Callable[[list[Sample]], list[Prediction]]
#: The engine's default post-processing thresholds.
DEFAULT_PARAMS = PostprocessParams()


@torch.no_grad()
def predict_maps(
    module: torch.nn.Module,
    config: ModelConfig,
    images: list[NDArray[np.uint8]],
    device: torch.device | str = "cpu",
) -> NDArray[np.uint8]:
    """Compact maps ``(B, H, W, 4)`` of equally sized RGB images (reflect-padded to the
    model's input multiple)."""
    x = np.stack([normalise_image(im, config.mean, config.std) for im in images])
    h, w = x.shape[-2:]
    k = config.input_multiple
    ph, pw = (-h) % k, (-w) % k
    t = torch.from_numpy(x).to(device)
    if ph or pw:
        t = F.pad(t, (0, pw, 0, ph), mode="reflect")
    logits = module(t)[..., :h, :w].float().cpu().numpy()
    return logits_to_maps(logits)


def maps_to_prediction(
    maps: NDArray[np.uint8], params: PostprocessParams = DEFAULT_PARAMS
) -> Prediction:
    """Instances and a per-pixel class map (each nucleus painted with its class)."""
    labels = segment(maps, params)
    n = int(labels.max(initial=0))
    types, _ = instance_types(labels, maps, n)
    lut = np.concatenate([[0], types]).astype(np.uint8)
    return labels, lut[labels]


def model_predictor(
    module: torch.nn.Module,
    config: ModelConfig,
    device: torch.device | str = "cpu",
    params: PostprocessParams = DEFAULT_PARAMS,
) -> Predictor:
    """A predictor running ``module`` in eval mode, then the engine's post-processing."""

    def predict(samples: list[Sample]) -> list[Prediction]:
        was_training = module.training
        module.eval()
        try:
            maps = predict_maps(module, config, [s.image for s in samples], device)
        finally:
            module.train(was_training)
        return [maps_to_prediction(m, params) for m in maps]

    return predict


def _batches(source: Source, batch_size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for i in range(len(source)):
        s = source[i]
        if batch and (len(batch) >= batch_size or batch[0].image.shape != s.image.shape):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def evaluate(
    predictor: Predictor,
    sources: list[Source],
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = False,
    class_names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Score ``predictor`` on every sample of ``sources`` (the first ``limit`` of each)."""
    board = ScoreBoard(class_names) if class_names else ScoreBoard()
    total = sum(min(len(s), limit or len(s)) for s in sources)
    with tqdm(total=total, desc="evaluate", disable=not progress, leave=False) as bar:
        for source in sources:
            n = 0
            for batch in _batches(source, batch_size):
                if limit is not None:
                    batch = batch[: max(0, limit - n)]
                    if not batch:
                        break
                for sample, (inst, types) in zip(batch, predictor(batch), strict=True):
                    board.add_prediction(sample.inst, sample.types, inst, types, sample.tissue)
                n += len(batch)
                bar.update(len(batch))
    return board.summary()
