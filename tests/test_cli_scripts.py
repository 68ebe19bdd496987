"""The console scripts besides ``wsi-infer`` (export, train, eval, tune, bench) and the
benchmark modules: click commands that take every command line the documentation shows.

Each documented command (fenced blocks and inline code of the READMEs and the model card,
and ``gpu_check.sh``) is parsed by its command without running it; placeholders such as
``CKPT`` or ``N`` stand for a value, and inline mentions, which may leave required options
out, get those filled in.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from wsi_infer.benchmarks import (
    bench,
    context,
    make_slide,
    report_screenshot,
    segment_speed,
    tile_invariance,
    tiled_slide,
)
from wsi_infer.export import cli as export_cli
from wsi_infer.training import cli as training_cli
from wsi_infer.training import travel

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (
    "README.md",
    "wsi_infer/training/README.md",
    "wsi_infer/training/MODEL_CARD.md",
    "wsi_infer/benchmarks/README.md",
    "wsi_infer/benchmarks/gpu_check.sh",
    "wsi_infer/training/gpu_train.sh",
)
MODULES = {
    "bench": bench.bench_command,
    "context": context.context_command,
    "make_slide": make_slide.make_slide_command,
    "report_screenshot": report_screenshot.report_screenshot_command,
    "segment_speed": segment_speed.segment_speed_command,
    "tile_invariance": tile_invariance.tile_invariance_command,
    "tiled_slide": tiled_slide.tiled_slide_command,
}
SCRIPTS: dict[str, click.Command] = {
    "wsi-infer-export": export_cli.export_command,
    "wsi-infer-train": training_cli.train_command,
    "wsi-infer-eval": training_cli.eval_command,
    "wsi-infer-tune": training_cli.tune_command,
    "wsi-infer-bench": bench.bench_command,
    **{f"wsi_infer.benchmarks.{name}": cmd for name, cmd in MODULES.items()},
    "wsi_infer.training.travel": travel.travel_command,
}
#: A command's start: a console script, or ``python[3] -m wsi_infer.(benchmarks|training).NAME``.
START = re.compile(
    r"(?:^|(?<=\s))(?:python3? -m (wsi_infer\.(?:benchmarks\.\w+|training\.travel))|(wsi-infer-(?:export|train|eval|tune|bench)))\b"
)
PLACEHOLDER = "64"  # an int, a float and a path alike


def _logical_lines(text: str) -> list[str]:
    """Lines with ``\\`` continuations (and indented continuations) joined."""
    out: list[str] = []
    joining = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if out and (joining or (raw[:1].isspace() and START.search(out[-1]) and line.strip())):
            out[-1] += " " + line.strip().removesuffix("\\")
        else:
            out.append(line.removesuffix("\\"))
        joining = line.endswith("\\")
    return out


def _snippets(path: Path) -> list[tuple[str, str, bool]]:
    """``(where, command text, complete)``: complete for fenced blocks and scripts, not for
    inline mentions in prose."""
    text = path.read_text()
    found: list[tuple[str, str, bool]] = []
    if path.suffix == ".sh":
        blocks, prose = [text], ""
    else:
        parts = re.split(r"^```.*$", text, flags=re.MULTILINE)
        blocks, prose = parts[1::2], "\n".join(parts[0::2])
    for block in blocks:
        for line in _logical_lines(block):
            line = re.sub(r"(^|\s)#(\s.*)?$", "", line)  # comments
            line = re.split(r"\s[12]?>", line)[0]  # redirections
            for m in START.finditer(line):
                found.append((path.name, line[m.start() :], True))
    for span in re.findall(r"`([^`\n]+)`", prose):
        if START.match(span):
            found.append((path.name, span, False))
    return found


def _argv(text: str) -> tuple[str, list[str]]:
    """The script's name and its arguments, placeholders replaced by values."""
    m = START.match(text)
    assert m is not None, text
    name = m.group(1) or m.group(2)
    args: list[str] = []
    skipping = False
    for token in shlex.split(text[m.end() :]):
        token = re.sub(r"\$\{?\w+\}?", PLACEHOLDER, token)  # shell variables
        if token == "|":  # the rest of an (A | B) group: take A
            skipping = True
            continue
        closing = token.endswith(")")
        if skipping:
            skipping = not closing
            continue
        token = token.strip("[]()").split("|")[0]
        if token == "..." and args and args[-1].startswith("--"):
            token = PLACEHOLDER  # --data ...: some values
        token = token.removesuffix("...")
        if not token:
            continue
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", token):
            token = PLACEHOLDER
        args.append(token)
    return name, args


