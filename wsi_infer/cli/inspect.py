"""``wsi-infer inspect result.zarr [--json]``: what a result store holds, at a glance."""

from __future__ import annotations

import json
from typing import Any

import click

from wsi_infer.cli.common import fail


def _levels(group: Any) -> list[list[int]]:
    shapes = []
    k = 0
    while str(k) in group:
        shapes.append([int(v) for v in group[str(k)].shape])
        k += 1
    return shapes


def store_summary(path: Any) -> dict[str, Any]:
    """A JSON-able summary of the store at ``path`` (a path or URL; statistics only when it
    is complete)."""
    from wsi_infer.location import parse_location
    from wsi_infer.stats import slide_statistics
    from wsi_infer.store import open_result
    from wsi_infer.storeinfo import StoreInfo
    from wsi_infer.verify import verify_store

    path = parse_location(path)
    root = open_result(path, require_complete=False)
    info = StoreInfo.read(root, path)
    status = info.status
    problems = verify_store(path, root, info) if status == "complete" else []
    stats = info.statistics.to_dict() if info.statistics is not None else None
    if stats is None and status == "complete" and not problems:
        stats = slide_statistics(root)
    model = info.model.to_dict()
    labels: Any = root.get("labels/nuclei")

    def part(p: Any) -> Any:
        return None if p is None else p.to_dict()

    return {
        "store": str(path),
        "status": status,
        "verified": None if status != "complete" else not problems,
        "problems": problems,
        "error": info.error,
        "software": part(info.software),
        "slide": info.slide.to_dict(),
        "model": {
            k: model.get(k)
            for k in ("name", "version", "arch", "mpp", "sha256", "source", "class_names")
        },
        "backend": part(info.backend),
        "grid": {
            "shape": list(info.grid_shape),
            "mpp": info.run_mpp,
            "grid_to_level0": info.grid_to_level0,
            "levels": _levels(labels) if labels is not None else [],
        },
        "tissue": part(info.tissue),
        "tiles": info.tiles,
        "nuclei": info.nuclei,
        "statistics": stats,
        "started": info.started,
        "finished": info.finished,
        "seconds": info.seconds,
        "timings": info.timings,
        "parameters": info.parameters,
    }


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_summary(s: dict[str, Any]) -> str:
    """The summary as aligned lines of text."""
    lines = [s["store"]]

    def row(key: str, value: str) -> None:
        lines.append(f"  {key:<10} {value}")

    status = str(s["status"])
    if s.get("problems"):
        status += f", but fails verification: {'; '.join(s['problems'])}"
    elif s.get("error"):
        status += f" ({s['error']})"
    elif s.get("finished"):
        status += f" (finished {s['finished']}, {_num(s.get('seconds'), '.1f')} s)"
    row("status", status)
    for w in (s.get("statistics") or {}).get("warnings") or []:
        row("warning", str(w.get("message")))
    slide = s.get("slide") or {}
    if slide:
        w, h = slide.get("dimensions", ["?", "?"])
        row(
            "slide",
            f"{slide.get('path')} ({slide.get('vendor')}, {w} x {h} px, "
            f"{_num(slide.get('mpp'), '.4g')} µm/px from {slide.get('mpp_source')})",
        )
    m = s["model"]
    sha = (m.get("sha256") or "")[:12]
    backend = s.get("backend") or {}
    row(
        "model",
        f"{m.get('name')} v{m.get('version')} ({m.get('arch')}, {m.get('mpp')} µm/px, "
        f"sha256 {sha}…) on {backend.get('name')}/{backend.get('device')}",
    )
    g = s["grid"]
    if g.get("shape"):
        gh, gw = g["shape"]
        row(
            "labels",
            f"{gw} x {gh} px at {_num(g.get('mpp'), '.4g')} µm/px "
            f"({_num(g.get('grid_to_level0'), '.4g')} level-0 px each), "
            f"{len(g['levels'])} pyramid levels",
        )
    st = s.get("statistics")
    tissue = s.get("tissue") or {}
    if st is not None:
        row(
            "tissue",
            f"{st['tissue_area_mm2']:.3f} mm² ({100 * tissue.get('fraction', 0):.1f} % of the "
            f"slide, mask at {tissue.get('mpp')} µm/px)",
        )
        row(
            "nuclei",
            f"{st['nuclei']} ({_num(st['density_per_mm2'], '.1f')} per mm² of tissue, "
            f"mean area {_num(st['mean_area_um2'], '.1f')} µm²), {s.get('tiles')} tiles",
        )
        lines.append("")
        lines.append(f"  {'class':<14} {'count':>8} {'%':>6} {'per mm²':>9} {'mean µm²':>9}")
        for name, c in st["classes"].items():
            frac = None if c["fraction"] is None else 100 * c["fraction"]
            lines.append(
                f"  {name:<14} {c['count']:>8} {_num(frac, '.1f'):>6} "
                f"{_num(c['density_per_mm2'], '.1f'):>9} {_num(c['mean_area_um2'], '.1f'):>9}"
            )
        lines.append("")
    elif s.get("nuclei") is not None:
        row("nuclei", str(s["nuclei"]))
    timings = s.get("timings") or {}
    if timings:
        parts = [f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items()]
        row("timings", ", ".join(parts))
    return "\n".join(lines)


@click.command("inspect")
@click.argument("store", type=str)
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def inspect(store: str, as_json: bool) -> None:
    """Summarise the result STORE (a path or URL): slide, model, status, plausibility
    warnings, nuclei per class, timings."""
    from wsi_infer.errors import WsiInferError

    try:
        summary = store_summary(store)
    except WsiInferError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary))
