"""Where one line is promised, one line it is: bad configs, outputs, logs, schedulers, inputs.

Each case either gives the correct result or exits non-zero with one line that names
the file and the cause, with no traceback, nothing lost and nothing reported complete.
Read-only folders are tested in a subprocess without root's read-anything capability.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zarr
from helpers import invoke, one_line_error

from wsi_infer.verify import check_complete


def without_root_powers(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``wsi-infer ARGS`` as root without the capabilities that let it write anywhere."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop root's write-anything capability")
    caps = "-dac_override,-dac_read_search"
    cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    cmd += [sys.executable, "-m", "wsi_infer", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def crop(cmu_crop: Callable[..., Path]) -> Path:
    return cmu_crop("errors-crop.tif", 256)


@pytest.fixture(scope="module")
def store(crop: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "r.zarr"
    code, _, err = invoke(crop, "--out", out, *tiny(tiny_model))
    assert code == 0, err
    return out


def tiny(model: Path) -> tuple[str | Path, ...]:
    return ("--model", model, "--backend", "torch", "--tile-size", "256", "-q")


def edited_model(tiny_model: Path, folder: Path, **changes: object) -> Path:
    copy = Path(shutil.copytree(tiny_model, folder / "model"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


# ------------------------------------------------------------------ 5. model configs


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"mpp": "0.25"}, "mpp '0.25' is not a number"),
        ({"tile_size": None}, "tile_size None is not an integer"),
        ({"class_colours": ["red"] * 5}, "is not a list of lists of 3 integers"),
        ({"stem_channels": 8}, "weights do not match config.json (size mismatch"),
    ],
)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_bad_model_config_is_one_line(
    crop: Path,
    tiny_model: Path,
    tmp_path: Path,
    changes: dict[str, object],
    cause: str,
    backend: str,
) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    ckpt = edited_model(tiny_model, tmp_path, **changes)
    out = tmp_path / "r.zarr"
    code, _, err = invoke(crop, "--out", out, "--model", ckpt, "--backend", backend, "-q")
    one_line_error(code, err, ckpt, cause)
    assert not out.exists()


# ------------------------------------------------------------------ 5. outputs and logs


def test_batch_output_that_is_a_file(crop: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.write_text("mine")
    code, _, err = invoke(crop, crop.with_name("other.tif"), "--out", out, *tiny(tiny_model))
    one_line_error(code, err, out, "is a file")
    assert out.read_text() == "mine"


def test_event_log_that_is_a_folder_or_in_a_missing_one(
    crop: Path, tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    code, _, err = invoke(
        crop, "--out", tmp_path / "a.zarr", "--log-json", folder, *tiny(tiny_model)
    )
    one_line_error(code, err, folder, "cannot write the event log")
    assert not (tmp_path / "a.zarr").exists()
    log = tmp_path / "new" / "deeper" / "events.jsonl"
    code, _, err = invoke(crop, "--out", tmp_path / "b.zarr", "--log-json", log, *tiny(tiny_model))
    assert code == 0, err
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events[0] == "slide_started" and events[-1] == "slide_finished"


def test_read_only_outputs(
    crop: Path, store: Path, data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "events.jsonl").write_text("")
    os.chmod(locked / "events.jsonl", 0o444)
    os.chmod(locked, 0o555)
    try:
        two = (crop, data / "edge" / "small.svs")
        batch = without_root_powers(*two, "--out", locked, *tiny(tiny_model))
        one_line_error(batch.returncode, batch.stderr, locked, "Permission denied")
        log = without_root_powers(
            crop, "--out", tmp_path / "r.zarr", "--log-json", locked / "events.jsonl",
            *tiny(tiny_model),
        )  # fmt: skip
        one_line_error(log.returncode, log.stderr, locked / "events.jsonl", "Permission denied")
        geojson = without_root_powers("export", "geojson", store, locked / "n.geojson")
        one_line_error(
            geojson.returncode, geojson.stderr, locked / "n.geojson", "Permission denied"
        )
        overlay = without_root_powers("export", "overlay", store, "--out", locked / "qc")
        one_line_error(overlay.returncode, overlay.stderr, locked / "qc", "Permission denied")
    finally:
        os.chmod(locked, 0o755)
    assert sorted(p.name for p in locked.iterdir()) == ["events.jsonl"]
    assert (locked / "events.jsonl").read_text() == ""
    assert not (tmp_path / "r.zarr").exists()


def test_exports_into_a_missing_folder_make_it(store: Path, tmp_path: Path) -> None:
    code, _, err = invoke("export", "geojson", store, tmp_path / "a" / "b" / "n.geojson")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "b" / "n.geojson").read_text())["type"] == (
        "FeatureCollection"
    )
    code, _, err = invoke("export", "overlay", store, "--out", tmp_path / "c" / "d")
    assert code == 0, err
    assert (tmp_path / "c" / "d" / f"{store.stem}.overlay.png").is_file()


def test_exports_never_write_inside_a_store(store: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(store, tmp_path / "r.zarr"))
    meta = (copy / "zarr.json").read_bytes()
    code, _, err = invoke("export", "geojson", copy, copy / "zarr.json", "--overwrite")
    one_line_error(code, err, copy / "zarr.json", f"inside the wsi-infer store {copy}")
    code, _, err = invoke("export", "overlay", copy, "--out", copy / "labels")
    one_line_error(code, err, "inside the wsi-infer store")
    assert (copy / "zarr.json").read_bytes() == meta
    check_complete(copy)


# ------------------------------------------------------------------ 5. schedulers, stores


@pytest.mark.parametrize("address", ["not a url", "tcp://127.0.0.1", "tcp://127.0.0.1:99999"])
def test_a_scheduler_address_that_is_none(
    crop: Path, tiny_model: Path, tmp_path: Path, address: str
) -> None:
    out = tmp_path / "r.zarr"
    code, _, err = invoke(crop, "--out", out, "--scheduler", address, *tiny(tiny_model))
    one_line_error(code, err, repr(address), "tcp://")
    assert not out.exists()


def test_inspect_of_a_zarr_group_without_a_model(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "odd.zarr"), mode="w")
    group.attrs["wsi_infer"] = {"status": "complete"}
    code, _, err = invoke("inspect", tmp_path / "odd.zarr")
    one_line_error(code, err, "odd.zarr", "lacks or garbles model")


# ------------------------------------------------------------------ 7. inputs and outputs


def test_a_named_pipe_in_a_batch_fails_alone(crop: Path, tiny_model: Path, tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.svs"
    os.mkfifo(pipe)
    out = tmp_path / "results"
    code, _, err = invoke(pipe, crop, "--out", out, *tiny(tiny_model))
    errors = [ln for ln in err.splitlines() if not ln.startswith("wsi-infer: warning:")]
    assert code == 3 and len(errors) == 1 and "named pipe" in errors[0], err
    summary = {Path(r["slide"]).name: r for r in json.loads((out / "summary.json").read_text())}
    assert summary["pipe.svs"]["status"] == "failed"
    assert summary[crop.name]["status"] == "complete"


def test_a_manifest_with_a_byte_order_mark(crop: Path, tiny_model: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"path,name\n{crop},bom\n", encoding="utf-8-sig")
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    out = tmp_path / "results"
    code, stdout, err = invoke("--manifest", manifest, "--out", out, *tiny(tiny_model)[:-1])
    assert code == 0, err
    assert "1 of 1 slides done" in stdout
    check_complete(out / "bom.zarr")


def test_another_tools_zarr_is_refused_and_never_deleted(
    crop: Path, tiny_model: Path, tmp_path: Path
) -> None:
    other = tmp_path / "r.zarr"
    group = zarr.open_group(str(other), mode="w")
    group.create_array("precious", shape=(4,), dtype="uint8")[:] = [1, 2, 3, 4]
    code, _, err = invoke(crop, "--out", other, *tiny(tiny_model))
    one_line_error(code, err, other, "not a wsi-infer store", "another tool")
    code, _, err = invoke(crop, "--out", other, "--overwrite", *tiny(tiny_model))
    one_line_error(code, err, other, "not a wsi-infer store", "--overwrite replaces only")
    assert zarr.open_group(str(other), mode="r")["precious"][:].tolist() == [1, 2, 3, 4]


def test_every_command_words_its_errors_alike() -> None:
    from wsi_infer.errors import one_line_error as line

    assert line("wsi-infer-export", OSError("x.onnx: gone\nfor good")) == (
        "wsi-infer-export: error: x.onnx: gone for good"
    )
    code, _, err = invoke("inspect", "/nonexistent/r.zarr")
    assert one_line_error(code, err, "/nonexistent/r.zarr") == line("wsi-infer", err[18:].strip())
