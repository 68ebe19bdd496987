"""Many slides in one run: a list or a manifest in, one store per slide and a summary out.

One slide failing never stops the others; each result is recorded in
``summary.json`` and ``summary.csv`` in the output folder, rewritten (atomically;
in object storage each is put as one object) after every slide so that even a
killed batch leaves an honest account.  At the end ``report.html`` is written
beside them (:mod:`wsi_infer.report`).  The folder and the slides may be URLs
(:mod:`wsi_infer.location`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsi_infer.backends import Backend
from wsi_infer.engine import ProgressFactory, RunParams, RunSummary, run_slide
from wsi_infer.errors import (
    ManifestError,
    OutputExistsError,
    OutputWriteError,
    PlausibilityError,
    WsiInferError,
)
from wsi_infer.events import EventLog, ProgressEvents
from wsi_infer.files import atomic_write
from wsi_infer.location import RemotePath, StorePath, is_url, parse_location
from wsi_infer.objectlock import store_lock
from wsi_infer.store import is_wsi_infer_store, refuse_inside_store

__all__ = ["BatchItem", "SlideResult", "items_from_paths", "read_manifest", "run_batch"]

logger = logging.getLogger(__name__)

#: The batch folder's lock file, inside it.
BATCH_LOCK = "wsi-infer.lock"


@dataclass(frozen=True)
class BatchItem:
    slide: Path | RemotePath
    name: str
    mpp: float | None = None


@dataclass
class SlideResult:
    slide: str
    store: str
    status: str  # complete | skipped | failed
    nuclei: int | None
    seconds: float
    error: str | None
    tiles: int | None = None
    tiles_per_second: float | None = None
    #: Plausibility warnings, one line each (with --strict they fail the slide).
    warnings: list[str] = field(default_factory=list)


def _default_name(path: Path | RemotePath) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem or name


def items_from_paths(paths: Sequence[str | Path | RemotePath]) -> list[BatchItem]:
    """Batch items of slide paths or URLs, named after their files."""
    items = []
    for p in paths:
        where = parse_location(p)
        items.append(BatchItem(where, _default_name(where)))
    return items


def read_manifest(path: Path) -> list[BatchItem]:
    """A CSV with a ``path`` column and optional ``mpp`` and ``name`` columns.

    Relative paths are taken from the manifest's folder.
    """
    try:
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc})") from exc
    if not rows or "path" not in rows[0]:
        raise ManifestError(f"{path}: manifest needs a header with a 'path' column")
    items = []
    for n, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise ManifestError(f"{path}: line {n} has an empty path")
        slide: Path | RemotePath
        if is_url(raw):
            slide = parse_location(raw)
        else:
            slide = Path(raw) if Path(raw).is_absolute() else path.parent / raw
        mpp_text = (row.get("mpp") or "").strip()
        try:
            mpp = float(mpp_text) if mpp_text else None
        except ValueError:
            raise ManifestError(f"{path}: line {n}: mpp {mpp_text!r} is not a number") from None
        if mpp is not None and not mpp > 0:
            raise ManifestError(f"{path}: line {n}: mpp must be positive")
        name = (row.get("name") or "").strip() or _default_name(slide)
        items.append(BatchItem(slide, name, mpp))
    return items


def check_names(items: Sequence[BatchItem]) -> None:
    seen: dict[str, Path | RemotePath] = {}
    for item in items:
        if "/" in item.name or item.name in ("", ".", ".."):
            raise ManifestError(f"{item.slide}: output name {item.name!r} is not a file name")
        if item.name in seen:
            raise ManifestError(
                f"{item.slide}: output name {item.name!r} also used by {seen[item.name]}; "
                "give slides distinct names (manifest column 'name')"
            )
        seen[item.name] = item.slide


def _write_atomic(path: StorePath, text: str) -> None:
    if isinstance(path, RemotePath):  # one object, put whole
        path.write_text(text)
        return
    with atomic_write(path, ".tmp") as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_summary(out_dir: StorePath, results: Sequence[SlideResult]) -> None:
    rows = [asdict(r) for r in results]
    table = io.StringIO()
    writer = csv.DictWriter(
        table, fieldnames=list(SlideResult.__dataclass_fields__), lineterminator="\n"
    )
    writer.writeheader()
    # a list (the warnings) is one cell, its items joined by " | "
    writer.writerows(
        {k: " | ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()}
        for r in rows
    )
    try:
        _write_atomic(out_dir / "summary.json", json.dumps(rows, indent=2) + "\n")
        _write_atomic(out_dir / "summary.csv", table.getvalue())
    except OSError as exc:
        raise OutputWriteError(
            f"{out_dir}: cannot write the batch summary ({exc.strerror or exc}); "
            "give --out a writable folder"
        ) from exc


def prepare_batch_folder(out_dir: StorePath) -> None:
    """Make the batch's output folder, or say in one line why it cannot be one."""
    if isinstance(out_dir, RemotePath):
        is_file = out_dir.is_file()
    else:
        is_file = out_dir.exists() and not out_dir.is_dir()
    if is_file:
        raise OutputExistsError(
            f"{out_dir}: is a file; --out for several slides must be a folder (one NAME.zarr "
            "per slide goes in it)"
        )
    if is_wsi_infer_store(out_dir):
        raise OutputExistsError(
            f"{out_dir}: is a wsi-infer store; --out for several slides must be a folder"
        )
    refuse_inside_store(out_dir, "batch folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(
            f"{out_dir}: cannot create the output folder ({exc.strerror or exc}); "
            "give --out a writable folder"
        ) from exc


