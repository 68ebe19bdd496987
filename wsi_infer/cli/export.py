"""``wsi-infer export geojson|overlay result.zarr ...``: results people can look at."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_infer.cli.common import fail, overwrite_option


@click.group("export")
def export() -> None:
    """Export a result store: nucleus outlines as GeoJSON, QC overlay pictures."""


@export.command("geojson")
@click.argument("store", type=str)
@click.argument("out", type=str)
@click.option(
    "--gzip",
    "compress",
    is_flag=True,
    default=None,
    help="Gzip the file (the default when OUT ends in .gz).",
)
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
def geojson(store: str, out: str, compress: bool | None, overwrite: bool, quiet: bool) -> None:
    """Write every nucleus of STORE as a GeoJSON Feature (QuPath detections) to OUT.

    STORE and OUT may be paths or URLs (s3://, gs://, az://).

    Outlines follow pixel edges, in slide level-0 pixel coordinates; a nucleus in
    several pieces is a MultiPolygon.
    """
    from wsi_infer.errors import WsiInferError
    from wsi_infer.geojson import export_geojson

    try:
        summary = export_geojson(store, out, compress=compress or None, overwrite=overwrite)
    except WsiInferError as exc:
        fail(str(exc))
    if not quiet:
        click.echo(summary.line())


@export.command("overlay")
@click.argument("store", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for NAME.overlay.png and NAME.overlay_zoom.png, NAME being STORE's name "
    "without .zarr (default: beside STORE).",
)
@click.option(
    "--slide",
    type=click.Path(path_type=Path),
    help="The slide, when it is no longer where the store says.",
)
@click.option(
    "--max-size",
    default=2048,
    show_default=True,
    type=click.IntRange(min=64),
    help="Longest side of the overview in pixels.",
)
@click.option(
    "--zoom-size",
    default=512,
    show_default=True,
    type=click.IntRange(min=32),
    help="Edge of the zoom in model-resolution pixels.",
)
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
def overlay(
    store: Path,
    out_dir: Path | None,
    slide: Path | None,
    max_size: int,
    zoom_size: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Draw STORE's nuclei (class colours) and tissue outline over the slide, plus a zoom."""
    from wsi_infer.errors import WsiInferError
    from wsi_infer.overlay import write_overlay

    # one name scheme, beside the store or in a folder several stores' overlays may share
    stem = store.name.removesuffix(".zarr") or "result"
    folder = store.parent if out_dir is None else out_dir
    paths = (folder / f"{stem}.overlay.png", folder / f"{stem}.overlay_zoom.png")
    try:
        result = write_overlay(
            store,
            *paths,
            slide_path=slide,
            max_size=max_size,
            zoom_size=zoom_size,
            overwrite=overwrite,
        )
    except WsiInferError as exc:
        fail(str(exc))
    if not quiet:
        h, w = result.overview.shape[:2]
        x0, y0, x1, y1 = result.zoom_box_level0
        click.echo(
            f"{paths[0]}: {w} x {h} px at {result.overview_mpp:.3g} µm/px; {paths[1]}: "
            f"{result.zoom_nuclei} nuclei in level-0 [{x0}:{x1}, {y0}:{y1}]"
        )
