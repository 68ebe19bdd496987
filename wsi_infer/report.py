"""``report.html``: a batch's results as one self-contained page people can look at.

Written beside ``summary.json`` after every batch, and rebuilt from it by
``wsi-infer report RESULTS_DIR``.  One file, no network: pictures are PNG data
URIs, plots are inline SVG drawn here (no plotting library, no script), styles
are inline, so it opens offline in any browser and can be mailed or archived.

Per slide: status (and the error of a failure), plausibility warnings, the
overlay (nuclei in class colours over the slide's thumbnail, tissue outline) and
its zoom, nuclei per class with their density per mm² of tissue, tissue area,
run time, tiles and tiles/s.  For the batch: class composition across slides,
the distribution of nucleus density (with the plausible range) and the time per
slide.  A slide whose store cannot be read or verified, or whose slide file is
gone (the overlay needs it), gets a one-line notice in place of what is missing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_infer import __version__
from wsi_infer.errors import IncompleteStoreError, OutputWriteError, WsiInferError
from wsi_infer.location import StorePath, parse_location

__all__ = ["REPORT_NAME", "SlideEntry", "build_report", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"
#: Longest side of the overview picture embedded per slide, in pixels.
THUMB_SIZE = 560
#: Edge of the zoom picture, in model-resolution pixels.
ZOOM_SIZE = 256


@dataclass
class SlideEntry:
    """What the report shows of one slide."""

    name: str
    slide: str
    store: str
    status: str
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    nuclei: int | None = None
    seconds: float | None = None
    tiles: int | None = None
    tiles_per_second: float | None = None
    tissue_mm2: float | None = None
    density: float | None = None
    mean_area: float | None = None
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    mpp: str = ""
    overview_png: bytes | None = None
    zoom_png: bytes | None = None
    notices: list[str] = field(default_factory=list)


def _png(image: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _store_name(store: str) -> str:
    name = parse_location(store).name
    return name.removesuffix(".zarr") or name


def _entry(row: dict[str, Any], pictures: bool) -> SlideEntry:
    """One slide's entry from its summary row and, when it has one, its store."""
    from wsi_infer.store import open_result
    from wsi_infer.storeinfo import StoreInfo

    e = SlideEntry(
        name=_store_name(str(row.get("store", ""))) or Path(str(row.get("slide"))).name,
        slide=str(row.get("slide", "")),
        store=str(row.get("store", "")),
        status=str(row.get("status", "?")),
        error=row.get("error"),
        warnings=[str(w) for w in row.get("warnings") or []],
        nuclei=row.get("nuclei"),
        seconds=row.get("seconds"),
        tiles=row.get("tiles"),
        tiles_per_second=row.get("tiles_per_second"),
    )
    if e.status == "failed" and e.nuclei is None:
        return e
    try:
        root = open_result(e.store)
    except (WsiInferError, OSError) as exc:
        e.notices.append(f"store not shown: {exc}")
        return e
    info = StoreInfo.read(root, e.store)
    stats = info.statistics
    if stats is not None:
        e.tissue_mm2 = stats.tissue_area_mm2
        e.density = stats.density_per_mm2
        e.mean_area = stats.mean_area_um2
        e.classes = {n: c.to_dict() for n, c in stats.classes.items()}
    model = info.model
    e.colours = {
        n: (c[0], c[1], c[2]) for n, c in zip(model.class_names, model.class_colours, strict=False)
    }
    slide = info.slide
    e.mpp = f"{float(slide.mpp):.4g} µm/px from {slide.mpp_source or '?'}"
    if not e.warnings:
        e.warnings = info.warning_lines
    if e.tiles is None:
        e.tiles = info.tiles
    if not e.seconds:  # skipped in this batch: the run that made it
        e.seconds = info.seconds
        if e.seconds:
            e.notices.append("time and speed of the earlier run that made the store")
            e.tiles_per_second = (e.tiles or 0) / e.seconds if e.seconds else None
    if pictures:
        _pictures(e, root, slide.path)
    return e


def _pictures(e: SlideEntry, root: Any, slide_path: str) -> None:
    from wsi_infer.overlay import render_overlay
    from wsi_infer.staging import local_slide

    try:
        local, _ = local_slide(slide_path)
        picture = render_overlay(root, slide_path=local, max_size=THUMB_SIZE, zoom_size=ZOOM_SIZE)
    except (WsiInferError, OSError) as exc:
        e.notices.append(f"no overlay: {exc}")
        return
    e.overview_png = _png(picture.overview)
    e.zoom_png = _png(picture.zoom)