def run_one(
    slide: Path | RemotePath,
    store: StorePath,
    backend: Backend,
    params: RunParams,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    client: Any = None,
    log: EventLog | None = None,
    geojson: bool = False,
) -> RunSummary:
    """One slide, with its events logged (and its GeoJSON written); errors are logged, raised."""
    log = log or EventLog(None)
    log.emit("slide_started", slide=str(slide), store=str(store))

    def tracked(total: int, stage: str, initial: int = 0) -> ProgressEvents:
        bar = progress(total, stage, initial=initial) if progress else None
        return ProgressEvents(bar, log, str(slide), stage, total, initial)

    try:
        summary = run_slide(
            slide, store, backend, params, overwrite=overwrite, progress=tracked, client=client
        )
        if geojson:
            write_geojson_beside(store, summary.status == "skipped", overwrite)
    except WsiInferError as exc:
        log.emit("slide_failed", slide=str(slide), error=str(exc))
        raise
    for warning in summary.warnings:
        log.emit("slide_warning", slide=str(slide), store=str(store), warning=warning)
    log.emit(
        "slide_skipped" if summary.status == "skipped" else "slide_finished",
        slide=str(slide),
        store=str(store),
        nuclei=summary.nuclei,
        tiles=summary.tiles,
        seconds=round(summary.seconds, 3),
        warnings=len(summary.warnings),
    )
    return summary


def strict_error(slide: Path | RemotePath, warnings: Sequence[str]) -> PlausibilityError:
    """The failure ``--strict`` makes of a result with plausibility warnings."""
    more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
    return PlausibilityError(
        f"{slide}: implausible result, failed because of --strict: {warnings[0]}{more}"
    )


def run_batch(
    items: Sequence[BatchItem],
    out_dir: StorePath,
    backend: Backend,
    params: RunParams,
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    client: Any = None,
    log: EventLog | None = None,
    geojson: bool = False,
    strict: bool = False,
    report: bool = True,
) -> list[SlideResult]:
    """Run every slide into ``out_dir/NAME.zarr``; failures are recorded, not raised.

    The folder is locked for the batch (``FOLDER/wsi-infer.lock``), each store
    for its slide's run (``NAME.zarr.lock``).  ``strict`` fails slides whose
    results have plausibility warnings; ``report`` writes ``report.html`` at the end.
    """
    check_names(items)
    prepare_batch_folder(out_dir)
    with store_lock(out_dir, path=out_dir / BATCH_LOCK):
        results = _run_items(
            items,
            out_dir,
            backend,
            params,
            overwrite=overwrite,
            progress=progress,
            client=client,
            log=log or EventLog(None),
            geojson=geojson,
            strict=strict,
        )
        if report:
            write_batch_report(out_dir, results)
    return results


def write_batch_report(out_dir: StorePath, results: Sequence[SlideResult]) -> None:
    """``report.html`` beside the summaries; a failure to make it is logged, never fatal."""
    from wsi_infer.report import write_report

    try:
        write_report(out_dir, results)
    except (WsiInferError, OSError) as exc:
        logger.warning("%s: cannot write report.html (%s)", out_dir, exc)


def _run_items(
    items: Sequence[BatchItem],
    out_dir: StorePath,
    backend: Backend,
    params: RunParams,
    *,
    overwrite: bool,
    progress: ProgressFactory | None,
    client: Any,
    log: EventLog,
    geojson: bool,
    strict: bool = False,
) -> list[SlideResult]:
    write_summary(out_dir, [])  # a folder that cannot take the summary fails now, not at the end
    log.emit("batch_started", slides=len(items), out=str(out_dir))
    results: list[SlideResult] = []
    for item in items:
        store = out_dir / f"{item.name}.zarr"
        slide_params = dataclasses.replace(params, mpp=item.mpp) if item.mpp else params
        t0 = time.perf_counter()
        try:
            summary = run_one(
                item.slide,
                store,
                backend,
                slide_params,
                overwrite=overwrite,
                progress=progress,
                client=client,
                log=log,
                geojson=geojson,
            )
        except WsiInferError as exc:
            error: str | None = str(exc)
        except Exception as exc:  # a bug must not stop the batch, but it is reported in full
            logger.exception("%s: unexpected error", item.slide)
            error = f"{item.slide}: internal error: {type(exc).__name__}: {exc}"
            log.emit("slide_failed", slide=str(item.slide), error=error)
        else:
            status = "skipped" if summary.status == "skipped" else "complete"
            error = None
            if strict and summary.warnings:
                status, error = "failed", str(strict_error(item.slide, summary.warnings))
                log.emit("slide_failed", slide=str(item.slide), error=error)
            results.append(
                SlideResult(
                    str(item.slide),
                    str(store),
                    status,
                    summary.nuclei,
                    round(summary.seconds, 3),
                    error,
                    summary.tiles,
                    round(summary.tiles_per_second, 3) if summary.seconds > 0 else None,
                    list(summary.warnings),
                )
            )
            write_summary(out_dir, results)
            continue
        seconds = round(time.perf_counter() - t0, 3)
        results.append(SlideResult(str(item.slide), str(store), "failed", None, seconds, error))
        write_summary(out_dir, results)
    failed = sum(r.status == "failed" for r in results)
    log.emit("batch_finished", slides=len(results), failed=failed)
    return results


def write_geojson_beside(store: StorePath, skipped: bool, overwrite: bool) -> StorePath:
    """``NAME.geojson`` beside ``NAME.zarr``; kept as it is when the store was already complete."""
    from wsi_infer.geojson import export_geojson

    out = store.with_suffix(".geojson")
    if not (skipped and out.exists()):
        export_geojson(store, out, overwrite=overwrite)
    return out
