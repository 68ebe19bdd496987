"""The ``wsi-infer`` command: a thin layer over the library; heavy imports happen in commands.

``wsi-infer SLIDE --out result.zarr`` runs inference (the ``run`` command is the
default); other commands are named: ``wsi-infer inspect result.zarr``.
"""

from __future__ import annotations

from typing import Any

import click

from wsi_infer import __version__
from wsi_infer.cli.export import export
from wsi_infer.cli.inspect import inspect
from wsi_infer.cli.report import report
from wsi_infer.cli.run import run

__all__ = ["main"]


class _DefaultToRun(click.Group):
    """A group whose first argument, when not a command's name, is a slide for ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "SLIDE --out RESULT.zarr [OPTIONS] | COMMAND ...")


@click.group(cls=_DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-infer")
def main(**_: Any) -> None:
    """Find, outline and classify every nucleus of a whole-slide image.

    \b
    wsi-infer SLIDE --out result.zarr     process a slide (see: wsi-infer run --help)
    """
    import logging

    # The command, not the library, decides what reaches the terminal: errors are reported
    # as one line each by the commands, and libraries' log records stay quiet unless a
    # command is run with --verbose.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


main.add_command(run)
main.add_command(export)
main.add_command(inspect)
main.add_command(report)
