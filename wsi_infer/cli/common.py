"""Option decorators and helpers shared by the commands."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from wsi_infer.errors import one_line_error

F = TypeVar("F", bound=Callable[..., Any])


#: The library's notices to the user (a first-use model export, ...): shown on stderr as
#: ``wsi-infer: MESSAGE`` by commands with :func:`quiet_option`, unless --quiet.
NOTICE_LOGGER = "wsi_infer.notice"


class _Notices(logging.Handler):
    """Notices as ``wsi-infer: MESSAGE`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"wsi-infer: {record.getMessage()}", err=True)
        except Exception:
            self.handleError(record)


def show_notices(show: bool) -> None:
    """Show the library's notices on stderr, or stop showing them."""
    log = logging.getLogger(NOTICE_LOGGER)
    for handler in [h for h in log.handlers if isinstance(h, _Notices)]:
        log.removeHandler(handler)
    if show:
        log.addHandler(_Notices())
        log.setLevel(logging.INFO)


def quiet_option(f: F) -> F:
    def setup(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        show_notices(not value)
        return value

    return click.option(
        "--quiet", "-q", is_flag=True, callback=setup, help="No progress bars or summary."
    )(f)


def overwrite_option(f: F) -> F:
    return click.option(
        "--overwrite", is_flag=True, help="Replace an existing output (otherwise it is an error)."
    )(f)


def verbose_option(f: F) -> F:
    def setup(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
            # notices have their own line (see show_notices), not a second one here
            handler.addFilter(lambda record: record.name != NOTICE_LOGGER)
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
    click.echo(one_line_error("wsi-infer", message), err=True)
    sys.exit(code)


def tqdm_progress(quiet: bool) -> Callable[[int, str], Any] | None:
    if quiet:
        return None
    from tqdm.auto import tqdm

    def make(total: int, desc: str, initial: int = 0) -> Any:
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="tile" if desc == "predict" else "band",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    return make
