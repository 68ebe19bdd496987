"""One import root: the wheel installs the ``wsi_infer`` package only, and the engine does not
import the training or benchmark code."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "--wheel-dir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("wsi_infer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"wsi_infer"}
    # the sub-packages travel as real files, not as links
    for module in ("training/loop.py", "export/onnx_export.py", "benchmarks/bench.py"):
        assert f"wsi_infer/{module}" in names
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    targets = [
        line.split("=", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(entry_points).decode().splitlines()
        if "=" in line
    ]
    assert targets and all(t.startswith("wsi_infer.") for t in targets)


def test_installed_distribution_names_one_package() -> None:
    dist = importlib.metadata.distribution("wsi-infer")
    assert (dist.read_text("top_level.txt") or "").split() == ["wsi_infer"]
    scripts = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    assert {ep.name for ep in scripts} >= {"wsi-infer", "wsi-infer-train", "wsi-infer-bench"}
    assert all(ep.value.startswith("wsi_infer.") for ep in scripts)


def test_engine_imports_neither_training_nor_benchmarks(tmp_path: Path) -> None:
    code = (
        "import sys, wsi_infer.cli, wsi_infer.engine, wsi_infer.backends, wsi_infer.batch;"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['wsi_infer', 'training'], ['wsi_infer', 'benchmarks'])"
        " or m.split('.')[0] in ('training', 'benchmarks', 'export'));"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout.strip() == ""
