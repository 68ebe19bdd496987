"""A few training steps and evaluation, end to end, on a real (tiny) PanNuke fold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from wsi_infer.model import load_model
from wsi_infer.training.baseline import segment_classical
from wsi_infer.training.cli import eval_main, train_main
from wsi_infer.training.data import FolderSource
from wsi_infer.training.metrics import get_fast_pq

TINY = [
    "--arch",
    "b0",
    "--stem-channels",
    "4",
    "--crop",
    "64",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--quiet",
    "--val-limit",
    "2",
]


def test_train_resume_and_evaluate_end_to_end(
    pannuke_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, export = tmp_path / "run", tmp_path / "export"
    args = [
        "--pannuke",
        str(pannuke_root),
        "--train-folds",
        "3",
        "--val-fold",
        "3",
        *TINY,
        "--out",
        str(out),
        "--export",
        str(export),
    ]
    assert train_main([*args, "--epochs", "1"]) == 0  # 8 patches / batch 4: 2 steps
    for name in (
        "best/model.safetensors",
        "best/config.json",
        "last/model.safetensors",
        "state.pt",
        "curves.png",
        "metrics.jsonl",
        "result.json",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and math.isfinite(records[-1]["train_loss"])
    assert "bPQ" in records[-1]["val"]
    # The exported copy is float16 and loads back through the engine's loader.
    from safetensors.torch import load_file

    assert {
        str(v.dtype)
        for v in load_file(str(export / "model.safetensors")).values()
        if v.is_floating_point()
    } == {"torch.float16"}
    loaded = load_model(export)
    assert loaded.config.stem_channels == 4
    assert loaded.config.extra["train_data"] == ["pannuke/fold3"]

    # Resume continues the epoch and step count instead of starting over.
    assert train_main([*args, "--epochs", "2", "--resume"]) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 2), (1, 4)]

    capsys.readouterr()
    report_file = tmp_path / "report.json"
    assert (
        eval_main(
            [
                str(out / "best"),
                "--pannuke",
                str(pannuke_root),
                "--fold",
                "3",
                "--limit",
                "2",
                "--out",
                str(report_file),
                "--threads",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads(report_file.read_text())
    assert report["scores"]["n_images"] == 2
    assert set(report["scores"]) >= {"bPQ", "mPQ", "AJI", "Dice", "F1_iou", "F1_centroid"}
    # CoNSeP maps no nucleus to "epithelial": PanNuke's rule makes that class NaN -> null.
    assert report["scores"]["class_PQ"]["epithelial"] is None
    assert json.loads(capsys.readouterr().out)["scores"]["n_images"] == 2


def test_baseline_finds_nuclei_on_real_patches(data: Path, tmp_path: Path) -> None:
    src = FolderSource(data / "nuclei" / "consep" / "test")
    pqs = []
    for k in range(3):
        s = src[k]
        labels = segment_classical(s.image)
        assert labels.dtype == np.int32 and labels.shape == s.inst.shape
        (_, _, pq), _ = get_fast_pq(s.inst, labels)
        pqs.append(pq)
    # Far from perfect, but clearly better than nothing.
    assert 0.05 < float(np.mean(pqs)) < 0.9
    report = tmp_path / "baseline.json"
    assert (
        eval_main(
            [
                "--baseline",
                "--data",
                str(data / "nuclei" / "consep" / "test"),
                "--limit",
                "3",
                "--out",
                str(report),
                "--quiet",
            ]
        )
        == 0
    )
    scores = json.loads(report.read_text())["scores"]
    assert scores["bPQ"] == pytest.approx(float(np.mean(pqs)), abs=1e-9)


def test_cosine_schedule_warms_up_then_decays_to_one_percent() -> None:
    from wsi_infer.training.loop import cosine_factor

    assert cosine_factor(0.0, 0.1) == pytest.approx(0.01)
    assert cosine_factor(0.05, 0.1) == pytest.approx(0.5)
    assert cosine_factor(0.1, 0.1) == pytest.approx(1.0)
    assert cosine_factor(0.55, 0.1) == pytest.approx(0.505)
    assert cosine_factor(1.0, 0.1) == pytest.approx(0.01)
    assert cosine_factor(2.0, 0.0) == pytest.approx(0.01)


def test_fine_tuning_starts_from_pretrained_encoder_weights(
    pannuke_root: Path, tmp_path: Path
) -> None:
    """``--encoder-weights DIR`` (a save_pretrained directory, as nvidia/mit-b0 is on the hub):
    with the encoder frozen for the whole run, its tensors come out of training unchanged,
    in the checkpoint the engine loads."""
    import torch
    from transformers import SegformerConfig, SegformerModel

    from wsi_infer.config import ARCHITECTURES

    torch.manual_seed(5)
    a = ARCHITECTURES["b0"]
    pretrained = SegformerModel(SegformerConfig(depths=a["depths"], hidden_sizes=a["hidden_sizes"]))
    pretrained.save_pretrained(tmp_path / "mit-b0")
    out = tmp_path / "run"
    base = ["--pannuke", str(pannuke_root), "--train-folds", "3", *TINY, "--max-steps", "1"]
    args = [*base, "--encoder-weights", str(tmp_path / "mit-b0"), "--freeze-encoder", "1.0"]
    assert train_main([*args, "--out", str(out)]) == 0
    model = load_model(out / "last").module
    for key, value in pretrained.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert model.config.extra["encoder_weights"].endswith("mit-b0")

    # Weights of another size stop the run in one line, before any training.
    SegformerModel(
        SegformerConfig(
            depths=ARCHITECTURES["b1"]["depths"], hidden_sizes=ARCHITECTURES["b1"]["hidden_sizes"]
        )
    ).save_pretrained(tmp_path / "mit-b1")
    with pytest.raises(SystemExit) as err:
        train_main(
            [*base, "--encoder-weights", str(tmp_path / "mit-b1"), "--out", str(tmp_path / "r2")]
        )
    assert "arch b0" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "r2" / "last").exists()


def test_types_only_training_leaves_the_nuclei_as_they_were(
    pannuke_root: Path, tmp_path: Path
) -> None:
    """``--init CKPT --types-only``: only the class logits learn; the foreground and distance
    outputs, hence every nucleus the engine finds, are exactly those of the initial model."""
    import torch

    base = ["--pannuke", str(pannuke_root), "--train-folds", "3", *TINY]
    assert train_main([*base, "--max-steps", "1", "--out", str(tmp_path / "a")]) == 0
    init = tmp_path / "a" / "last"
    args = [*base, "--max-steps", "2", "--lr", "0.05", "--init", str(init), "--types-only"]
    assert train_main([*args, "--out", str(tmp_path / "b")]) == 0
    before, after = load_model(init).module, load_model(tmp_path / "b" / "last").module
    changed = [
        k for k, v in before.state_dict().items() if not torch.equal(v, after.state_dict()[k])
    ]
    assert changed and all(k.startswith("head.") for k in changed), changed
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = before(x), after(x)
    assert torch.equal(a[:, :2], b[:, :2])
    assert not torch.equal(a[:, 3:], b[:, 3:])
    with pytest.raises(SystemExit, match="--init"):
        train_main([*base, "--types-only", "--out", str(tmp_path / "c")])


def test_tune_stores_the_engine_tiles_chosen_for_a_model(
    pannuke_root: Path, tmp_path: Path
) -> None:
    """``wsi-infer-tune CKPT --tile-size --overlap --no-search``: the engine's default tiles are
    written into the config (and the float16 export), where the engine reads them; a size off
    the model's attention grid is refused in one line and leaves the checkpoint as it was."""
    from wsi_infer.params import RunParams
    from wsi_infer.training.cli import tune_main

    base = ["--pannuke", str(pannuke_root), "--train-folds", "3", *TINY, "--max-steps", "1"]
    assert (
        train_main(
            [
                *base,
                "--attention-window",
                "32",
                "--tile-size",
                "128",
                "--overlap",
                "32",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    ckpt, export = tmp_path / "a" / "last", tmp_path / "export"
    args = [str(ckpt), "--tile-size", "256", "--overlap", "96", "--no-search"]
    assert tune_main([*args, "--export", str(export)]) == 0
    for where in (ckpt, export):
        params = RunParams.for_model(load_model(where).config)
        assert (params.tile_size, params.overlap) == (256, 96)
    before = (ckpt / "config.json").read_text()
    with pytest.raises(SystemExit) as err:
        tune_main([str(ckpt), "--tile-size", "250", "--no-search"])
    assert "250" in str(err.value) and "\n" not in str(err.value)
    assert (ckpt / "config.json").read_text() == before


def test_no_tune_leaves_the_post_processing_for_later(pannuke_root: Path, tmp_path: Path) -> None:
    """Training tunes the best checkpoint's post-processing on the validation data at its end
    (the chosen values land in its config); ``--no-tune`` (a GPU run, tuned later on a CPU)
    leaves the config's values as the run started with them."""
    keys = (
        "foreground_threshold",
        "marker_threshold",
        "min_marker_area_um2",
        "min_nucleus_area_um2",
    )
    base = ["--pannuke", str(pannuke_root), "--train-folds", "3", "--val-fold", "3", *TINY]
    args = [*base, "--max-steps", "1"]
    assert train_main([*args, "--out", str(tmp_path / "tuned")]) == 0
    report = json.loads((tmp_path / "tuned" / "best" / "tune.json").read_text())
    tuned = load_model(tmp_path / "tuned" / "best").config
    assert {k: getattr(tuned, k) for k in keys} == pytest.approx(report["after"]["values"])

    assert train_main([*args, "--no-tune", "--out", str(tmp_path / "later")]) == 0
    best = tmp_path / "later" / "best"
    assert (best / "model.safetensors").is_file() and not (best / "tune.json").exists()
    untouched = load_model(best).config
    assert {k: getattr(untouched, k) for k in keys} == pytest.approx(report["before"]["values"])
