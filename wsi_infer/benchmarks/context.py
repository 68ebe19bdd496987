"""How the model's context is handled: designs compared on tile-size invariance, accuracy, speed.

A transformer's prediction for a pixel depends on everything its attention sees,
so with global attention the nuclei found change with the tile size.  Designs
compared, each on the same trained weights:

* ``window``: attention within 64-px windows laid on one slide-wide grid (tile
  origins on that grid), as the model was trained; the overlap discards what the
  convolutions see of each tile's padding.
* ``window-overlap``: the same with an overlap of 128 px, so that every kept pixel
  has 64 px of real context on each side for the convolutions (a halo of 32 px
  covers only part of their receptive field).
* ``global``: the same weights with global attention over each tile.
* ``global-overlap``: global attention, but each tile keeps only its centre
  (a large overlap): every kept pixel sees context on all sides.
* ``global-flips``: global attention averaged over four flips (test-time
  augmentation).
* and the same for any other checkpoint given with ``--baseline`` (e.g. a model
  trained with global attention).

Measured for each design: agreement of the nuclei found at tile sizes T and 2T
(matched one to one at IoU > 0.5) on real slides; validation bPQ and mPQ with
tiles of T on labelled images; and the model's CPU seconds per output megapixel at
T (the price of overlap and flips).  Post-processing: the model's own.

``python -m wsi_infer.benchmarks.context --model runs/x/best --slides S1 S2 --val-data DIR...``
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import torch
from numpy.typing import NDArray

from wsi_infer.cli.options import (
    entry_point,
    model_option,
    multi_option,
    out_option,
    paths_option,
    threads_option,
)

__all__ = ["Design", "context_command", "main", "predict_tiled"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Design:
    name: str
    checkpoint: str
    attention_window: int
    overlap: int
    flips: bool = False


def predict_tiled(
    image: NDArray[np.uint8],
    module: torch.nn.Module,
    config: Any,
    tile: int,
    overlap: int,
    flips: bool = False,
    batch: int = 2,
) -> tuple[NDArray[np.uint8], float]:
    """Compact maps of ``image`` tiled as the engine tiles a slide (origins at
    ``i * stride - halo``, white outside), and the model's CPU seconds."""
    from wsi_infer.postprocess import logits_to_maps
    from wsi_infer.tilemaps import normalise_tiles

    h, w = image.shape[:2]
    halo, stride = overlap // 2, tile - overlap
    ny, nx = math.ceil(h / stride), math.ceil(w / stride)
    pad = np.full((ny * stride + tile, nx * stride + tile, 3), 255, np.uint8)
    pad[halo : halo + h, halo : halo + w] = image
    out = np.zeros((ny * stride, nx * stride, 4), np.uint8)
    coords = [(i, j) for i in range(ny) for j in range(nx)]
    cpu = 0.0
    for k in range(0, len(coords), batch):
        cs = coords[k : k + batch]
        tiles = np.stack(
            [pad[i * stride : i * stride + tile, j * stride : j * stride + tile] for i, j in cs]
        )
        x = normalise_tiles(
            torch.from_numpy(tiles), config.mean, config.std
        )  # as in the engine's graph
        t0 = time.process_time()
        with torch.inference_mode():
            y = module(x)
            if flips:
                for dims in ((-1,), (-2,), (-1, -2)):
                    y = y + module(x.flip(dims)).flip(dims)
                y = y / 4
        cpu += time.process_time() - t0
        maps = logits_to_maps(y.numpy())
        for (i, j), m in zip(cs, maps, strict=True):
            out[i * stride : (i + 1) * stride, j * stride : (j + 1) * stride] = m[
                halo : halo + stride, halo : halo + stride
            ]
    return out[:h, :w], cpu


def _module(design: Design) -> tuple[torch.nn.Module, Any]:
    from wsi_infer.model import load_model
    from wsi_infer.registry import create_model

    loaded = load_model(design.checkpoint)
    config = dataclasses.replace(
        loaded.config,
        attention_window=design.attention_window,
        overlap=design.overlap,
    )
    module = create_model(config)
    module.load_state_dict(loaded.module.state_dict())
    return module.eval(), config


def _read(slide: Path, mpp: float, crop: tuple[int, int, int, int] | None) -> NDArray[np.uint8]:
    from wsi_infer.reader import GridReader, open_slide

    with open_slide(slide) as s:
        if s.mpp is None:
            raise ValueError(f"{slide}: no resolution in its metadata")
        r = GridReader(s, mpp / s.mpp)
        y, x, h, w = crop or (0, 0, r.height, r.width)
        return r.read(x, y, min(w, r.width - x), min(h, r.height - y))


