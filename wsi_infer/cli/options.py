"""Options shared by the console scripts besides ``wsi-infer``: export, train, eval, tune,
bench and the benchmark modules.

The commands are click commands; each console script's entry point (``main``,
``train_main``, ...) is an ``argv -> exit status`` function made by :func:`entry_point`,
so it can also be called from Python.  Options that take several values
(``--data A B C``, as the READMEs write them) are :class:`MultiValueOption`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, cast

import click

__all__ = [
    "MINUTES",
    "EntryPoint",
    "Minutes",
    "MultiValueOption",
    "backend_option",
    "device_option",
    "entry_point",
    "model_option",
    "multi_option",
    "out_option",
    "overlap_option",
    "pannuke_option",
    "path_option",
    "paths_option",
    "threads_option",
    "tile_size_option",
]

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

#: A path value as the commands use them: a :class:`~pathlib.Path`, not checked here.
PATH = click.Path(path_type=Path)

_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class MultiValueOption(click.Option):
    """An option followed by one or more values: ``--data A B C`` (argparse's ``nargs="+"``).

    Values are taken up to the next option (a word starting with ``-`` that is not a
    number) or ``--``; the option may also be repeated (``--data A --data B``), adding to
    the list.  The value is a list (empty when the option is absent and has no default).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)
        if self.metavar is None:
            self.metavar = f"{self.type.name.upper()}..."

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        matched = [parser._long_opt.get(o) or parser._short_opt.get(o) for o in self.opts]
        opt = next(o for o in matched if o is not None)
        store_one = opt.process

        def process(value: Any, state: Any) -> None:
            store_one(value, state)
            while state.rargs and not _looks_like_option(state.rargs[0]):
                store_one(state.rargs.pop(0), state)

        opt.process = process

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        value = super().process_value(ctx, value)
        return [] if value is None else list(value)


def _looks_like_option(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not _NUMBER.match(word)


def multi_option(*decls: str, **kwargs: Any) -> Decorator[Any]:
    """``click.option`` with one or more values after the flag (:class:`MultiValueOption`)."""
    return click.option(*decls, cls=MultiValueOption, **kwargs)


class Minutes(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """A duration in minutes: ``216`` (minutes), or with a unit: ``216m``, ``3.6h``, ``90s``."""

    name = "minutes"
    _UNITS: ClassVar[dict[str, float]] = {
        "s": 1 / 60,
        "sec": 1 / 60,
        "m": 1.0,
        "min": 1.0,
        "h": 60.0,
        "hr": 60.0,
    }

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            return float(value)
        match = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([a-z]*)\s*", str(value).lower())
        if match is None or match.group(2) not in ("", *self._UNITS):
            self.fail(
                f"{value!r} is not a duration: give minutes (216) or a unit (216m, 3.6h, 90s)",
                param,
                ctx,
            )
        return float(match.group(1)) * self._UNITS.get(match.group(2), 1.0)


MINUTES = Minutes()


class EntryPoint(Protocol):
    """A console script's entry point: ``main(argv=None) -> exit status``; ``main.command``
    is its click command."""

    command: click.Command

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def entry_point(command: click.Command, prog_name: str) -> EntryPoint:
    """A console-script entry point for ``command``: ``f(argv=None) -> exit status``.

    ``argv`` None reads ``sys.argv``.  Usage errors print click's usage message and give
    2, ``--help`` gives 0, the command's return value is the status (0 when it returns
    None); a ``SystemExit`` raised by the command propagates.
    """

    def main(argv: Sequence[str] | None = None) -> int:
        try:
            result = command.main(
                args=None if argv is None else [str(a) for a in argv],
                prog_name=prog_name,
                standalone_mode=False,
            )
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.Abort:
            click.echo("Aborted!", err=True)
            return 1
        return result if isinstance(result, int) else 0

    main.__doc__ = (
        f"``{prog_name}``: run with ``argv`` (default: the command line); the exit status."
    )
    main.command = command  # type: ignore[attr-defined]
    return cast(EntryPoint, main)


# --------------------------------------------------------------------------- shared options


def path_option(*decls: str, **kwargs: Any) -> Decorator[Any]:
    """An option holding one path (a :class:`~pathlib.Path`, not checked here)."""
    return click.option(*decls, type=PATH, **kwargs)


def paths_option(*decls: str, help: str | None = None, **kwargs: Any) -> Decorator[Any]:
    """An option holding one or more paths: ``--data DIR DIR ...`` (a list, empty if absent)."""
    kwargs.setdefault("metavar", "PATH...")
    return multi_option(*decls, type=PATH, help=help, **kwargs)


def out_option(*, help: str, required: bool = False, default: Path | None = None) -> Decorator[Any]:
    """``--out PATH``: where the command writes (a file or folder, per command)."""
    return path_option("--out", required=required, default=default, help=help)


def model_option(
    *, default: str | None = "default", help: str | None = None, required: bool = False
) -> Decorator[Any]:
    """``--model``: a bundled model name or a checkpoint directory."""
    return click.option(
        "--model",
        default=None if required else default,
        required=required,
        show_default=default is not None and not required,
        help=help or "Bundled model name or checkpoint directory.",
    )


def backend_option(*, default: str) -> Decorator[Any]:
    """``--backend``: torch, onnxruntime or tensorrt (as ``wsi-infer run`` takes it)."""
    return click.option(
        "--backend",
        default=default,
        show_default=True,
        help="Inference backend: torch, onnxruntime or tensorrt.",
    )


def device_option(*, default: str = "cpu") -> Decorator[Any]:
    """``--device``: cpu or cuda."""
    return click.option("--device", default=default, show_default=True, help="cpu or cuda.")


def threads_option(*, default: int | None = None, help: str | None = None) -> Decorator[Any]:
    """``--threads N``: CPU threads (torch, OpenCV, ONNX Runtime: per command)."""
    return click.option(
        "--threads",
        type=int,
        default=default,
        show_default=default is not None,
        help=help or "CPU threads.",
    )


def tile_size_option(
    *, default: int | None = None, help: str | None = None, name: str = "--tile-size"
) -> Decorator[Any]:
    """``--tile-size PX``: the model's input edge in pixels."""
    return click.option(
        name,
        type=int,
        default=default,
        show_default=default is not None,
        help=help or "Tile edge in pixels.",
    )


def overlap_option(*, default: int | None = None, help: str | None = None) -> Decorator[Any]:
    """``--overlap PX``: pixels of context shared by neighbouring tiles."""
    return click.option(
        "--overlap",
        type=int,
        default=default,
        show_default=default is not None,
        help=help or "Tile overlap in pixels.",
    )


def pannuke_option(f: F) -> F:
    """``--pannuke ROOT``: the PanNuke root holding 'Fold N' folders."""
    return path_option("--pannuke", help="PanNuke root holding 'Fold N' folders")(f)
