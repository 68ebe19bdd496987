"""``wsi-infer run SLIDE --out result.zarr`` (also ``wsi-infer SLIDE --out ...``)."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_infer.cli.common import fail, overwrite_option, quiet_option, tqdm_progress


@click.command("run")
@click.argument("slide", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="The zarr store to write (a directory ending in .zarr).",
)
@click.option(
    "--model",
    "-m",
    default="default",
    show_default=True,
    help="Bundled model name or checkpoint directory.",
)
@click.option("--backend", default="torch", show_default=True, help="Inference backend.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--tile-size",
    default=512,
    show_default=True,
    type=click.IntRange(min=64),
    help="Model input edge in pixels (a multiple of 32).",
)
@click.option(
    "--overlap",
    default=64,
    show_default=True,
    type=click.IntRange(min=0),
    help="Pixels of context shared by neighbouring tiles (even).",
)
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    help="Slide resolution in micrometres per pixel (overrides the metadata).",
)
@click.option(
    "--threads",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Threads reading tiles and post-processing beside the model.",
)
@click.option("--no-tissue-mask", is_flag=True, help="Process the whole slide, glass included.")
@click.option(
    "--tissue-mpp",
    default=8.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Resolution of tissue detection.",
)
@click.option(
    "--tissue-threshold",
    type=click.FloatRange(0, 1),
    help="Saturation above which a pixel is tissue (default: Otsu).",
)
@overwrite_option
@quiet_option
def run(
    slide: Path,
    out: Path,
    model: str,
    backend: str,
    device: str,
    batch_size: int,
    tile_size: int,
    overlap: int,
    mpp: float | None,
    threads: int,
    no_tissue_mask: bool,
    tissue_mpp: float,
    tissue_threshold: float | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Segment and classify every nucleus of SLIDE into the zarr store --out."""
    from wsi_infer.backends import create_backend
    from wsi_infer.engine import RunParams, run_slide
    from wsi_infer.errors import WsiInferError
    from wsi_infer.tissue import TissueParams

    if no_tissue_mask and tissue_threshold is not None:
        raise click.UsageError("--no-tissue-mask and --tissue-threshold are mutually exclusive")
    try:
        params = RunParams(
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            mpp=mpp,
            workers=threads,
            tissue=TissueParams(
                enabled=not no_tissue_mask, mpp=tissue_mpp, saturation_threshold=tissue_threshold
            ),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        engine = create_backend(backend, model, device=device)
        summary = run_slide(
            slide, out, engine, params, overwrite=overwrite, progress=tqdm_progress(quiet)
        )
    except WsiInferError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"{out}: interrupted; the store is incomplete", 130)
    if not quiet:
        click.echo(summary.line())