def read_summary(out_dir: StorePath) -> list[dict[str, Any]]:
    """The rows of ``summary.json`` in a results folder (a path or URL)."""
    path = out_dir / SUMMARY_NAME
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IncompleteStoreError(
            f"{path}: no batch summary here; give the folder a batch wrote (--out)"
        ) from None
    except (OSError, ValueError) as exc:
        raise IncompleteStoreError(f"{path}: cannot read the batch summary ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise IncompleteStoreError(f"{path}: not a wsi-infer batch summary (a list of slides)")
    return rows


# ----------------------------------------------------------------------------- plots (SVG)


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _rgb(c: Sequence[int]) -> str:
    return f"rgb({int(c[0])},{int(c[1])},{int(c[2])})"


def _bar_svg(
    rows: list[tuple[str, list[tuple[float, str, str]]]],
    *,
    unit: str,
    total: float | None = None,
    band: tuple[float, float] | None = None,
    log: bool = False,
) -> str:
    """Horizontal (stacked) bars: per row, segments of (value, colour, title)."""
    label_w, width, bar_h, gap = 124, 240, 16, 6
    values = [sum(v for v, _, _ in segs) for _, segs in rows]
    top = total if total is not None else max([*values, 1e-9])
    if log:
        positive = [v for v in values if v > 0] + ([band[0], band[1]] if band else [])
        lo_v = 10 ** math.floor(math.log10(min(positive))) if positive else 1.0
        hi_v = 10 ** math.ceil(math.log10(max(positive))) if positive else 10.0
        hi_v = max(hi_v, lo_v * 10)

        def x(v: float) -> float:
            v = max(v, lo_v)
            return (
                width * (math.log10(v) - math.log10(lo_v)) / (math.log10(hi_v) - math.log10(lo_v))
            )

    else:

        def x(v: float) -> float:
            return width * v / top if top > 0 else 0.0

    h = len(rows) * (bar_h + gap) + 30
    out = [
        f'<svg width="{label_w + width + 70}" height="{h}" '
        f'role="img" font-family="sans-serif" font-size="11">'
    ]
    if band is not None:
        x0, x1 = x(band[0]), x(band[1])
        out.append(
            f'<rect x="{label_w + x0:.1f}" y="0" width="{x1 - x0:.1f}" height="{h - 24}" '
            'fill="#e8f4e8"><title>plausible range</title></rect>'
        )
    for k, (label, segs) in enumerate(rows):
        y = k * (bar_h + gap)
        short = label if len(label) <= 18 else label[:17] + "…"
        out.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 4}" text-anchor="end">{_esc(short)}'
            f"<title>{_esc(label)}</title></text>"
        )
        pos = 0.0
        for v, colour, title in segs:
            if log and len(segs) == 1:
                w, start = x(v), 0.0
            else:
                start, w = x(pos), x(pos + v) - x(pos)
            out.append(
                f'<rect x="{label_w + start:.1f}" y="{y}" width="{max(w, 0):.1f}" '
                f'height="{bar_h}" fill="{colour}" stroke="#333" stroke-width="0.3">'
                f"<title>{_esc(title)}</title></rect>"
            )
            pos += v
        value = values[k]
        text = f"{value:,.0f}" if unit != "%" else ""
        if text:
            out.append(
                f'<text x="{label_w + x(value) + 4:.1f}" y="{y + bar_h - 4}">{text}'
                f"{' ' + unit if len(unit) <= 2 else ''}</text>"
            )
    axis_y = len(rows) * (bar_h + gap) + 12
    ticks = (
        [lo_v * 10**i for i in range(round(math.log10(hi_v / lo_v)) + 1)]
        if log
        else _nice_ticks(top)
    )
    for t in ticks:
        out.append(
            f'<text x="{label_w + x(t):.1f}" y="{axis_y}" text-anchor="middle" '
            f'fill="#555">{t:,.6g}</text>'
        )
    out.append(
        f'<text x="{label_w + width / 2}" y="{axis_y + 14}" text-anchor="middle" '
        f'fill="#555">{_esc(unit)}{" (log scale)" if log else ""}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def _nice_ticks(top: float) -> list[float]:
    """0 and round steps (1, 2 or 5 times a power of ten) up to ``top``."""
    if top <= 0:
        return [0.0]
    step = 10 ** math.floor(math.log10(top / 4))
    for m in (1, 2, 5, 10):
        if top / (step * m) <= 5:
            step *= m
            break
    return [k * step for k in range(int(top / step + 1e-9) + 1)]


def _composition_svg(entries: list[SlideEntry]) -> str:
    rows = []
    for e in entries:
        total = sum(int(c.get("count", 0)) for c in e.classes.values())
        segs = [
            (
                100 * int(c.get("count", 0)) / total,
                _rgb(e.colours.get(name, (255, 255, 255))),
                f"{name}: {c.get('count')} ({100 * int(c.get('count', 0)) / total:.1f} %)",
            )
            for name, c in e.classes.items()
            if total
        ]
        rows.append((e.name, segs))
    return _bar_svg(rows, unit="%", total=100.0)


def _density_svg(entries: list[SlideEntry]) -> str:
    from wsi_infer.plausibility import DENSITY_RANGE

    rows = [
        (e.name, [(float(e.density), "#4a78b5", f"{e.density:.0f} nuclei per mm²")])
        for e in entries
        if e.density
    ]
    return _bar_svg(rows, unit="per mm² of tissue", band=DENSITY_RANGE, log=True)


def _time_svg(entries: list[SlideEntry]) -> str:
    rows = []
    for e in entries:
        tps = f", {e.tiles_per_second:.2f} tiles/s" if e.tiles_per_second else ""
        colour = "#c0504d" if e.status == "failed" else "#8064a2"
        rows.append((e.name, [(float(e.seconds or 0), colour, f"{e.seconds or 0:.1f} s{tps}")]))
    return _bar_svg(rows, unit="s")


# ------------------------------------------------------------------------------- the page

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;
max-width:1360px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ccc}
.meta{color:#555;font-size:13px}.plots{display:flex;flex-wrap:wrap;gap:18px}
.plot{border:1px solid #ddd;border-radius:6px;padding:8px 10px}.plot h3{font-size:14px;margin:0 0 6px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}
.slide{border:1px solid #ccc;border-radius:8px;padding:12px;margin:14px 0;display:flex;gap:16px;
flex-wrap:wrap}.slide h3{margin:0 0 6px;font-size:16px}.pics{display:flex;gap:8px;align-items:flex-start}
.pics img{border:1px solid #999;max-width:560px}.badge{display:inline-block;padding:1px 8px;
border-radius:10px;font-size:12px;color:#fff;margin-left:6px}.complete{background:#3a873a}
.skipped{background:#5b7fa8}.failed{background:#b33a3a}.warn{background:#fff4d6;border:1px solid
#e0b040;border-radius:4px;padding:6px 8px;margin:6px 0;font-size:13px}.err{background:#fde8e8;
border:1px solid #d66;border-radius:4px;padding:6px 8px;font-size:13px;font-family:monospace;
white-space:pre-wrap;word-break:break-word;max-width:900px}.notice{color:#777;font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;border:1px solid #333;margin-right:4px}
.facts td{text-align:left;border:none;padding:1px 8px 1px 0}
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _slide_html(e: SlideEntry) -> str:
    parts = [
        '<div class="slide"><div>',
        f'<h3 id="{_esc(e.name)}">{_esc(e.name)}<span class="badge {_esc(e.status)}">'
        f"{_esc(e.status)}</span></h3>",
        f'<div class="meta">{_esc(e.slide)}<br>{_esc(e.store)}</div>',
    ]
    if e.error:
        parts.append(f'<div class="err">{_esc(e.error)}</div>')
    for w in e.warnings:
        parts.append(f'<div class="warn">&#9888; {_esc(w)}</div>')
    facts = [
        ("nuclei", _num(e.nuclei, "d") if isinstance(e.nuclei, int) else _num(e.nuclei, "")),
        ("tissue", f"{_num(e.tissue_mm2, '.3f')} mm²"),
        ("density", f"{_num(e.density, '.0f')} nuclei per mm² of tissue"),
        ("mean area", f"{_num(e.mean_area, '.1f')} µm²"),
        ("resolution", e.mpp or "-"),
        ("run time", f"{_num(e.seconds, '.1f')} s"),
        (
            "tiles",
            f"{_num(e.tiles, 'd') if e.tiles is not None else '-'}, "
            f"{_num(e.tiles_per_second, '.2f')} tiles/s",
        ),
    ]
    if e.status != "failed" or e.nuclei is not None:
        parts.append('<table class="facts">')
        parts += [f"<tr><td>{k}</td><td>{_esc(v)}</td></tr>" for k, v in facts]
        parts.append("</table>")
    if e.classes:
        parts.append(
            "<table><tr><th>class</th><th>count</th><th>%</th><th>per mm²</th>"
            "<th>mean µm²</th></tr>"
        )
        for name, c in e.classes.items():
            colour = _rgb(e.colours.get(name, (255, 255, 255)))
            frac = c.get("fraction")
            parts.append(
                f'<tr><td><span class="swatch" style="background:{colour}"></span>{_esc(name)}</td>'
                f"<td>{c.get('count')}</td><td>{_num(None if frac is None else 100 * frac, '.1f')}</td>"
                f"<td>{_num(c.get('density_per_mm2'), '.0f')}</td>"
                f"<td>{_num(c.get('mean_area_um2'), '.1f')}</td></tr>"
            )
        parts.append("</table>")
    for n in e.notices:
        parts.append(f'<div class="notice">{_esc(n)}</div>')
    parts.append("</div>")
    if e.overview_png is not None:
        parts.append(
            '<div class="pics">'
            + _img(e.overview_png, f"{e.name}: nuclei over the slide")
            + _img(e.zoom_png, f"{e.name}: zoom on the densest region")
            + "</div>"
        )
    parts.append("</div>")
    return "".join(parts)


def build_report(
    out_dir: StorePath, rows: Sequence[dict[str, Any]], *, pictures: bool = True
) -> str:
    """The report page of the batch in ``out_dir`` whose summary rows are ``rows``."""
    from wsi_infer.plausibility import DENSITY_RANGE

    lo, hi = DENSITY_RANGE
    entries = [_entry(dict(r), pictures) for r in rows]
    done = [e for e in entries if e.classes]
    counts = {s: sum(e.status == s for e in entries) for s in ("complete", "skipped", "failed")}
    warned = sum(bool(e.warnings) for e in entries)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    head = (
        f"{len(entries)} slides: {counts['complete']} complete, {counts['skipped']} skipped "
        f"(complete before), {counts['failed']} failed; {warned} with warnings"
    )
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>wsi-infer report: {_esc(out_dir)}</title><style>{_CSS}</style></head><body>",
        f'<h1>wsi-infer batch report</h1><div class="meta">{_esc(out_dir)}<br>{_esc(head)}'
        f"<br>written {now} by wsi-infer {_esc(__version__)}</div>",
    ]
    if done:
        parts += [
            '<h2>Batch</h2><div class="plots">',
            f'<div class="plot"><h3>Class composition</h3>{_composition_svg(done)}</div>',
            f'<div class="plot"><h3>Nucleus density</h3>{_density_svg(done)}'
            f'<div class="notice">shaded: the plausible range, {lo:,.0f} to {hi:,.0f} per mm²'
            "</div></div>",
            f'<div class="plot"><h3>Time per slide</h3>{_time_svg(entries)}</div>',
            "</div>",
        ]
        legend = done[0].colours
        parts.append(
            '<div class="meta">'
            + " ".join(
                f'<span class="swatch" style="background:{_rgb(c)}"></span>{_esc(n)}'
                for n, c in legend.items()
            )
            + "</div>"
        )
    parts.append("<h2>Slides</h2>")
    parts += [_slide_html(e) for e in entries]
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(
    out_dir: StorePath | str,
    results: Sequence[Any] | None = None,
    *,
    out: StorePath | str | None = None,
    pictures: bool = True,
) -> StorePath:
    """Write ``report.html`` (or ``out``) for the batch in ``out_dir``; returns its path.

    ``results`` are the batch's :class:`~wsi_infer.batch.SlideResult` (or summary
    rows); without them ``summary.json`` is read.
    """
    from dataclasses import asdict, is_dataclass

    from wsi_infer.batch import _write_atomic

    folder = parse_location(out_dir)
    if results is None:
        rows = read_summary(folder)
    else:
        rows = [
            asdict(r) if is_dataclass(r) and not isinstance(r, type) else dict(r) for r in results
        ]
    page = build_report(folder, rows, pictures=pictures)
    target = parse_location(out) if out is not None else folder / REPORT_NAME
    try:
        _write_atomic(target, page)
    except OSError as exc:
        if isinstance(exc, WsiInferError):
            raise
        raise OutputWriteError(
            f"{target}: cannot write the report ({exc.strerror or exc})"
        ) from exc
    logger.info("%s: report of %d slides", target, len(rows))
    return target