def _documented() -> list[tuple[str, str, bool]]:
    return [s for doc in DOCUMENTS for s in _snippets(ROOT / doc)]


def _parse(name: str, args: list[str], complete: bool) -> click.Context:
    command = SCRIPTS[name]
    if not complete:  # a mention: fill in what a full command line would give
        for param in command.params:
            if param.required and isinstance(param, click.Option):
                if not set(param.opts) & set(args):
                    args = [*args, param.opts[0], PLACEHOLDER]
            elif param.required and isinstance(param, click.Argument) and not args:
                args = [PLACEHOLDER, *args]
    return command.make_context(name, args)


def test_the_documentation_shows_every_command() -> None:
    names = {_argv(text)[0] for _, text, _ in _documented()}
    assert set(SCRIPTS) <= names, sorted(set(SCRIPTS) - names)


@pytest.mark.parametrize(
    ("where", "text", "complete"),
    _documented(),
    ids=lambda v: v[:60] if isinstance(v, str) else None,
)
def test_documented_command_line_parses(where: str, text: str, complete: bool) -> None:
    name, args = _argv(text)
    try:
        _parse(name, args, complete)
    except click.ClickException as exc:
        pytest.fail(f"{where}: {text!r} does not parse: {exc.format_message()}")


def test_values_are_those_the_documentation_means() -> None:
    """Several values after a flag make a list; --time-budget is minutes, or has a unit."""
    train = training_cli.train_command
    argv = "--data a b c --val-split 0.12 --crop 256 512 --time-budget 216 --out r --threads 2"
    params = train.make_context("wsi-infer-train", argv.split()).params
    assert params["data"] == [Path("a"), Path("b"), Path("c")]
    assert params["crop"] == [256, 512] and params["time_budget"] == 216.0
    assert (params["val_data"], params["train_folds"], params["threads"]) == ([], [], 2)
    for text, minutes in (("216m", 216.0), ("3.6h", 216.0), ("90s", 1.5), ("1.5", 1.5)):
        ctx = train.make_context("t", ["--out", "r", "--time-budget", text])
        assert ctx.params["time_budget"] == pytest.approx(minutes)
    with pytest.raises(click.BadParameter, match=r"216m, 3\.6h"):
        train.make_context("t", ["--out", "r", "--time-budget", "3.6 days"])
    # repeated flags add up; the list stops at the next option
    params = train.make_context(
        "t", ["--train-folds", "1", "2", "--train-folds", "3", "--val-fold", "3", "--out", "r"]
    ).params
    assert params["train_folds"] == [1, 2, 3] and params["val_fold"] == 3
    assert bench.bench_command.make_context("b", []).params["workers"] == [1, 2]
    child = bench.bench_command.make_context("b", ["--child", "cfg.json", "out.json"])
    assert child.params["child"] == ("cfg.json", "out.json")
    assert make_slide.make_slide_command.make_context("m", ["o.tif"]).params["size"] == (
        20000,
        20000,
    )


@pytest.mark.parametrize(
    "main",
    [
        export_cli.main,
        training_cli.train_main,
        training_cli.eval_main,
        training_cli.tune_main,
        bench.main,
        context.main,
        make_slide.main,
        segment_speed.main,
        tile_invariance.main,
        tiled_slide.main,
    ],
)
def test_entry_points_take_argv_and_give_the_exit_status(
    main: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(main)
    assert main(["--help"]) == 0
    assert "Usage:" in capsys.readouterr().out
    assert main(["--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert "No such option" in err and "Traceback" not in err


def test_report_screenshot_passes_unknown_options_to_wsi_infer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = report_screenshot.report_screenshot_command
    ctx = command.make_context("r", ["--run", "--workers", "2", "-q", "--width", "900"])
    assert ctx.params["run"] and ctx.params["width"] == 900
    assert ctx.args == ["--workers", "2", "-q"]
    assert report_screenshot.main(["--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


def test_console_scripts_point_at_the_entry_points() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, attr = target.split(":")
        entry = getattr(__import__(module, fromlist=[attr]), attr)
        assert callable(entry), name
        if name != "wsi-infer":
            assert entry.command.name == name
