"""``wsi-infer report RESULTS_DIR``: rebuild a batch's ``report.html`` from its summary."""

from __future__ import annotations

import click

from wsi_infer.cli.common import fail


@click.command("report")
@click.argument("results", type=str)
@click.option(
    "--out",
    "-o",
    "out",
    type=str,
    help="Where to write the page [default: RESULTS/report.html]. A path or URL.",
)
@click.option(
    "--no-pictures",
    is_flag=True,
    help="Leave out the overlay pictures (they need the slides; the page gets smaller).",
)
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
def report(results: str, out: str | None, no_pictures: bool, quiet: bool) -> None:
    """Write report.html for the batch folder RESULTS (a path or URL) from its summary.json:
    per slide the overlay, nuclei per class and density, time, status, errors and
    plausibility warnings; plots across slides.  One self-contained file (no network)."""
    from wsi_infer.errors import WsiInferError
    from wsi_infer.report import read_summary, write_report

    try:
        from wsi_infer.location import parse_location

        folder = parse_location(results)
        rows = read_summary(folder)
        target = write_report(folder, rows, out=out, pictures=not no_pictures)
    except WsiInferError as exc:
        fail(str(exc))
    if not quiet:
        click.echo(f"{target}: report of {len(rows)} slides")
