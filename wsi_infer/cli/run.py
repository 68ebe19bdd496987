"""``wsi-infer run SLIDE... --out OUT`` (also ``wsi-infer SLIDE... --out OUT``)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from wsi_infer.cli.common import (
    fail,
    overwrite_option,
    quiet_option,
    tqdm_progress,
    verbose_option,
)
from wsi_infer.errors import one_line_error
from wsi_infer.location import parse_location

logger = logging.getLogger(__name__)

#: Exit status of a batch in which some slides failed (1 is a fatal error, 2 a usage error).
EXIT_SOME_FAILED = 3


@click.command("run")
@click.argument("slides", nargs=-1, type=str)
@click.option(
    "--out",
    "-o",
    "out_text",
    required=True,
    type=str,
    help="One slide: the store to write (NAME.zarr). Several: a folder for NAME.zarr "
    "stores, summary.json/.csv and report.html. A path or a URL (s3://bucket/prefix/, "
    "gs://, az://; credentials from the cloud SDK's environment).",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="CSV of slides to run (columns: path, optional mpp and name).",
)
@click.option(
    "--model",
    "-m",
    default="default",
    show_default=True,
    help="Bundled model name, checkpoint directory, or exported MODEL.onnx (run by onnxruntime).",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="Inference backend: torch, onnxruntime, tensorrt, or auto (the fastest "
    "available on the device: onnxruntime on CPU).",
)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option(
    "--batch-size",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tiles per model call (raise it on a GPU).",
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=64),
    help="Model input edge in pixels [default: the model's own, from its config]. A "
    "multiple of 32, and of the model's attention window if it has one.",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    help="Pixels of context shared by neighbouring tiles, even [default: the model's own].",
)
@click.option(
    "--foreground-threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Nucleus probability above which a pixel is nucleus [default: the model's own].",
)
@click.option(
    "--marker-threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Distance-map level above which a nucleus' core starts; higher splits more "
    "[default: the model's own].",
)
@click.option(
    "--min-area",
    "min_area_um2",
    type=click.FloatRange(min=0),
    help="Smallest nucleus kept, in µm² [default: the model's own].",
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
    help="Threads reading tiles and post-processing beside the model (per worker).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Start a local dask cluster of this many worker processes.",
)
@click.option("--scheduler", help="Run on an existing dask cluster (tcp://HOST:PORT).")
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
@click.option(
    "--geojson",
    is_flag=True,
    help="Also write each store's nuclei as NAME.geojson beside it (QuPath).",
)
@click.option(
    "--log-json",
    type=click.Path(path_type=Path),
    help="Append one JSON line per event (started, progress, finished, failed).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail slides whose results get plausibility warnings (wrong --mpp, no tissue, "
    "...), instead of only warning.",
)
@overwrite_option
@quiet_option
@verbose_option
def run(
    slides: tuple[str, ...],
    out_text: str,
    manifest: Path | None,
    model: str,
    backend: str,
    device: str,
    batch_size: int,
    tile_size: int | None,
    overlap: int | None,
    foreground_threshold: float | None,
    marker_threshold: float | None,
    min_area_um2: float | None,
    mpp: float | None,
    threads: int,
    workers: int | None,
    scheduler: str | None,
    no_tissue_mask: bool,
    tissue_mpp: float,
    tissue_threshold: float | None,
    geojson: bool,
    log_json: Path | None,
    strict: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Segment and classify every nucleus of each SLIDE into zarr stores.

    A run interrupted at any point (even killed) is finished by the same command:
    tiles already predicted and slides already complete are not redone.  Slides
    and --out may be URLs of object storage (s3://, gs://, az://).
    """
    from wsi_infer.errors import WsiInferError
    from wsi_infer.tissue import TissueParams

    try:
        out = parse_location(out_text)
        sources = [parse_location(s) for s in slides]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    if no_tissue_mask and tissue_threshold is not None:
        raise click.UsageError("--no-tissue-mask and --tissue-threshold are mutually exclusive")
    if workers is not None and scheduler is not None:
        raise click.UsageError("--workers and --scheduler are mutually exclusive")
    if manifest is not None and slides:
        raise click.UsageError("give slides or --manifest, not both")
    if manifest is None and not sources:
        raise click.UsageError("no slide given (SLIDE... or --manifest)")
    single = manifest is None and len(sources) == 1 and out.suffix == ".zarr"
    if not single and out.suffix == ".zarr":
        raise click.UsageError("several slides need --out to be a folder, not NAME.zarr")

    from wsi_infer.engine import RunParams
    from wsi_infer.model import model_config

    try:
        config = model_config(model)
    except WsiInferError as exc:
        fail(str(exc))
    try:
        tissue = TissueParams(
            enabled=not no_tissue_mask, mpp=tissue_mpp, saturation_threshold=tissue_threshold
        )
        params = RunParams.for_model(
            config,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            mpp=mpp,
            workers=threads,
            tissue=tissue,
            foreground_threshold=foreground_threshold,
            marker_threshold=marker_threshold,
            min_area_um2=min_area_um2,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    from wsi_infer.cluster import dask_client
    from wsi_infer.events import EventLog
    from wsi_infer.recipe import BackendRecipe

    progress = tqdm_progress(quiet)
    try:
        # a bad slide or output is reported before any model is loaded (or exported)
        if single:
            from wsi_infer.reader import open_slide, resolve_mpp
            from wsi_infer.staging import local_slide

            with open_slide(local_slide(sources[0])[0]) as opened:
                resolve_mpp(opened, mpp)
        else:
            from wsi_infer.batch import prepare_batch_folder

            prepare_batch_folder(out)
        if scheduler is not None:
            from wsi_infer.cluster import check_address

            check_address(scheduler)
        with (
            EventLog(log_json) as log,
            dask_client(
                scheduler=scheduler, workers=workers, threads=threads, gpu=device == "cuda"
            ) as client,
        ):
            job = _Job(
                engine=BackendRecipe.for_run(backend, model, params, device=device).build(),
                params=params,
                overwrite=overwrite,
                progress=progress,
                client=client,
                log=log,
                quiet=quiet,
                geojson=geojson,
                strict=strict,
            )
            if single:
                _run_one(job, sources[0], out)
            else:
                _run_many(job, sources, manifest, out)
    except WsiInferError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"{out}: interrupted; run the same command again to resume", 130)
    except Exception as exc:  # a bug: one line here, the traceback with --verbose
        logger.exception("internal error")
        fail(
            f"{out}: internal error: {type(exc).__name__}: {exc}; please report it "
            "(--verbose shows the traceback)"
        )


