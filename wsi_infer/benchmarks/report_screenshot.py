"""The README's picture of ``report.html``: a batch of the shared slides, shot by headless Chromium.

``python -m wsi_infer.benchmarks.report_screenshot --run`` runs the batch the README shows with
the bundled model: regions of the shared slides (written as tiled TIFFs, with the
slide's own resolution where it has one) at their resolutions, the whole CMU sample at a
wrong ``--mpp 0.125`` (a region would be too small a piece of tissue at that
resolution), the TCGA slide (no resolution in its file) at a wrong ``--mpp 0.5`` and at
1 µm/px, and one unreadable file.  Regions keep the run to minutes on a laptop's CPU
(whole slides take an hour there).  It then opens ``RESULTS/report.html`` in headless
Chromium (Debian's ``chromium``) and saves ``docs/report.png``.  Without ``--run`` it
only takes the picture of an existing batch folder (any ``report.html``); options it
does not know go to ``wsi-infer``.

The browser gets a fresh profile, no network (the page needs none: it is self-contained)
and a fixed window, so the picture depends only on the page.
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from wsi_infer.cli.options import entry_point, out_option, path_option

__all__ = ["find_chromium", "main", "report_screenshot_command", "run_batch", "screenshot"]

logger = logging.getLogger("wsi_infer.benchmarks.report_screenshot")

REPO = Path(__file__).resolve().parents[2]
#: The shared data beside the repository (see its README).
SHARED = REPO.parent / "shared" / "data"

#: name -> (file under shared/data, region (x, y, edge) in level-0 px or None for the whole
#: file, --mpp or None for the file's own).
BATCH: dict[str, tuple[str, tuple[int, int, int] | None, float | None]] = {
    "CMU-1-Small-Region": ("slides/CMU-1-Small-Region.svs", (600, 1000, 640), None),
    "CMU-1-at-0.125": ("slides/CMU-1-Small-Region.svs", None, 0.125),
    "he-tma-core": ("slides/he-tma-core-0.5mpp.ome.tif", (400, 400, 512), None),
    "tcga-cr-7395-at-1": ("slides/tcga-cr-7395-01a-01-ts1.svs", (1800, 1400, 256), 1.0),
    "tcga-cr-7395-at-0.5": ("slides/tcga-cr-7395-01a-01-ts1.svs", (1800, 1400, 512), 0.5),
    "unreadable": ("bad/unreadable.svs", None, None),
}


def write_region(source: Path, region: tuple[int, int, int], out: Path) -> Path:
    """A square region of a slide as a tiled JPEG TIFF, with the slide's resolution if any."""
    import numpy as np
    import tifffile

    from wsi_infer.reader import open_slide

    x, y, edge = region
    with open_slide(source) as slide:
        image = np.ascontiguousarray(slide.read_region(x, y, 0, edge, edge))
        mpp = slide.mpp
    kwargs: dict[str, object] = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb"}
    if mpp is not None:
        kwargs["resolution"] = (1e4 / mpp, 1e4 / mpp)
        kwargs["resolutionunit"] = "CENTIMETER"
    tifffile.imwrite(out, image, **kwargs)  # type: ignore[arg-type]
    return out


def find_chromium() -> str | None:
    """The headless-capable Chromium on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def run_batch(shared: Path, results: Path, *extra: str) -> int:
    """Run the README's batch of the shared slides into ``results``; the exit status.

    The slides (regions, or copies of whole files) go to a folder beside ``results`` and
    the batch runs there with relative paths, so the page names no folder of this machine.
    """
    results = results.resolve()
    work = results.parent
    regions = work / "slides"
    regions.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for name, (file, region, mpp) in BATCH.items():
        source = shared / file
        if not source.is_file():
            raise FileNotFoundError(f"{source}: not found (the shared data's slides are needed)")
        if region is not None:
            path = write_region(source, region, regions / f"{name}.tif")
        else:
            path = regions / source.name
            shutil.copyfile(source, path)
        rows.append({"path": path.relative_to(work), "mpp": mpp, "name": name})
    manifest = work / "slides.csv"  # its paths are relative to its folder
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "mpp", "name"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    cmd = [sys.executable, "-m", "wsi_infer", "--manifest", str(manifest.relative_to(work))]
    cmd += ["--out", results.name, *extra]
    logger.info("running %s in %s", " ".join(cmd), work)
    return subprocess.run(cmd, cwd=work, check=False).returncode


def screenshot(
    page: Path, out: Path, *, width: int = 1400, height: int = 3750, timeout: float = 300.0
) -> Path:
    """Open ``page`` in headless Chromium and save a ``width`` x ``height`` PNG at ``out``."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium: not installed (Debian: apt-get install chromium)")
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such report")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wsi-infer-chromium-") as profile:
        result = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--user-data-dir={profile}",
                f"--screenshot={out.resolve()}",
                f"--window-size={width},{height}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0 or not out.is_file():
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{page}: chromium failed (exit {result.returncode}): {tail}")
    return out


@click.command(
    "python -m wsi_infer.benchmarks.report_screenshot",
    help=__doc__.split("\n\n")[0] + "\n\nOptions it does not know go to wsi-infer (with --run).",
    context_settings={
        "help_option_names": ["-h", "--help"],
        "ignore_unknown_options": True,
        "allow_extra_args": True,
    },
)
@path_option(
    "--results",
    default=Path(tempfile.gettempdir()) / "wsi-infer-report" / "results",
    show_default=True,
    help="the batch folder holding report.html (with --run: made, slides beside it)",
)
@out_option(default=REPO / "docs" / "report.png", help="the picture (PNG)")
@click.option("--run", is_flag=True, help="run the batch first")
@path_option("--shared", default=SHARED, help="the shared data folder")
@click.option("--width", type=int, default=1400, show_default=True)
@click.option("--height", type=int, default=3750, show_default=True)
@click.pass_context
def report_screenshot_command(ctx: click.Context, /, **options: Any) -> int:
    args, extra = SimpleNamespace(**options), list(ctx.args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.run:
        try:
            code = run_batch(args.shared, args.results, *extra)
        except OSError as exc:  # a missing slide, an unwritable folder
            logger.error("%s", exc)
            return 1
        if code not in (0, 3):  # 3: some slides failed, as the unreadable one must
            logger.error("the batch failed (exit status %d)", code)
            return 1
    try:
        shot = screenshot(
            args.results / "report.html", args.out, width=args.width, height=args.height
        )
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
        logger.error("%s", exc)
        return 1
    logger.info("%s: %d x %d screenshot of %s", shot, args.width, args.height, args.results)
    return 0


main = entry_point(report_screenshot_command, "python -m wsi_infer.benchmarks.report_screenshot")


if __name__ == "__main__":
    raise SystemExit(main())
