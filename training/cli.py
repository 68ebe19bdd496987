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

from training.data import FolderSource, PanNukeFold, Source

__all__ = ["eval_main", "train_main"]

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
    pannuke: Path | None, folds: Sequence[int] | None, dirs: Sequence[Path] | None
) -> list[Source]:
    sources: list[Source] = []
    if pannuke is not None:
        sources.extend(PanNukeFold(pannuke, f) for f in folds or ())
    sources.extend(FolderSource(d) for d in dirs or ())
    return sources


def _describe(
    pannuke: Path | None, folds: Sequence[int] | None, dirs: Sequence[Path] | None
) -> list[str]:
    """Data set names for the checkpoint's metadata: no machine paths, only the last folders."""
    names = [f"pannuke/fold{f}" for f in folds or ()] if pannuke is not None else []
    names += ["/".join(Path(d).resolve().parts[-2:]) for d in dirs or ()]
    return names


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
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="b0", choices=["b0", "b1", "b2"])
    m.add_argument("--stem-channels", type=int, default=16)
    m.add_argument("--mpp", type=float, default=0.25, help="resolution of the training data")
    m.add_argument("--tile-size", type=int, default=256)
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
    t.add_argument("--crop", type=int, default=256, help="training crop (multiple of 32)")
    t.add_argument("--lr", type=float, default=1e-3)
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
    from training.loop import TrainSettings, train
    from training.losses import LossWeights
    from wsi_infer.config import ModelConfig

    args = train_parser().parse_args(argv)
    _setup(args.threads, not args.quiet)
    if args.crop % 32:
        raise SystemExit("--crop must be a multiple of 32")
    if args.train_folds and args.pannuke is None:
        raise SystemExit("--train-folds needs --pannuke")
    train_sources = _sources(args.pannuke, args.train_folds, args.data)
    if not train_sources:
        raise SystemExit("no training data: give --pannuke with --train-folds, or --data")
    val_folds = [args.val_fold] if args.val_fold is not None else []
    val_sources = _sources(args.pannuke, val_folds, args.val_data)
    config = ModelConfig(
        name=args.name,
        version=args.model_version,
        arch=args.arch,
        mpp=args.mpp,
        tile_size=args.tile_size,
        stem_channels=args.stem_channels,
        extra={
            "train_data": _describe(args.pannuke, args.train_folds, args.data),
            "val_data": _describe(args.pannuke, val_folds, args.val_data),
            "seed": args.seed,
            **({"licence": args.licence} if args.licence else {}),
        },
    )
    settings = TrainSettings(
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
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
    result = train(train_sources, val_sources, config, settings)
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
    from training.baseline import baseline_predictor
    from training.evaluate import evaluate, model_predictor
    from training.metrics import jsonable
    from wsi_infer.model import load_model

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
        predictor = model_predictor(loaded.module, loaded.config, device)
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
