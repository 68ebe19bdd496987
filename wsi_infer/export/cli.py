"""``wsi-infer-export``: export a checkpoint to ONNX (and optionally a TensorRT engine).

Prints the parity report: ONNX Runtime CPU logits vs PyTorch on real tiles
(``--slide``) or a deterministic random batch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
from numpy.typing import NDArray

from wsi_infer.cli.options import entry_point, multi_option, path_option
from wsi_infer.errors import WsiInferError, one_line_error
from wsi_infer.export.onnx_export import DEFAULT_OPSET, ExportReport, export_onnx

__all__ = ["export_command", "main", "read_slide_tiles"]

logger = logging.getLogger(__name__)


def read_slide_tiles(slide: str | Path, tile_size: int, n: int = 4) -> NDArray[np.uint8]:
    """``n`` level-0 RGB tiles ``(n, tile_size, tile_size, 3)`` from the middle of ``slide``."""
    try:
        import openslide
    except ImportError as exc:
        raise WsiInferError(f"--slide needs openslide-python ({exc})") from exc
    with openslide.OpenSlide(str(slide)) as osr:
        width, height = osr.dimensions
        cols = max(1, min(n, width // tile_size))
        rows = max(1, -(-n // cols))
        x0 = max(0, width // 2 - cols * tile_size // 2)
        y0 = max(0, height // 2 - rows * tile_size // 2)
        tiles = []
        for k in range(n):
            x = x0 + (k % cols) * tile_size
            y = y0 + (k // cols) * tile_size
            region = osr.read_region((x, y), 0, (tile_size, tile_size)).convert("RGB")
            tiles.append(np.asarray(region, dtype=np.uint8))
    return np.stack(tiles)


def _report_lines(report: ExportReport) -> str:
    return report.summary()


@click.command(
    "wsi-infer-export",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("model")
@path_option("--onnx", required=True, help="ONNX file to write")
@click.option("--fp16", is_flag=True, help="float16 weights/activations (I/O stay float32)")
@click.option(
    "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
)
@click.option("--batch", type=int, default=None, help="fix the batch size (default: dynamic)")
@click.option("--fixed-size", is_flag=True, help="fix height/width at the config's tile size")
@path_option("--slide", help="read parity-check tiles from this slide (openslide)")
@click.option("--tiles", type=int, default=4, help="tiles for the parity check (default 4)")
@click.option("--no-check", is_flag=True, help="skip the checker and parity check")
@path_option("--tensorrt", help="also build a TensorRT engine here (needs a GPU)")
@multi_option(
    "--tile-sizes",
    type=int,
    metavar="PX...",
    help="TensorRT profile: the square tile edges the engine must take (the runs' "
    "--tile-size; default: the model's); optimised for the first, covering min..max",
)
@click.option("--min-batch", type=int, default=1, help="TensorRT profile min batch (default 1)")
@click.option("--max-batch", type=int, default=32, help="TensorRT profile max batch (default 32)")
@click.option("--opt-batch", type=int, default=8, help="TensorRT profile optimal batch (default 8)")
@path_option("--timing-cache", help="TensorRT timing cache file")
@click.option("-v", "--verbose", is_flag=True, help="log progress")
def export_command(**options: Any) -> int:
    """Export a wsi-infer model to ONNX (and a TensorRT engine), proving parity.

    MODEL: checkpoint directory or bundled model name (e.g. default).
    """
    args = SimpleNamespace(**options)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        from wsi_infer.model import load_model

        loaded = load_model(args.model)
        profile: dict[str, Any] = {}
        if args.tensorrt is not None:
            from wsi_infer.export.tensorrt_build import profile_for

            sizes = args.tile_sizes or [loaded.config.tile_size]
            bad = [t for t in sizes if t % loaded.config.input_multiple]
            if bad:  # named after the flag; profile_for checks the same for API callers
                raise ValueError(
                    f"--tile-sizes {bad} are not multiples of the model's input multiple "
                    f"{loaded.config.input_multiple}"
                )
            lo, opt, hi, t0, t1, t2 = profile_for(
                loaded.config.tile_size,
                multiple=loaded.config.input_multiple,
                min_batch=args.min_batch,
                opt_batch=min(max(args.opt_batch, args.min_batch), args.max_batch),
                max_batch=args.max_batch,
                tile_size=sizes[0],
                min_tile=min(sizes),
                max_tile=max(sizes),
            )
            profile = {
                "min_batch": lo,
                "opt_batch": opt,
                "max_batch": hi,
                "tile_size": t1,
                "min_tile": t0,
                "max_tile": t2,
            }
        tiles: Any = None
        if args.slide is not None:
            tiles = read_slide_tiles(args.slide, loaded.config.tile_size, args.tiles)
        report = export_onnx(
            loaded,
            args.onnx,
            fp16=args.fp16,
            opset=args.opset,
            batch=args.batch,
            dynamic_hw=not args.fixed_size,
            tiles=tiles,
            check=not args.no_check,
        )
        sys.stdout.write(_report_lines(report) + "\n")
        if args.tensorrt is not None:
            from wsi_infer.export.tensorrt_build import build_tensorrt_engine

            engine = build_tensorrt_engine(
                args.onnx, args.tensorrt, fp16=True, timing_cache=args.timing_cache, **profile
            )
            sys.stdout.write(f"engine       {engine}\n")
    except (WsiInferError, ValueError, OSError) as exc:
        sys.stderr.write(one_line_error("wsi-infer-export", exc) + "\n")
        return 2
    return 0


main = entry_point(export_command, "wsi-infer-export")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
