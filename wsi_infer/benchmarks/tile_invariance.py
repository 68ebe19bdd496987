"""Does the result depend on the tile size?  The engine, run twice on the same slide.

For each slide, :func:`wsi_infer.engine.run_slide` runs once per tile size (all
else equal: model, backend, overlap, post-processing) and the two nucleus label
images are compared with :func:`wsi_infer.compare.compare_labels`: nuclei
matched one to one at IoU > 0.5, agreement ``2 * matched / (n_a + n_b)``.

``python -m wsi_infer.benchmarks.tile_invariance SLIDE [SLIDE ...] --tiles 512 1024 [--model default]``
writes a JSON report (``--out``) and prints a table.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np

from wsi_infer.cli.options import (
    PATH,
    backend_option,
    entry_point,
    model_option,
    multi_option,
    out_option,
    overlap_option,
    threads_option,
)

__all__ = ["main", "tile_invariance", "tile_invariance_command"]

logger = logging.getLogger(__name__)


def tile_invariance(
    slide: Path,
    tiles: Sequence[int],
    *,
    model: str = "default",
    backend: str = "onnxruntime",
    mpp: float | None = None,
    overlap: int | None = None,
    threads: int = 2,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run ``slide`` at each tile size; compare every pair of results."""
    import zarr

    from wsi_infer.backends import create_backend
    from wsi_infer.compare import compare_labels
    from wsi_infer.engine import run_slide
    from wsi_infer.params import RunParams

    engine = create_backend(backend, model, device="cpu", threads=threads)
    labels: dict[int, np.ndarray[Any, Any]] = {}
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for tile in tiles:
            params = RunParams.for_model(
                engine.config, tile_size=tile, overlap=overlap, mpp=mpp, workers=threads
            )
            out = Path(tmp) / f"tile{tile}.zarr"
            t0 = time.perf_counter()
            summary = run_slide(slide, out, engine, params)
            seconds = time.perf_counter() - t0
            nuclei: Any = zarr.open_group(str(out), mode="r")["labels/nuclei/0"]
            labels[tile] = np.asarray(nuclei[:])
            runs[str(tile)] = {
                "tiles": summary.tiles,
                "nuclei": summary.nuclei,
                "seconds": round(seconds, 1),
                "overlap": params.overlap,
            }
    pairs = {
        f"{a} vs {b}": compare_labels(labels[a], labels[b]).to_dict()
        for a, b in itertools.combinations(tiles, 2)
    }
    return {
        "slide": slide.name,
        "model": model,
        "backend": backend,
        "attention_window": engine.config.attention_window,
        "runs": runs,
        "pairs": pairs,
    }


@click.command(
    "python -m wsi_infer.benchmarks.tile_invariance",
    help=__doc__,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("slides", type=PATH, nargs=-1, required=True)
@multi_option("--tiles", type=int, metavar="PX...", help="default: model tile and 2x")
@model_option()
@backend_option(default="onnxruntime")
@click.option("--mpp", type=float, help="slide resolution where the metadata has none")
@overlap_option(help="default: the model's")
@threads_option(default=2)
@out_option(help="write the report here (JSON)")
def tile_invariance_command(**options: Any) -> int:
    args = SimpleNamespace(**options)
    logging.basicConfig(level=logging.WARNING)
    from wsi_infer.model import model_config

    tiles = args.tiles or [
        model_config(args.model).tile_size,
        2 * model_config(args.model).tile_size,
    ]
    reports = []
    print(f"{'slide':<32} {'tiles':>12} {'nuclei':>14} {'matched':>8} {'agreement':>9} {'PQ':>6}")
    for slide in args.slides:
        r = tile_invariance(
            slide,
            tiles,
            model=args.model,
            backend=args.backend,
            mpp=args.mpp,
            overlap=args.overlap,
            threads=args.threads,
        )
        reports.append(r)
        for pair, m in r["pairs"].items():
            print(
                f"{slide.name:<32} {pair:>12} {m['nuclei_a']:>6} / {m['nuclei_b']:<6} "
                f"{m['matched']:>8} {100 * m['agreement']:>8.1f}% {m['pq']:>6.3f}"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(reports, indent=2) + "\n")
    return 0


main = entry_point(tile_invariance_command, "python -m wsi_infer.benchmarks.tile_invariance")


if __name__ == "__main__":
    raise SystemExit(main())
