"""Console entry points ``wsi-infer-train``, ``wsi-infer-eval`` and ``wsi-infer-tune``.

Thin click commands: torch and the training modules are imported when a command runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click

from wsi_infer.cli.options import (
    MINUTES,
    PATH,
    entry_point,
    multi_option,
    out_option,
    overlap_option,
    pannuke_option,
    path_option,
    paths_option,
    threads_option,
    tile_size_option,
)
from wsi_infer.config import ARCHITECTURES, DEFAULT_FAMILY
from wsi_infer.errors import one_line_error

if TYPE_CHECKING:
    from wsi_infer.training.data import Source

__all__ = ["eval_command", "eval_main", "train_command", "train_main", "tune_command", "tune_main"]

logger = logging.getLogger(__name__)


def _setup(threads: int | None, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if threads:
        import cv2
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only settable once per process, before parallel work
            logger.debug("inter-op threads already set")
        cv2.setNumThreads(threads)


def _sources(
    pannuke: Path | None,
    folds: Sequence[int] | None,
    dirs: Sequence[Path] | None,
    target_mpp: float | None = None,
) -> list[Source]:
    from wsi_infer.training.data import FolderSource, PanNukeFold

    sources: list[Source] = []
    if pannuke is not None:
        sources.extend(PanNukeFold(pannuke, f) for f in folds or ())
    sources.extend(FolderSource(d, target_mpp=target_mpp) for d in dirs or ())
    return sources


def _describe(
    pannuke: Path | None, folds: Sequence[int] | None, dirs: Sequence[Path] | None
) -> list[str]:
    """Data set names for the checkpoint's metadata: no machine paths, only the last folders."""
    names = [f"pannuke/fold{f}" for f in folds or ()] if pannuke is not None else []
    names += ["/".join(Path(d).resolve().parts[-2:]) for d in dirs or ()]
    return names


def _weights_name(source: str) -> str:
    """A Hugging Face id as it is; a local directory by its name only (no machine paths)."""
    path = Path(source)
    return path.name if path.is_dir() else source


_CONTEXT = {"help_option_names": ["-h", "--help"]}
#: ``--time-budget`` and ``--time-limit`` are minutes (a plain number), or carry a unit.
_TIME_UNITS = "MINUTES (a number; or with a unit: 216m, 3.6h, 90s)"