def study(
    designs: Sequence[Design],
    slides: Sequence[tuple[Path, tuple[int, int, int, int] | None]],
    val_sources: Sequence[Any],
    tile: int,
) -> list[dict[str, Any]]:
    from wsi_infer.compare import compare_labels
    from wsi_infer.postprocess import PostprocessParams, instance_types, segment
    from wsi_infer.training.metrics import ScoreBoard

    results = []
    for d in designs:
        module, config = _module(d)
        post = PostprocessParams.for_model(config)
        row: dict[str, Any] = {**dataclasses.asdict(d), "tile": tile, "slides": {}}
        cpu_total, mpx_total = 0.0, 0.0
        for slide, crop in slides:
            image = _read(slide, config.mpp, crop)
            labels = []
            for t in (tile, 2 * tile):
                maps, cpu = predict_tiled(image, module, config, t, d.overlap, d.flips)
                labels.append(segment(maps, post))
                if t == tile:
                    cpu_total += cpu
                    mpx_total += image.shape[0] * image.shape[1] / 1e6
            m = compare_labels(labels[0], labels[1])
            row["slides"][slide.name] = m.to_dict()
            logger.info("%s %s: agreement %.4f", d.name, slide.name, m.agreement)
        row["cpu_s_per_mpx"] = cpu_total / mpx_total if mpx_total else float("nan")
        board = ScoreBoard()
        for src in val_sources:
            for i in range(len(src)):
                sample = src[i]
                maps, _ = predict_tiled(sample.image, module, config, tile, d.overlap, d.flips)
                inst = segment(maps, post)
                types, _ = instance_types(inst, maps)
                cls = np.concatenate([[0], types]).astype(np.uint8)[inst]
                board.add_prediction(sample.inst, sample.types, inst, cls, sample.tissue)
        summary = board.summary()
        row["val"] = {k: summary[k] for k in ("bPQ", "mPQ", "AJI", "F1_iou")}
        results.append(row)
    return results


def _val_sources(data: Sequence[Path], checkpoint: str) -> list[Any]:
    """The validation split recorded in the checkpoint's config, of each training folder."""
    from wsi_infer.model import model_config
    from wsi_infer.training.data import FolderSource, Subset, group_of

    config = model_config(checkpoint)
    recorded = config.extra.get("val_split", {})
    out = []
    for d in data:
        src = FolderSource(d, target_mpp=config.mpp)
        groups = set(recorded.get("/".join(Path(d).resolve().parts[-2:]), []))
        out.append(Subset(src, [i for i, n in enumerate(src.names) if group_of(n) in groups]))
    return out


@click.command(
    "python -m wsi_infer.benchmarks.context",
    help=__doc__,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@model_option(required=True, help="checkpoint trained with windowed attention")
@click.option("--baseline", help="a checkpoint trained with global attention, for reference")
@paths_option("--slides", required=True)
@click.option(
    "--crop",
    type=int,
    nargs=4,
    multiple=True,
    metavar="Y X H W",
    help="y x h w on the model's grid, one per slide (default: whole slide)",
)
@paths_option("--val-data", default=[], help="training folders")
@click.option("--tile", type=int, default=512, show_default=True)
@threads_option(default=2)
@multi_option("--designs", metavar="NAME...", help="subset of design names to run")
@out_option(required=True, help="the report (JSON; the table beside it as .md)")
def context_command(**options: Any) -> int:
    args = SimpleNamespace(**options)
    from wsi_infer.model import model_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    crops = args.crop or [None] * len(args.slides)
    if len(crops) != len(args.slides):
        raise click.UsageError("give one --crop per slide, or none")
    window = model_config(args.model).attention_window or 64
    designs = [
        Design("window", args.model, window, 64),
        Design("window-overlap", args.model, window, 128),
        Design("global", args.model, 0, 64),
        Design("global-overlap", args.model, 0, 192),
        Design("global-flips", args.model, 0, 64, flips=True),
    ]
    if args.baseline:
        designs += [
            Design("baseline-global", args.baseline, 0, 64),
            Design("baseline-overlap", args.baseline, 0, 192),
        ]
    if args.designs:
        designs = [d for d in designs if d.name in args.designs]
    val = _val_sources(args.val_data, args.model) if args.val_data else []
    results = study(
        designs,
        list(zip(args.slides, [tuple(c) if c else None for c in crops], strict=True)),
        val,
        args.tile,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    head = f"| design | overlap | {' | '.join(f'agreement {s.name}' for s in args.slides)} | val bPQ | val mPQ | CPU s/Mpx |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        agree = " | ".join(f"{100 * r['slides'][s.name]['agreement']:.1f} %" for s in args.slides)
        lines.append(
            f"| {r['name']} | {r['overlap']} | {agree} | {r['val']['bPQ']:.3f} | "
            f"{r['val']['mPQ']:.3f} | {r['cpu_s_per_mpx']:.2f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    logger.info("\n%s", "\n".join(lines))
    return 0


main = entry_point(context_command, "python -m wsi_infer.benchmarks.context")


if __name__ == "__main__":
    raise SystemExit(main())
