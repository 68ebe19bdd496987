"""Training, evaluation and a classical baseline for the ``wsi_infer`` nucleus model.

Modules, by responsibility:

* :mod:`wsi_infer.training.data`: PanNuke folds and ``images/ + labels.npz`` folders as patch sources,
  target building (foreground, per-instance distance, type map), the torch dataset;
* :mod:`wsi_infer.training.augment`: the augmentation pipeline (image and masks kept aligned);
* :mod:`wsi_infer.training.losses`: Tversky, Dice, BCE, distance MSE / gradient MSE, type cross-entropy;
* :mod:`wsi_infer.training.metrics`: PanNuke's bPQ / mPQ, per-class PQ, AJI, Dice, detection F1;
* :mod:`wsi_infer.training.evaluate`: running a model (or the baseline) over a source and scoring it;
* :mod:`wsi_infer.training.baseline`: colour deconvolution + Otsu + watershed;
* :mod:`wsi_infer.training.loop`: the optimisation loop with checkpoints and resume;
* :mod:`wsi_infer.training.cli`: ``wsi-infer-train`` and ``wsi-infer-eval``.
"""

__all__: list[str] = []
