"""Many slides in one command: good and bad together, manifests, summaries, JSON logs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import zarr
from helpers import invoke


def test_batch_of_good_and_bad_slides(data: Path, tiny_model: Path, tmp_path: Path) -> None:
    slides = [
        data / "slides/he-tma-core-0.5mpp.ome.tif",
        data / "bad/unreadable.svs",
        data / "bad/not-a-tiff.svs",
        data / "bad/unopenable.tiff",
        data / "edge/small.svs",
        data / "edge/boxes.tiff",
        tmp_path / "missing.svs",
        data / "slides/no-mpp.tif",  # no mpp and none given
    ]
    out = tmp_path / "results"
    log = tmp_path / "events.jsonl"
    code, _, stderr = invoke(
        *slides,
        "--out",
        out,
        "--model",
        tiny_model,
        "--backend",
        "torch",
        "--tile-size",
        "256",
        "--log-json",
        log,
        "-q",
    )
    assert code == 3  # some failed
    summary = json.loads((out / "summary.json").read_text())
    status = {Path(r["slide"]).name: r["status"] for r in summary}
    assert status == {
        "he-tma-core-0.5mpp.ome.tif": "complete",
        "unreadable.svs": "failed",
        "not-a-tiff.svs": "failed",
        "unopenable.tiff": "failed",
        "small.svs": "complete",
        "boxes.tiff": "failed",  # 352.8 µm/px from a writer's default 72 dpi: no microscope
        "missing.svs": "failed",
        "no-mpp.tif": "failed",
    }
    for r in summary:
        store = Path(r["store"])
        if r["status"] == "complete":
            assert zarr.open_group(str(store), mode="r").attrs["wsi_infer"]["status"] == "complete"
            assert r["nuclei"] is not None and r["error"] is None
        else:
            # a failed slide's store is absent or says it failed: never complete
            if store.exists():
                assert (
                    zarr.open_group(str(store), mode="r").attrs["wsi_infer"]["status"] != "complete"
                )
            assert Path(r["slide"]).name in r["error"] and "\n" not in r["error"]
    with (out / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == [r["status"] for r in summary]
    lines = stderr.strip().splitlines()
    assert len([ln for ln in lines if ln.startswith("wsi-infer: error:")]) == 6  # one per failure
    # the rest are plausibility warnings (a random model's results), one line each
    assert all(ln.startswith(("wsi-infer: error:", "wsi-infer: warning:")) for ln in lines)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "batch_started" and kinds[-1] == "batch_finished"
    assert kinds.count("slide_started") == 8
    assert kinds.count("slide_finished") == 2 and kinds.count("slide_failed") == 6
    assert "progress" in kinds
    assert all("time" in e for e in events)


def test_manifest_with_mpp_and_names_then_rerun_skips(
    data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "slides.csv"
    manifest.write_text(
        f"path,mpp,name\n{data / 'slides/no-mpp.tif'},0.5,no-mpp\n{data / 'edge/small.svs'},,tiny\n"
    )
    out = tmp_path / "results"
    args = (
        "--manifest",
        manifest,
        "--out",
        out,
        "--model",
        tiny_model,
        "--backend",
        "torch",
        "--tile-size",
        "256",
    )
    code, stdout, _ = invoke(*args)
    assert code == 0, stdout
    root = zarr.open_group(str(out / "no-mpp.zarr"), mode="r")
    assert root.attrs["wsi_infer"]["slide"]["mpp"] == 0.5
    assert root.attrs["wsi_infer"]["slide"]["mpp_source"] == "--mpp"
    assert (out / "tiny.zarr").is_dir()
    assert "2 of 2 slides done" in stdout
    code, stdout, _ = invoke(*args)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["skipped", "skipped"]


@pytest.mark.parametrize(
    ("text", "cause"),
    [("file\nx.svs\n", "'path' column"), ("path,mpp\nx.svs,fast\n", "not a number")],
)
def test_bad_manifest_is_one_line_error(tmp_path: Path, text: str, cause: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    code, _, stderr = invoke("--manifest", manifest, "--out", tmp_path / "o", "--backend", "torch")
    assert code == 1 and cause in stderr and str(manifest) in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_duplicate_output_names_are_refused_before_any_work(
    data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    a = tmp_path / "a" / "small.svs"
    a.parent.mkdir()
    a.write_bytes((data / "edge/small.svs").read_bytes())
    code, _, stderr = invoke(
        data / "edge/small.svs",
        a,
        "--out",
        tmp_path / "o",
        "--model",
        tiny_model,
        "--backend",
        "torch",
    )
    assert code == 1 and "distinct names" in stderr
    assert not (tmp_path / "o" / "small.zarr").exists()


def test_usage_errors(data: Path, tmp_path: Path) -> None:
    slide = data / "edge/small.svs"
    code, _, err = invoke(slide, slide, "--out", tmp_path / "x.zarr")
    assert code == 2 and "folder" in err
    code, _, err = invoke(
        slide, "--out", tmp_path / "x.zarr", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"
    )
    assert code == 2 and "mutually exclusive" in err
    code, _, err = invoke("--out", tmp_path / "x")
    assert code == 2 and "no slide" in err
