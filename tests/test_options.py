"""The run options are defined once (wsi_infer.options): the CLI, the fingerprint and the
defaults all come from RunOptions' fields."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from helpers import invoke

from wsi_infer.cli.run import run
from wsi_infer.errors import ParameterError
from wsi_infer.model import model_config
from wsi_infer.options import RunOptions, option_specs
from wsi_infer.resume import fingerprint
from wsi_infer.storeinfo import SlideRecord

README = Path(__file__).resolve().parents[1] / "README.md"

#: A value other than the default for every option: a new option needs one here.
OTHER: dict[str, Any] = {
    "model": "another",
    "backend": "torch",
    "device": "cuda",
    "batch_size": 4,
    "tile_size": 512,
    "overlap": 64,
    "foreground_threshold": 0.3,
    "marker_threshold": 0.3,
    "min_area_um2": 7.0,
    "mpp": 0.3,
    "threads": 5,
    "processes": 3,
    "scheduler": "tcp://127.0.0.1:8786",
    "no_tissue_mask": True,
    "tissue_mpp": 4.0,
    "tissue_threshold": 0.2,
    "geojson": True,
    "log_json": Path("events.jsonl"),
    "strict": True,
}


def _params_by_name() -> dict[str, click.Option]:
    return {p.name: p for p in run.params if isinstance(p, click.Option) and p.name}


def test_every_field_is_an_option_with_its_flags_help_and_default() -> None:
    options = _params_by_name()
    defaults = RunOptions()
    specs = option_specs()
    assert set(OTHER) == set(specs)
    for name, spec in specs.items():
        opt = options[name]
        assert set(opt.opts) == set(spec.flags), name
        assert opt.help is not None and opt.help.startswith(spec.help), name
        default = getattr(defaults, name)
        if isinstance(default, bool):
            assert opt.is_flag, name
        elif default is not None:  # None: click's "unset", as _parsed() shows
            assert opt.default == default, name
        if default is None and spec.default_help:
            assert spec.default_help in opt.help, name
    code, text, _ = invoke("run", "--help")
    assert code == 0
    for spec in specs.values():
        for flag in spec.flags:
            assert re.search(rf"(^|[ ,]){re.escape(flag)}\b", text, re.M), flag


def _parsed(*args: str) -> RunOptions:
    ctx = run.make_context("run", ["s.svs", "--out", "o.zarr", *args])
    names = set(option_specs())
    return RunOptions(**{k: v for k, v in ctx.params.items() if k in names})


def test_the_cli_makes_the_options_and_workers_is_still_processes() -> None:
    assert _parsed() == RunOptions()
    assert _parsed("--workers", "3") == _parsed("--processes", "3") == RunOptions(processes=3)
    got = _parsed("--tile-size", "512", "--threads", "4", "--geojson", "--no-tissue-mask")
    assert got == RunOptions(tile_size=512, threads=4, geojson=True, no_tissue_mask=True)


def test_tile_size_and_overlap_default_to_the_models() -> None:
    config = model_config("default")
    params = RunOptions().params(config)
    assert (params.tile_size, params.overlap) == (config.tile_size, config.overlap)
    assert RunOptions(tile_size=512).params(config).tile_size == 512
    assert params.threads == RunOptions().threads


def test_contradictions_are_refused() -> None:
    with pytest.raises(ParameterError, match="mutually exclusive"):
        RunOptions(no_tissue_mask=True, tissue_threshold=0.1)
    with pytest.raises(ParameterError, match="mutually exclusive"):
        RunOptions(processes=2, scheduler="tcp://h:1")
    with pytest.raises(ParameterError, match="--threads"):
        RunOptions(threads=0)


def _fingerprint(options: RunOptions) -> dict[str, Any]:
    """The fingerprint of a run with these options; the backend the options would build is
    stood in for by its identity (what the fingerprint takes of a backend)."""
    config = model_config("default")
    backend = SimpleNamespace(
        name=options.backend,
        device=options.device,
        model_sha256=hashlib.sha256(options.model.encode()).hexdigest(),
        config=config,
    )
    record = SlideRecord(
        path="/slides/a.svs", size_bytes=1, mtime_ns=2, sample_sha256="0" * 64, mpp=0.25
    )
    return fingerprint(record, backend, options.params(config))


def test_an_option_changes_the_fingerprint_only_if_marked_so() -> None:
    base = _fingerprint(RunOptions())
    for name, spec in option_specs().items():
        changed = _fingerprint(dataclasses.replace(RunOptions(), **{name: OTHER[name]}))
        assert (changed != base) == spec.fingerprint, name


def test_readme_usage_and_help_agree() -> None:
    text = README.read_text(encoding="utf-8")
    usage = text.split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    in_readme = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage))
    options = {o for p in run.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
    assert in_readme <= options, in_readme - options
    flags = {spec.flags[0] for spec in option_specs().values()}
    assert flags <= in_readme, flags - in_readme