@dataclass
class _Job:
    engine: Any
    params: Any
    overwrite: bool
    progress: Any
    client: Any
    log: Any
    quiet: bool
    geojson: bool
    strict: bool = False

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``run_one`` and ``run_batch``."""
        return {
            "overwrite": self.overwrite,
            "progress": self.progress,
            "client": self.client,
            "log": self.log,
            "geojson": self.geojson,
        }


def _warn(source: Any, warnings: list[str]) -> None:
    """Plausibility warnings, one line each on stderr (also with --quiet)."""
    for w in warnings:
        click.echo(f"wsi-infer: warning: {source}: {w}", err=True)


def _run_one(job: _Job, slide: Any, out: Any) -> None:
    from wsi_infer.batch import run_one, strict_error

    summary = run_one(slide, out, job.engine, job.params, **job.options())
    if not job.quiet:
        click.echo(summary.line())
    _warn(slide, summary.warnings)
    if job.strict and summary.warnings:
        raise strict_error(slide, summary.warnings)


def _run_many(job: _Job, slides: list[Any], manifest: Path | None, out: Any) -> None:
    from wsi_infer.batch import items_from_paths, read_manifest, run_batch

    items = read_manifest(manifest) if manifest is not None else items_from_paths(slides)
    results = run_batch(items, out, job.engine, job.params, strict=job.strict, **job.options())
    failed = [r for r in results if r.status == "failed"]
    if not job.quiet:
        names = [parse_location(r.slide).name for r in results]
        width = max(len(n) for n in names)
        click.echo(
            f"{'slide':<{width}}  {'status':<8}  {'nuclei':>8}  {'seconds':>8}  {'warnings':>8}"
        )
        for name, r in zip(names, results, strict=True):
            nuclei = "" if r.nuclei is None else str(r.nuclei)
            click.echo(
                f"{name:<{width}}  {r.status:<8}  {nuclei:>8}  {r.seconds:>8.1f}  "
                f"{len(r.warnings) or '':>8}"
            )
        click.echo(
            f"{len(results) - len(failed)} of {len(results)} slides done; "
            f"summary in {out / 'summary.json'}, report in {out / 'report.html'}"
        )
    for r in results:
        if r.status != "failed":
            _warn(r.slide, r.warnings)
    for r in failed:
        click.echo(one_line_error("wsi-infer", r.error), err=True)
    if failed:
        sys.exit(EXIT_SOME_FAILED)
