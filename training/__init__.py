"""Training, evaluation and a classical baseline for the ``wsi_infer`` nucleus model.

Modules, by responsibility:

* :mod:`training.data`: PanNuke folds and ``images/ + labels.npz`` folders as patch sources,
  target building (foreground, per-instance distance, type map), the torch dataset;
* :mod:`training.augment`: the augmentation pipeline (image and masks kept aligned);
* :mod:`training.losses`: Tversky, Dice, BCE, distance MSE / gradient MSE, type cross-entropy;
* :mod:`training.metrics`: PanNuke's bPQ / mPQ, per-class PQ, AJI, Dice, detection F1;
* :mod:`training.evaluate`: running a model (or the baseline) over a source and scoring it;
* :mod:`training.baseline`: colour deconvolution + Otsu + watershed;
* :mod:`training.loop`: the optimisation loop with checkpoints and resume;
* :mod:`training.cli`: ``wsi-infer-train`` and ``wsi-infer-eval``.
"""

__all__: list[str] = []
