"""The command line as a user meets it: exit codes, one-line errors, no clobbering."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zarr
from helpers import invoke

from wsi_infer import __version__


def test_version_and_help() -> None:
    code, out, _ = invoke("--version")
    assert code == 0 and __version__ in out
    code, out, _ = invoke("run", "--help")
    assert code == 0 and "--overwrite" in out and "--tile-size" in out


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("bad/unreadable.svs", "Bogus marker"),
        ("bad/unopenable.tiff", "52479"),
        ("bad/not-a-tiff.svs", "not a slide"),
        ("bad/missing.svs", "no such file"),
        ("bad", "directory"),
        ("slides/no-mpp.tif", "--mpp"),
    ],
)
def test_bad_input_one_line_error_no_store(
    data: Path, tiny_model: Path, tmp_path: Path, name: str, cause: str
) -> None:
    out = tmp_path / "r.zarr"
    code, _, stderr = invoke(
        data / name, "--out", out, "--model", tiny_model, "--backend", "torch", "-q"
    )
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(data / name) in lines[0] and cause in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists()


def test_existing_output_is_never_silently_overwritten(
    data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    slide = data / "edge/small.svs"
    code, _, stderr = invoke(
        slide, "--out", out, "--model", tiny_model, "--backend", "torch", "--mpp", "1", "-q"
    )
    assert code != 0 and "--overwrite" in stderr and (out / "keep.txt").read_text() == "mine"
    args = (slide, "--model", tiny_model, "--backend", "torch", "--mpp", "1", "--tile-size", "256")
    # --overwrite replaces wsi-infer stores only: a folder of someone else's stays
    code, _, stderr = invoke(*args, "--out", out, "--overwrite")
    assert code == 1 and "not a wsi-infer store" in stderr
    assert (out / "keep.txt").read_text() == "mine"
    store = tmp_path / "s.zarr"
    assert invoke(*args, "--out", store)[0] == 0
    first = zarr.open_group(str(store), mode="r").attrs["wsi_infer"]["store_id"]
    code, stdout, _ = invoke(*args, "--out", store, "--overwrite", "--tissue-threshold", "0.2")
    assert code == 0 and "nuclei" in stdout and "tiles/s" in stdout
    info = zarr.open_group(str(store), mode="r").attrs["wsi_infer"]
    assert info["status"] == "complete" and info["store_id"] != first


def test_mutually_exclusive_tissue_options_are_a_usage_error(data: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke(
        data / "edge/small.svs",
        "--out",
        tmp_path / "r.zarr",
        "--no-tissue-mask",
        "--tissue-threshold",
        "0.1",
    )
    assert code == 2 and "mutually exclusive" in stderr


def test_invalid_tile_geometry_is_a_usage_error(data: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke(
        data / "edge/small.svs", "--out", tmp_path / "r.zarr", "--tile-size", "100"
    )
    assert code == 2 and "multiple of 32" in stderr


def test_console_script_runs_a_real_slide(data: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The installed entry point, in its own process, as a user runs it."""
    out = tmp_path / "tma.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_infer",
            str(data / "slides/he-tma-core-0.5mpp.ome.tif"),
            "--out",
            str(out),
            "--model",
            str(tiny_model),
            "--backend",
            "torch",
            "--tile-size",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("tiles/s")
    assert zarr.open_group(str(out), mode="r").attrs["wsi_infer"]["status"] == "complete"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_infer",
            str(data / "bad/unreadable.svs"),
            "--out",
            str(tmp_path / "bad.zarr"),
            "--model",
            str(tiny_model),
            "--backend",
            "torch",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_first_onnx_export_is_announced_unless_quiet(
    tiny_model: Path, make_slide: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    import numpy as np

    import wsi_infer.export.onnx_export as onnx_export
    from wsi_infer.errors import CheckpointError

    exports: list[Path] = []

    def no_export(model: Path, out: Path, **_: object) -> None:
        exports.append(out)
        raise CheckpointError(f"{model}: not exported in this test")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached yet
    slide = make_slide("announce.tif", np.full((256, 256, 3), 200, np.uint8))
    args = [slide, "--out", tmp_path / "r.zarr", "--model", tiny_model]
    code, _, err = invoke(*args, "--backend", "onnxruntime")
    assert code == 1 and len(exports) == 1
    lines = err.splitlines()
    assert lines[0] == "wsi-infer: exporting the model for ONNX Runtime (once, ~30 s)", err
    assert lines[1].startswith("wsi-infer: error:") and len(lines) == 2
    code, _, err = invoke(*args, "--backend", "onnxruntime", "--quiet")
    assert code == 1 and len(exports) == 2 and "exporting" not in err


def test_onnx_export_says_when_it_is_done(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    pytest.importorskip("onnxruntime")
    import logging

    import wsi_infer.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, out, **_: out.write_bytes(b"x"))
    with caplog.at_level(logging.INFO, logger="wsi_infer.notice"):
        first = onnx_export.cached_onnx(tiny_model, cache_dir=tmp_path)
        again = onnx_export.cached_onnx(tiny_model, cache_dir=tmp_path)
    assert first == again and first.read_bytes() == b"x"
    notices = [r.getMessage() for r in caplog.records if r.name == "wsi_infer.notice"]
    assert len(notices) == 2  # the second call finds the export in the cache
    assert notices[0] == "exporting the model for ONNX Runtime (once, ~30 s)"
    assert notices[1].startswith("exported the model for ONNX Runtime in ")
    assert str(first.parent) in notices[1]


def test_model_help_names_what_the_readme_shows() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--model default|CHECKPOINT_DIR|MODEL.onnx" in readme
    code, out, _ = invoke("run", "--help")
    help_text = " ".join(out.split())  # click wraps the help
    assert code == 0 and "checkpoint directory" in help_text and "MODEL.onnx" in help_text