@click.command(
    "wsi-infer-train",
    context_settings=_CONTEXT,
)
# data
@pannuke_option
@multi_option("--train-folds", type=int, default=[], help="PanNuke training folds")
@click.option("--val-fold", type=int, help="PanNuke validation fold")
@paths_option("--data", default=[], help="training folders")
@paths_option("--val-data", default=[], help="validation folders")
@click.option(
    "--val-split",
    type=float,
    help="carve this fraction of each --data folder's source images out for validation",
)
# model
@click.option(
    "--family",
    default=DEFAULT_FAMILY,
    show_default=True,
    help="model family, one of the model registry's (wsi_infer.registry.list_models)",
)
@click.option(
    "--arch",
    default="b0",
    show_default=True,
    type=click.Choice(sorted(ARCHITECTURES)),
    help="MiT size",
)
@click.option(
    "--encoder-weights",
    help="pretrained MiT encoder: a Hugging Face id (nvidia/mit-b0 ... nvidia/mit-b5, "
    "downloaded once) or a directory written by SegformerModel.save_pretrained",
)
@path_option(
    "--init",
    help="start from this checkpoint's weights and config (model options are then ignored)",
)
@click.option(
    "--types-only",
    is_flag=True,
    help="with --init: train only the class logits of the output head on typed data; "
    "nuclei (foreground, distance) stay exactly those of --init; best by mPQ",
)
@click.option("--stem-channels", type=int, default=16, show_default=True)
@click.option(
    "--mpp",
    type=float,
    default=0.25,
    show_default=True,
    help="model resolution (data is resampled)",
)
@tile_size_option(help="the engine's default tile for this model (default: the largest --crop)")
@overlap_option(
    help="the engine's default tile overlap (default: 64, or a quarter of a smaller tile)"
)
@click.option(
    "--attention-window",
    type=int,
    default=0,
    show_default=True,
    help="self-attention within windows of this many pixels (0: global)",
)
@click.option("--name", default="wsi-infer-nuclei", show_default=True)
@click.option("--model-version", default="1", show_default=True)
@click.option(
    "--licence",
    help="licence of the weights, recorded in config.json (they inherit the data's terms)",
)
# training
@out_option(required=True, help="run directory")
@path_option("--export", help="also write each best checkpoint here (float16)")
@click.option("--epochs", type=int, default=50, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@multi_option(
    "--crop",
    type=int,
    default=[256],
    show_default=True,
    metavar="PX...",
    help="training crop size(s), multiples of 32; images large enough are also cut at the "
    "larger sizes, in batches of equal pixel count",
)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option(
    "--encoder-lr-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="encoder learning rate = lr x this (e.g. 0.1 when fine-tuning pretrained weights)",
)
@click.option(
    "--freeze-encoder",
    type=float,
    default=0.0,
    show_default=True,
    help="fraction of the run with the encoder frozen while the decoder warms up",
)
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option(
    "--schedule", type=click.Choice(["cosine", "onecycle"]), default="cosine", show_default=True
)
@click.option("--max-steps", type=int, help="stop after this many optimiser steps")
@click.option(
    "--time-limit",
    type=MINUTES,
    metavar="MINUTES",
    help=f"stop after the epoch passing this time, in {_TIME_UNITS}",
)
@click.option(
    "--time-budget",
    type=MINUTES,
    metavar="MINUTES",
    help=f"the run's length in {_TIME_UNITS}, not hours or seconds: the cosine "
    "schedule follows elapsed time and training ends on time",
)
@click.option("--val-every", type=int, default=1, show_default=True, help="validate every N epochs")
@click.option("--val-limit", type=int, help="validate on the first N patches of each source")
@click.option("--tversky-alpha", type=float, default=0.3, show_default=True)
@click.option("--tversky-beta", type=float, default=0.7, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option(help="torch / OpenCV CPU threads")
@click.option("--workers", type=int, default=0, show_default=True, help="data loader processes")
@click.option("--resume", is_flag=True, help="continue the run in --out")
@click.option(
    "--tune/--no-tune",
    default=True,
    show_default=True,
    help="tune the best checkpoint's post-processing on the validation data at the end "
    "(--no-tune: later, with wsi-infer-tune)",
)
@click.option("--quiet", is_flag=True, help="no progress bars, warnings only")
def train_command(**options: Any) -> int:
    """Train the nucleus model on PanNuke folds and/or images/+labels.npz folders."""
    from wsi_infer.config import ModelConfig
    from wsi_infer.errors import CheckpointError
    from wsi_infer.registry import model_info
    from wsi_infer.training.data import FolderSource, group_of, split_by_group
    from wsi_infer.training.loop import TrainSettings, train
    from wsi_infer.training.losses import LossWeights

    args = SimpleNamespace(**options)
    _setup(args.threads, not args.quiet)
    crops = sorted(set(args.crop))
    if any(c % 32 or c < 32 for c in crops):
        raise SystemExit("--crop sizes must be positive multiples of 32")
    if args.train_folds and args.pannuke is None:
        raise SystemExit("--train-folds needs --pannuke")
    train_sources = _sources(args.pannuke, args.train_folds, args.data, args.mpp)
    if not train_sources:
        raise SystemExit("no training data: give --pannuke with --train-folds, or --data")
    val_folds = [args.val_fold] if args.val_fold is not None else []
    val_sources = _sources(args.pannuke, val_folds, args.val_data, args.mpp)
    split_note: dict[str, Any] = {}
    if args.val_split is not None:
        carved_train: list[Source] = []
        for src in train_sources:
            if isinstance(src, FolderSource):
                tr, va = split_by_group(src, args.val_split, args.seed)
                carved_train.append(tr)
                val_sources.append(va)
                split_note["/".join(src.root.resolve().parts[-2:])] = sorted(
                    {group_of(src.names[i]) for i in va.indices}
                )
            else:
                carved_train.append(src)
        train_sources = carved_train
    try:
        config = ModelConfig(
            name=args.name,
            version=args.model_version,
            family=args.family,
            arch=args.arch,
            mpp=args.mpp,
            tile_size=(tile := args.tile_size or crops[-1]),
            overlap=args.overlap if args.overlap is not None else min(64, tile // 8 * 2),
            attention_window=args.attention_window,
            stem_channels=args.stem_channels,
            extra={
                "train_data": _describe(args.pannuke, args.train_folds, args.data),
                "val_data": _describe(args.pannuke, val_folds, args.val_data),
                **({"val_split": split_note} if split_note else {}),
                **(
                    {"encoder_weights": _weights_name(args.encoder_weights)}
                    if args.encoder_weights
                    else {}
                ),
                "seed": args.seed,
                **({"licence": args.licence} if args.licence else {}),
            },
        )
        model_info(config.family)  # an unknown family fails here, in one line
    except CheckpointError as exc:
        raise SystemExit(one_line_error("wsi-infer-train", exc)) from None
    if args.types_only and args.init is None:
        raise SystemExit(one_line_error("wsi-infer-train", "--types-only needs --init CHECKPOINT"))
    if args.init is not None:
        import dataclasses

        from wsi_infer.model import model_config

        try:
            initial = model_config(args.init)
        except CheckpointError as exc:
            raise SystemExit(one_line_error("wsi-infer-train", exc)) from None
        config = dataclasses.replace(
            initial,
            version=args.model_version,
            extra={
                **initial.extra,
                "init": args.init.resolve().name if args.init.is_dir() else str(args.init),
                **({"types_only_data": config.extra["train_data"]} if args.types_only else {}),
                "seed": args.seed,
                **({"licence": args.licence} if args.licence else {}),
            },
        )
    settings = TrainSettings(
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        crop=crops[0],
        extra_crops=tuple(crops[1:]),
        lr=args.lr,
        encoder_weights=args.encoder_weights,
        encoder_lr_scale=args.encoder_lr_scale,
        freeze_encoder=args.freeze_encoder,
        init=args.init,
        types_only=args.types_only,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        max_steps=args.max_steps,
        seed=args.seed,
        resume=args.resume,
        val_every=args.val_every,
        val_limit=args.val_limit,
        export_dir=args.export,
        time_limit=args.time_limit * 60 if args.time_limit else None,
        time_budget=args.time_budget * 60 if args.time_budget else None,
        workers=args.workers,
        loss=LossWeights(tversky_alpha=args.tversky_alpha, tversky_beta=args.tversky_beta),
        progress=not args.quiet and sys.stderr.isatty(),
        tune=args.tune,
    )
    try:
        result = train(train_sources, val_sources, config, settings)
    except CheckpointError as exc:
        raise SystemExit(one_line_error("wsi-infer-train", exc)) from None
    click.echo(json.dumps(result, indent=2))
    return 0


@click.command(
    "wsi-infer-eval",
    context_settings=_CONTEXT,
)
@click.argument("checkpoint", required=False)
@click.option("--baseline", is_flag=True, help="score the classical baseline instead")
@pannuke_option
@multi_option("--fold", type=int, default=[], help="PanNuke fold(s) to score")
@paths_option("--data", default=[], help="images/+labels.npz folders")
@out_option(help="write the report (JSON) here")
@click.option("--limit", type=int, help="score the first N patches of each source")
@click.option("--batch-size", type=int, default=8, show_default=True)
@threads_option(help="torch / OpenCV CPU threads")
@click.option("--quiet", is_flag=True, help="no progress bars, warnings only")
def eval_command(**options: Any) -> int:
    """Score a checkpoint (or the classical baseline) with PanNuke's bPQ/mPQ, AJI, Dice and
    detection F1.

    CHECKPOINT: checkpoint directory or bundled model name.
    """
    import dataclasses

    import torch

    from wsi_infer.model import load_model
    from wsi_infer.postprocess import PostprocessParams
    from wsi_infer.training.baseline import baseline_predictor
    from wsi_infer.training.evaluate import evaluate, model_predictor
    from wsi_infer.training.metrics import jsonable

    args = SimpleNamespace(**options)
    _setup(args.threads, not args.quiet)
    if (args.checkpoint is None) == (not args.baseline):
        raise SystemExit("give a CHECKPOINT or --baseline (not both)")
    if args.fold and args.pannuke is None:
        raise SystemExit("--fold needs --pannuke")
    sources = _sources(args.pannuke, args.fold, args.data)
    if not sources:
        raise SystemExit("nothing to score: give --pannuke with --fold, or --data")
    report: dict[str, Any] = {
        "data": _describe(args.pannuke, args.fold, args.data),
        "hardware": _hardware(),
    }
    if args.baseline:
        predictor: Any = baseline_predictor()
        report["model"] = "baseline (rgb2hed + Otsu + watershed)"
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_model(args.checkpoint)
        loaded.module.to(device)
        post = PostprocessParams.for_model(loaded.config)  # the model's own, as the engine uses
        predictor = model_predictor(loaded.module, loaded.config, device, post)
        report["postprocess"] = dataclasses.asdict(post)
        report["model"] = {
            "source": loaded.source,
            "sha256": loaded.sha256,
            **loaded.config.to_dict(),
        }
    t0 = time.monotonic()
    summary = evaluate(predictor, sources, args.batch_size, args.limit, progress=not args.quiet)
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["scores"] = summary
    text = json.dumps(jsonable(report), indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    click.echo(text)
    return 0


def _hardware() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


@click.command(
    "wsi-infer-tune",
    context_settings=_CONTEXT,
)
@click.argument("checkpoint", type=PATH)
@paths_option(
    "--data",
    default=[],
    help="the training folders: their validation groups are taken from the config",
)
@paths_option("--val-data", default=[], help="validation folders")
@path_option("--export", help="also write the result here (float16)")
@tile_size_option(
    help="the engine's default tile size for this model (a multiple of its attention "
    "window; choose it with python -m wsi_infer.benchmarks.tile_invariance)",
)
@overlap_option(help="the engine's default tile overlap, likewise")
@click.option(
    "--no-search",
    is_flag=True,
    help="keep the post-processing values: only write --tile-size/--overlap (and --export)",
)
@threads_option(help="torch / OpenCV CPU threads")
@click.option("--quiet", is_flag=True, help="no progress bars, warnings only")
def tune_command(**options: Any) -> int:
    """Choose a checkpoint's post-processing thresholds on its validation split (the
    --val-split groups recorded in its config, and/or --val-data) and write them into its
    config.json.

    CHECKPOINT: checkpoint directory (rewritten in place).
    """
    import dataclasses

    import torch

    from wsi_infer.errors import CheckpointError
    from wsi_infer.model import load_model, save_checkpoint
    from wsi_infer.training.data import FolderSource, Subset, group_of
    from wsi_infer.training.loop import tune_checkpoint
    from wsi_infer.training.tune import nucleus_area_percentiles

    args = SimpleNamespace(**options)
    _setup(args.threads, not args.quiet)
    try:
        loaded = load_model(args.checkpoint)
    except CheckpointError as exc:
        raise SystemExit(one_line_error("wsi-infer-tune", exc)) from None
    config = loaded.config
    tiles = {
        k: v for k, v in (("tile_size", args.tile_size), ("overlap", args.overlap)) if v is not None
    }
    if tiles:
        from wsi_infer.errors import ParameterError
        from wsi_infer.params import RunParams

        try:
            config = dataclasses.replace(config, **tiles)
            RunParams.for_model(config)
        except (ValueError, ParameterError) as exc:
            raise SystemExit(
                one_line_error("wsi-infer-tune", f"{args.checkpoint}: {exc}")
            ) from None
        loaded.module.config = config
        save_checkpoint(loaded.module, args.checkpoint)
    if args.no_search:
        if args.export is not None:
            save_checkpoint(loaded.module, args.export, half=True)
        return 0
    recorded: dict[str, list[str]] = config.extra.get("val_split", {})
    val_sources: list[Source] = []
    train_sources: list[Source] = []
    for d in args.data:
        src = FolderSource(d, target_mpp=config.mpp)
        key = "/".join(Path(d).resolve().parts[-2:])
        groups = set(recorded.get(key, []))
        if not groups:
            raise SystemExit(
                f"wsi-infer-tune: {d}: the checkpoint records no validation split for it"
            )
        val = [i for i, n in enumerate(src.names) if group_of(n) in groups]
        rest = [i for i, n in enumerate(src.names) if group_of(n) not in groups]
        val_sources.append(Subset(src, val, str(d)))
        train_sources.append(Subset(src, rest, str(d)))
    val_sources.extend(FolderSource(d, target_mpp=config.mpp) for d in args.val_data)
    if not val_sources:
        raise SystemExit(
            one_line_error("wsi-infer-tune", "no validation data: give --data and/or --val-data")
        )
    if config.train_area_um2 is None and train_sources:
        module = loaded.module
        module.config = dataclasses.replace(
            config, train_area_um2=nucleus_area_percentiles(train_sources, config.mpp)
        )
        save_checkpoint(module, args.checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = tune_checkpoint(args.checkpoint, val_sources, device, args.export)
    click.echo(
        json.dumps(
            {"before": report["before"], "after": report["after"], "images": report["images"]},
            indent=2,
            default=str,
        )
    )
    return 0


train_main = entry_point(train_command, "wsi-infer-train")
eval_main = entry_point(eval_command, "wsi-infer-eval")
tune_main = entry_point(tune_command, "wsi-infer-tune")
