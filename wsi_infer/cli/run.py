"""``wsi-infer run SLIDE... --out OUT`` (also ``wsi-infer SLIDE... --out OUT``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from wsi_infer.options import RunOptions, run_option_decorators

if TYPE_CHECKING:
    from wsi_infer.batch import BatchJob

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
@run_option_decorators
@overwrite_option
@quiet_option
@verbose_option
def run(
    slides: tuple[str, ...],
    out_text: str,
    manifest: Path | None,
    overwrite: bool,
    quiet: bool,
    **given: Any,
) -> None:
    """Segment and classify every nucleus of each SLIDE into zarr stores.

    A run interrupted at any point (even killed) is finished by the same command:
    tiles already predicted and slides already complete are not redone.  Slides
    and --out may be URLs of object storage (s3://, gs://, az://).
    """
    from wsi_infer.errors import ParameterError, WsiInferError

    try:
        out = parse_location(out_text)
        sources = [parse_location(s) for s in slides]
        options = RunOptions(**given)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    if manifest is not None and slides:
        raise click.UsageError("give slides or --manifest, not both")
    if manifest is None and not sources:
        raise click.UsageError("no slide given (SLIDE... or --manifest)")
    single = manifest is None and len(sources) == 1 and out.suffix == ".zarr"
    if not single and out.suffix == ".zarr":
        raise click.UsageError("several slides need --out to be a folder, not NAME.zarr")

    from wsi_infer.model import model_config

    try:
        config = model_config(options.model)
    except WsiInferError as exc:
        fail(str(exc))
    try:
        params = options.params(config)
    except ParameterError as exc:
        raise click.UsageError(str(exc)) from exc

    from wsi_infer.batch import BatchJob
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
                resolve_mpp(opened, options.mpp)
        else:
            from wsi_infer.batch import prepare_batch_folder

            prepare_batch_folder(out)
        if options.scheduler is not None:
            from wsi_infer.cluster import check_address

            check_address(options.scheduler)
        with (
            EventLog(options.log_json) as log,
            dask_client(
                scheduler=options.scheduler,
                workers=options.processes,
                threads=options.threads,
                gpu=options.device == "cuda",
            ) as client,
        ):
            recipe = BackendRecipe.for_run(
                options.backend, options.model, params, device=options.device
            )
            job = BatchJob(
                recipe.build(),
                options,
                overwrite=overwrite,
                progress=progress,
                client=client,
                log=log,
            )
            if single:
                _run_one(job, sources[0], out, quiet)
            else:
                _run_many(job, sources, manifest, out, quiet)
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


def _warn(source: Any, warnings: list[str]) -> None:
    """Plausibility warnings, one line each on stderr (also with --quiet)."""
    for w in warnings:
        click.echo(f"wsi-infer: warning: {source}: {w}", err=True)


def _run_one(job: BatchJob, slide: Any, out: Any, quiet: bool) -> None:
    from wsi_infer.batch import run_one, strict_error

    summary = run_one(slide, out, job)
    if not quiet:
        click.echo(summary.line())
    _warn(slide, summary.warnings)
    if job.options.strict and summary.warnings:
        raise strict_error(slide, summary.warnings)


def _run_many(
    job: BatchJob, slides: list[Any], manifest: Path | None, out: Any, quiet: bool
) -> None:
    from wsi_infer.batch import items_from_paths, read_manifest, run_batch

    items = read_manifest(manifest) if manifest is not None else items_from_paths(slides)
    results = run_batch(items, out, job)
    failed = [r for r in results if r.status == "failed"]
    if not quiet:
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
