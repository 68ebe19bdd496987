"""Console entry points ``wsi-infer-train`` and ``wsi-infer-eval``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import torch

from wsi_infer.config import ARCHITECTURES, DEFAULT_FAMILY
from wsi_infer.registry import model_info
from wsi_infer.training.data import FolderSource, PanNukeFold, Source, group_of, split_by_group

__all__ = ["eval_main", "train_main", "tune_main"]

logger = logging.getLogger(__name__)


def _setup(threads: int | None, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if threads:
        import cv2

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


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsi-infer-train",
        description="Train the nucleus model on PanNuke folds and/or images/+labels.npz folders.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--pannuke", type=Path, help="PanNuke root holding 'Fold N' folders")
    g.add_argument("--train-folds", type=int, nargs="+", default=[], help="PanNuke training folds")
    g.add_argument("--val-fold", type=int, help="PanNuke validation fold")
    g.add_argument("--data", type=Path, nargs="+", default=[], help="training folders")
    g.add_argument("--val-data", type=Path, nargs="+", default=[], help="validation folders")
    g.add_argument(
        "--val-split",
        type=float,
        help="carve this fraction of each --data folder's source images out for validation",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"model family, one of the registry's (default {DEFAULT_FAMILY})",
    )
    m.add_argument("--arch", default="b0", choices=sorted(ARCHITECTURES), help="MiT size")
    m.add_argument(
        "--encoder-weights",
        help="pretrained MiT encoder: a Hugging Face id (nvidia/mit-b0 ... nvidia/mit-b5, "
        "downloaded once) or a directory written by SegformerModel.save_pretrained",
    )
    m.add_argument(
        "--init",
        type=Path,
        help="start from this checkpoint's weights and config (model options are then ignored)",
    )
    m.add_argument(
        "--types-only",
        action="store_true",
        help="with --init: train only the class logits of the output head on typed data; "
        "nuclei (foreground, distance) stay exactly those of --init; best by mPQ",
    )
    m.add_argument("--stem-channels", type=int, default=16)
    m.add_argument("--mpp", type=float, default=0.25, help="model resolution (data is resampled)")
    m.add_argument(
        "--tile-size",
        type=int,
        help="the engine's default tile for this model (default: the largest --crop)",
    )
    m.add_argument(
        "--overlap",
        type=int,
        help="the engine's default tile overlap (default: 64, or a quarter of a smaller tile)",
    )
    m.add_argument(
        "--attention-window",
        type=int,
        default=0,
        help="self-attention within windows of this many pixels (0: global)",
    )
    m.add_argument("--name", default="wsi-infer-nuclei")
    m.add_argument("--model-version", default="1")
    m.add_argument(
        "--licence",
        help="licence of the weights, recorded in config.json (they inherit the data's terms)",
    )
    t = p.add_argument_group("training")
    t.add_argument("--out", type=Path, required=True, help="run directory")
    t.add_argument("--export", type=Path, help="also write each best checkpoint here (float16)")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument(
        "--crop",
        type=int,
        nargs="+",
        default=[256],
        help="training crop size(s), multiples of 32; images large enough are also cut at the "
        "larger sizes, in batches of equal pixel count",
    )
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument(
        "--encoder-lr-scale",
        type=float,
        default=1.0,
        help="encoder learning rate = lr x this (e.g. 0.1 when fine-tuning pretrained weights)",
    )
    t.add_argument(
        "--freeze-encoder",
        type=float,
        default=0.0,
        help="fraction of the run with the encoder frozen while the decoder warms up",
    )
    t.add_argument("--weight-decay", type=float, default=1e-2)
    t.add_argument("--schedule", choices=["cosine", "onecycle"], default="cosine")
    t.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    t.add_argument(
        "--time-limit", type=float, help="stop after the epoch passing this many minutes"
    )
    t.add_argument(
        "--time-budget",
        type=float,
        help="minutes: the cosine schedule follows elapsed time and training ends on time",
    )
    t.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    t.add_argument("--val-limit", type=int, help="validate on the first N patches of each source")
    t.add_argument("--tversky-alpha", type=float, default=0.3)
    t.add_argument("--tversky-beta", type=float, default=0.7)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="torch / OpenCV CPU threads")
    t.add_argument("--workers", type=int, default=0, help="data loader processes")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    """``wsi-infer-train``: returns the exit status."""
    from wsi_infer.config import ModelConfig
    from wsi_infer.errors import CheckpointError
    from wsi_infer.training.loop import TrainSettings, train
    from wsi_infer.training.losses import LossWeights

    args = train_parser().parse_args(argv)
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
        raise SystemExit(f"wsi-infer-train: {exc}") from None
    if args.types_only and args.init is None:
        raise SystemExit("wsi-infer-train: --types-only needs --init CHECKPOINT")
    if args.init is not None:
        import dataclasses

        from wsi_infer.model import model_config

        try:
            initial = model_config(args.init)
        except CheckpointError as exc:
            raise SystemExit(f"wsi-infer-train: {exc}") from None
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
    )
    try:
        result = train(train_sources, val_sources, config, settings)
    except CheckpointError as exc:
        raise SystemExit(f"wsi-infer-train: {exc}") from None
    click.echo(json.dumps(result, indent=2))
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsi-infer-eval",
        description="Score a checkpoint (or the classical baseline) with PanNuke's bPQ/mPQ, "
        "AJI, Dice and detection F1.",
    )
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory or bundled model name")
    p.add_argument("--baseline", action="store_true", help="score the classical baseline instead")
    p.add_argument("--pannuke", type=Path, help="PanNuke root holding 'Fold N' folders")
    p.add_argument("--fold", type=int, nargs="+", default=[], help="PanNuke fold(s) to score")
    p.add_argument("--data", type=Path, nargs="+", default=[], help="images/+labels.npz folders")
    p.add_argument("--out", type=Path, help="write the report (JSON) here")
    p.add_argument("--limit", type=int, help="score the first N patches of each source")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    return p


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``wsi-infer-eval``: returns the exit status."""
    import dataclasses

    from wsi_infer.model import load_model
    from wsi_infer.postprocess import PostprocessParams
    from wsi_infer.training.baseline import baseline_predictor
    from wsi_infer.training.evaluate import evaluate, model_predictor
    from wsi_infer.training.metrics import jsonable

    args = eval_parser().parse_args(argv)
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

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsi-infer-tune",
        description="Choose a checkpoint's post-processing thresholds on its validation split "
        "(the --val-split groups recorded in its config, and/or --val-data) and write them "
        "into its config.json.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (rewritten in place)")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[],
        help="the training folders: their validation groups are taken from the config",
    )
    p.add_argument("--val-data", type=Path, nargs="+", default=[], help="validation folders")
    p.add_argument("--export", type=Path, help="also write the result here (float16)")
    p.add_argument(
        "--tile-size",
        type=int,
        help="the engine's default tile size for this model (a multiple of its attention "
        "window; choose it with python -m wsi_infer.benchmarks.tile_invariance)",
    )
    p.add_argument("--overlap", type=int, help="the engine's default tile overlap, likewise")
    p.add_argument(
        "--no-search",
        action="store_true",
        help="keep the post-processing values: only write --tile-size/--overlap (and --export)",
    )
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    return p


def tune_main(argv: Sequence[str] | None = None) -> int:
    """``wsi-infer-tune``: returns the exit status."""
    import dataclasses

    from wsi_infer.errors import CheckpointError
    from wsi_infer.model import load_model, save_checkpoint
    from wsi_infer.training.data import Subset
    from wsi_infer.training.loop import tune_checkpoint
    from wsi_infer.training.tune import nucleus_area_percentiles

    args = tune_parser().parse_args(argv)
    _setup(args.threads, not args.quiet)
    try:
        loaded = load_model(args.checkpoint)
    except CheckpointError as exc:
        raise SystemExit(f"wsi-infer-tune: {exc}") from None
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
            raise SystemExit(f"wsi-infer-tune: {args.checkpoint}: {exc}") from None
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
        raise SystemExit("wsi-infer-tune: no validation data: give --data and/or --val-data")
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
