"""The optimisation loop: AdamW, warm-up + cosine (or one-cycle) schedule, checkpoints, resume.

Output directory layout::

    OUT/last/{model.safetensors,config.json}   the latest weights (float32)
    OUT/best/{model.safetensors,config.json}   the weights of the best validation PQ
    OUT/state.pt                               optimiser, schedule, counters (for --resume)
    OUT/metrics.jsonl                          one JSON object per epoch
    OUT/curves.png                             training / validation curves

``export_dir`` (if given) receives every new best checkpoint too, in float16.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsi_infer.config import ModelConfig
from wsi_infer.model import load_encoder_weights, save_checkpoint, submodule
from wsi_infer.postprocess import PostprocessParams
from wsi_infer.registry import create_model
from wsi_infer.training.augment import Augmenter
from wsi_infer.training.data import IGNORE_INDEX, CropBatchSampler, PatchDataset, Source
from wsi_infer.training.evaluate import evaluate, model_predictor
from wsi_infer.training.losses import LossWeights, NucleusLoss
from wsi_infer.training.metrics import jsonable
from wsi_infer.training.tune import nucleus_area_percentiles, tune_postprocess

__all__ = ["TrainSettings", "class_weights_from", "plot_curves", "seed_everything", "train"]

logger = logging.getLogger(__name__)

#: Validation metric that picks the best checkpoint.
BEST_METRIC = "bPQ"


@dataclass
class TrainSettings:
    """Everything :func:`train` needs besides data and model config."""

    out: Path
    epochs: int = 50
    batch_size: int = 8
    crop: int = 256
    #: further crop sizes (larger images are also cut at these; batches keep the pixel count)
    extra_crops: tuple[int, ...] = ()
    lr: float = 1e-3
    #: pretrained MiT weights for the encoder: a Hugging Face id or a save_pretrained directory
    encoder_weights: str | None = None
    #: the encoder's learning rate is ``lr * encoder_lr_scale`` (layer-wise rates for fine-tuning)
    encoder_lr_scale: float = 1.0
    #: fraction of the run during which the encoder is frozen (the new decoder warms up first)
    freeze_encoder: float = 0.0
    #: start from this checkpoint's weights (and config)
    init: Path | None = None
    #: train the type logits of the output head only: foreground and distance outputs, and
    #: everything that feeds them, stay exactly as in ``init``; checkpoints picked by mPQ
    types_only: bool = False
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # or "onecycle"
    warmup: float = 0.03  # fraction of the steps (cosine)
    max_steps: int | None = None
    seed: int = 0
    resume: bool = False
    val_every: int = 1
    val_limit: int | None = None
    export_dir: Path | None = None
    time_limit: float | None = None  # seconds; stop after the epoch that passes it
    # seconds; the cosine schedule runs on max(step / total steps, elapsed / budget) and
    # training ends (with a last validation) when the budget is spent: a run that ends on time
    time_budget: float | None = None
    workers: int = 0
    grad_clip: float = 1.0
    loss: LossWeights = field(default_factory=LossWeights)
    progress: bool = True
    #: choose the post-processing thresholds on the validation data after training
    tune: bool = True


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights_from(
    sources: Sequence[Source], n_types: int, max_per_source: int = 64, seed: int = 0
) -> list[float]:
    """Inverse square-root pixel frequency of each type (background included), mean 1.

    Counted on up to ``max_per_source`` random samples of each source; types
    never seen get the largest weight seen.
    """
    counts = np.zeros(n_types, np.float64)
    rng = np.random.default_rng(seed)
    for src in sources:
        idx = rng.permutation(len(src))[:max_per_source]
        for i in idx:
            t = src[int(i)].types
            t = t[t != IGNORE_INDEX]
            counts += np.bincount(t.ravel(), minlength=n_types)[:n_types]
    seen = counts > 0
    if not seen.any():
        return [1.0] * n_types
    freq = counts / counts.sum()
    w = np.zeros(n_types)
    w[seen] = 1.0 / np.sqrt(freq[seen])
    w[~seen] = w[seen].max()
    w = np.clip(w / w.mean(), 0.05, 20.0)
    return [float(v) for v in w]


def cosine_factor(progress: float, warmup: float) -> float:
    """Learning-rate factor at ``progress`` (0..1) of a run: linear warm-up over the first
    ``warmup`` fraction, then a cosine decay from 1 to 0.01."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.01)
    p = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * p))


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation metrics per epoch, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in records], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax1.legend()
    for key in ("bPQ", "mPQ", "AJI", "Dice", "F1_iou"):
        pts = [(r["epoch"], r["val"][key]) for r in records if r.get("val") and key in r["val"]]
        pts = [(e, v) for e, v in pts if v is not None and not math.isnan(v)]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend()
    ax2.set_title("validation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _output_conv(module: torch.nn.Module) -> torch.nn.Conv2d:
    """The network's last layer, the 1x1 convolution giving the logits (``.head``)."""
    conv = submodule(module, "head")
    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError(f"{type(module).__name__}.head is not the 1x1 output convolution")
    return conv


def train(
    train_sources: Sequence[Source],
    val_sources: Sequence[Source],
    model_config: ModelConfig,
    settings: TrainSettings,
) -> dict[str, Any]:
    """Train a network of ``model_config``'s family (:func:`~wsi_infer.registry.create_model`);
    returns the best validation summary (and paths)."""
    s = settings
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(s.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_amp = device.type == "cuda"

    if model_config.train_area_um2 is None:
        model_config = dataclasses.replace(
            model_config,
            train_area_um2=nucleus_area_percentiles(train_sources, model_config.mpp),
        )
    module = create_model(model_config)
    if s.encoder_weights and not (s.resume and (out / "state.pt").is_file()):
        load_encoder_weights(module, s.encoder_weights)
    if s.init is not None:
        from wsi_infer.model import load_model

        initial = load_model(s.init)
        module.load_state_dict(initial.module.state_dict())
    module.to(device)
    best_metric = "mPQ" if s.types_only else BEST_METRIC
    kept_rows: tuple[torch.Tensor, torch.Tensor] | None = None
    if s.types_only:
        if s.init is None:
            raise ValueError("types_only needs an init checkpoint")
        for name, p in module.named_parameters():
            p.requires_grad_(name.startswith("head."))
        # rows 0-1 of the 1x1 head are the foreground and distance outputs: kept as they are
        out_conv = _output_conv(module)
        head_bias = out_conv.bias
        assert head_bias is not None
        kept_rows = (out_conv.weight[:2].detach().clone(), head_bias[:2].detach().clone())
        for key in ("bce", "tversky", "distance", "distance_gradient", "distance_bce"):
            setattr(s.loss, key, 0.0)
    if s.loss.class_weights is None:
        s.loss.class_weights = class_weights_from(train_sources, model_config.num_classes + 1)
        logger.info("type class weights: %s", [round(w, 3) for w in s.loss.class_weights])
    criterion = NucleusLoss(s.loss).to(device)
    dataset = PatchDataset(
        train_sources,
        lambda crop: Augmenter(crop=crop, train=True),
        model_config.mean,
        model_config.std,
        s.seed,
        crops=(s.crop, *s.extra_crops),
    )
    sampler = CropBatchSampler(dataset, s.batch_size, s.seed)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} training items do not fill one batch of {s.batch_size}")
    total_steps = steps_per_epoch * s.epochs
    if s.max_steps is not None:
        total_steps = min(total_steps, s.max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)

    encoder_params = list(submodule(module, "encoder").parameters())
    enc_ids = {id(p) for p in encoder_params}
    head_params = [p for p in module.parameters() if id(p) not in enc_ids]
    optimizer = torch.optim.AdamW(
        [
            {
                "params": encoder_params,
                "lr": s.lr * s.encoder_lr_scale,
                "scale": s.encoder_lr_scale,
            },
            {"params": head_params, "lr": s.lr, "scale": 1.0},
        ],
        lr=s.lr,
        weight_decay=s.weight_decay,
    )
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if s.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            [s.lr * g["scale"] for g in optimizer.param_groups],
            total_steps=total_steps,
        )
    elif s.schedule != "cosine":
        raise ValueError(f"unknown schedule {s.schedule!r}")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    state_file = out / "state.pt"
    metrics_file = out / "metrics.jsonl"
    start_epoch, step, best, best_summary = 0, 0, -1.0, {}
    records: list[dict[str, Any]] = []
    elapsed_before = 0.0
    if s.resume and state_file.is_file():
        from safetensors.torch import load_file

        state = torch.load(state_file, map_location=device, weights_only=False)
        module.load_state_dict(
            {k: v.float() for k, v in load_file(str(out / "last" / "model.safetensors")).items()}
        )
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, best_summary = state["best"], state["best_summary"]
        elapsed_before = state.get("elapsed", 0.0)
        torch.set_rng_state(state["torch_rng"])
        if metrics_file.is_file():
            records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
            records = [r for r in records if r["epoch"] < start_epoch]
            metrics_file.write_text("".join(json.dumps(r) + "\n" for r in records))
        logger.info(
            "resumed from %s at epoch %d, step %d (best %s %.4f)",
            out,
            start_epoch,
            step,
            BEST_METRIC,
            best,
        )
    elif metrics_file.exists():
        metrics_file.unlink()

    logger.info(
        "training %d epochs x %d steps (total %d) of batch %d, crop %d on %s; %d items per epoch",
        epochs,
        steps_per_epoch,
        total_steps,
        s.batch_size,
        s.crop,
        device,
        len(dataset),
    )
    (out / "settings.json").write_text(
        json.dumps(
            jsonable(
                {
                    **asdict(s),
                    "out": str(s.out),
                    "export_dir": str(s.export_dir),
                    "model": model_config.to_dict(),
                }
            ),
            indent=2,
            default=str,
        )
        + "\n"
    )
    t0 = time.monotonic()
    # validation during training: the config's post-processing (tuned after training)
    predictor = model_predictor(
        module, model_config, device, PostprocessParams.for_model(model_config)
    )
    budget_spent = False

    def progress() -> float:
        p = step / total_steps
        if s.time_budget:
            p = max(p, (elapsed_before + time.monotonic() - t0) / s.time_budget)
        return min(1.0, p)

    if s.time_budget:
        epochs = max(epochs, start_epoch + 1)
    for epoch in range(start_epoch, epochs):
        if step >= total_steps or budget_spent:
            break
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=s.workers,
            persistent_workers=False,
        )
        epoch_t0 = time.monotonic()
        module.train()
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not s.progress, leave=False)
        for batch in bar:
            if step >= total_steps:
                break
            prog = progress()
            if not s.types_only:
                frozen = prog < s.freeze_encoder
                for p in encoder_params:
                    p.requires_grad_(not frozen)
            else:
                module.eval()  # no batch-norm statistics move: the features stay those of init
            if scheduler is None:
                if s.time_budget and prog >= 1.0:
                    budget_spent = True
                    break
                for group in optimizer.param_groups:
                    group["lr"] = s.lr * group["scale"] * cosine_factor(prog, s.warmup)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, enabled=use_amp):
                logits = module(batch["image"])
            loss, parts = criterion(logits, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if s.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(module.parameters(), s.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if kept_rows is not None:
                with torch.no_grad():
                    _output_conv(module).weight[:2] = kept_rows[0]
                    _output_conv(module).bias[:2] = kept_rows[1]  # type: ignore[index]
            if scheduler is not None:
                scheduler.step()
            step += 1
            n += 1
            parts["loss"] = float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['loss'] / n:.3f}")
        bar.close()
        elapsed = elapsed_before + time.monotonic() - t0
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": sums.get("loss", 0.0) / max(n, 1),
            "train_parts": {k: v / max(n, 1) for k, v in sums.items() if k != "loss"},
            "elapsed_s": round(elapsed, 1),
        }
        if s.time_budget:
            # Stop now if another epoch like this one would overrun the budget.
            epoch_s = time.monotonic() - epoch_t0
            budget_spent = budget_spent or elapsed + epoch_s > s.time_budget
        last_epoch = epoch == epochs - 1 or step >= total_steps or budget_spent
        out_of_time = s.time_limit is not None and elapsed >= s.time_limit
        if val_sources and ((epoch + 1) % s.val_every == 0 or last_epoch or out_of_time):
            summary = evaluate(predictor, list(val_sources), limit=s.val_limit, progress=s.progress)
            record["val"] = summary
            score = summary[best_metric]
            if not math.isnan(score) and score > best:
                best, best_summary = score, {**summary, "epoch": epoch, "step": step}
                meta = {"epoch": str(epoch), "step": str(step), best_metric: f"{score:.4f}"}
                save_checkpoint(module, out / "best", metadata=meta)
                if s.export_dir is not None:
                    save_checkpoint(module, s.export_dir, half=True, metadata=meta)
                logger.info("epoch %d: new best %s %.4f", epoch, best_metric, score)
            logger.info(
                "epoch %d: loss %.4f, val bPQ %.4f mPQ %.4f AJI %.4f Dice %.4f",
                epoch,
                record["train_loss"],
                summary["bPQ"],
                summary["mPQ"],
                summary["AJI"],
                summary["Dice"],
            )
        else:
            logger.info("epoch %d: loss %.4f", epoch, record["train_loss"])
        save_checkpoint(module, out / "last")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": step,
                "best": best,
                "best_summary": best_summary,
                "elapsed": elapsed,
                "torch_rng": torch.get_rng_state(),
            },
            state_file,
        )
        records.append(jsonable(record))
        with metrics_file.open("a") as fh:
            fh.write(json.dumps(records[-1]) + "\n")
        if "val" in record or last_epoch or out_of_time:
            plot_curves(records, out / "curves.png")
        if out_of_time:
            logger.warning(
                "time limit of %.0f s reached after epoch %d: stopping", s.time_limit, epoch
            )
            break
    if not val_sources:
        save_checkpoint(module, out / "best")
        if s.export_dir is not None:
            save_checkpoint(module, s.export_dir, half=True)
    elif s.tune and not s.types_only and (out / "best" / "model.safetensors").is_file():
        tune_checkpoint(out / "best", val_sources, device, s.export_dir)
    result = {
        "best": jsonable(best_summary),
        "best_metric": best_metric,
        "steps": step,
        "elapsed_s": round(elapsed_before + time.monotonic() - t0, 1),
        "out": str(out),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def tune_checkpoint(
    checkpoint: Path,
    val_sources: Sequence[Source],
    device: torch.device | str = "cpu",
    export_dir: Path | None = None,
) -> dict[str, Any]:
    """Tune the post-processing of ``checkpoint`` on ``val_sources`` and write the chosen
    values into its config (and ``export_dir``'s, float16); the report goes to
    ``checkpoint/tune.json``."""
    from wsi_infer.model import load_model

    loaded = load_model(checkpoint)
    module = loaded.module.to(device)
    values, report = tune_postprocess(module, loaded.config, val_sources, device=device)
    module.config = dataclasses.replace(loaded.config, **values)
    meta = {"postprocess": json.dumps(values, sort_keys=True)}
    save_checkpoint(module, checkpoint, metadata=meta)
    if export_dir is not None:
        save_checkpoint(module, export_dir, half=True, metadata=meta)
    (checkpoint / "tune.json").write_text(json.dumps(jsonable(report), indent=1) + "\n")
    after = report["after"]["scores"]
    logger.info(
        "post-processing tuned on %d images: %s; bPQ %.4f -> %.4f",
        report["images"],
        values,
        report["before"]["scores"]["bPQ"],
        after["bPQ"],
    )
    return report
