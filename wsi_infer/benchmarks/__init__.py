"""Benchmarks for wsi-infer: realistic synthetic slides and stage-by-stage throughput.

* :mod:`wsi_infer.benchmarks.make_slide` writes large pyramidal JPEG TIFF slides whose tissue is
  mosaicked from real H&E patches (``python -m wsi_infer.benchmarks.make_slide OUT.tif --size 20000``).
* :mod:`wsi_infer.benchmarks.bench` runs the engine on such slides and measures every stage
  (``python -m wsi_infer.benchmarks.bench --sizes 4096 8192``; results in ``benchmarks/results/``).
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
