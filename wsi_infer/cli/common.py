"""Option decorators and helpers shared by the commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def quiet_option(f: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")(f)


def overwrite_option(f: F) -> F:
    return click.option(
        "--overwrite", is_flag=True, help="Replace an existing output (otherwise it is an error)."
    )(f)


def verbose_option(f: F) -> F:
    def setup(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            import logging

            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(handler)
            logging.getLogger().setLevel(logging.INFO)
        return value

    return click.option(
        "--verbose",
        "-v",
        is_flag=True,
        expose_value=False,
        callback=setup,
        is_eager=True,
        help="Log what the engine does to stderr.",
    )(f)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit non-zero (no traceback)."""
    click.echo(f"wsi-infer: error: {message}", err=True)
    sys.exit(code)


def tqdm_progress(quiet: bool) -> Callable[[int, str], Any] | None:
    if quiet:
        return None
    from tqdm.auto import tqdm

    def make(total: int, desc: str) -> Any:
        return tqdm(
            total=total,
            desc=desc,
            unit="tile" if desc == "predict" else "band",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    return make
