"""An existing output: what it must match to be resumed or skipped, and the reasons it is not.

A store records a *fingerprint*: the slide's identity (path, size, modification
time, sampled-content hash, resolution), the model's (hash of the bytes that
run, backend, device, precision, config) and every parameter that shapes the
output.  A store is resumed, or skipped when complete and verified, only when
the fingerprint is the same; the error says which part differs.
"""

from __future__ import annotations

from typing import Any

import zarr

from wsi_infer.errors import IncompleteStoreError, OutputExistsError
from wsi_infer.identity import SlideIdentity, model_identity
from wsi_infer.location import StorePath
from wsi_infer.params import RunParams
from wsi_infer.reader import Slide
from wsi_infer.store import ATTR, store_attribute
from wsi_infer.verify import check_info, structure_problems

__all__ = ["existing_store", "fingerprint", "slide_record"]

HINT = "pass --overwrite to replace it, or choose another --out"


def slide_record(
    slide: Slide, identity: SlideIdentity, slide_mpp: float, mpp_source: str
) -> dict[str, Any]:
    """What the store says about its slide."""
    return {
        "path": str(slide.path.resolve()),
        "name": slide.path.name,
        **identity.to_dict(),
        "reader": slide.backend,
        "vendor": slide.properties.get("openslide.vendor", slide.backend),
        "dimensions": list(slide.dimensions),
        "levels": len(slide.level_dimensions),
        "mpp": slide_mpp,
        "mpp_source": mpp_source,
    }


def fingerprint(slide: dict[str, Any], backend: Any, params: RunParams) -> dict[str, Any]:
    """What must match for an existing store to be resumed or taken as done."""
    return {
        "slide": {k: slide[k] for k in ("path", "size_bytes", "mtime_ns", "sample_sha256", "mpp")},
        "model": {**model_identity(backend), "config": backend.config.to_dict()},
        "parameters": params.output_defining(),
    }


_PARTS = {
    "slide": "another slide (or this slide's file changed since: size, time or content)",
    "model": "another model (the model file, its precision, backend or device differ)",
    "parameters": "other parameters",
}


def _difference(stored: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(stored, dict) or set(stored) != set(wanted):
        return "a fingerprint of another wsi-infer version"
    parts = [_PARTS[k] for k in wanted if stored.get(k) != wanted[k]]
    return " and ".join(parts) or "another fingerprint"


def existing_store(out: StorePath, wanted: dict[str, Any]) -> tuple[zarr.Group, str]:
    """An existing output that may be resumed or skipped: its group and status.

    Raises :class:`~wsi_infer.errors.OutputExistsError` saying why not: not a
    wsi-infer store, made with something else (which part), or an interrupted
    run whose store is damaged.
    """
    info = store_attribute(out)
    if not isinstance(info, dict):
        what = "a zarr store of another tool" if (out / "zarr.json").is_file() else "not a store"
        raise OutputExistsError(
            f"{out}: already exists and is not a wsi-infer store ({what}); choose another "
            "--out (--overwrite replaces only wsi-infer stores)"
        )
    if info.get("fingerprint") != wanted:
        raise OutputExistsError(
            f"{out}: already exists, made with {_difference(info.get('fingerprint'), wanted)}; "
            f"{HINT}"
        )
    try:
        check_info(out, info)
    except IncompleteStoreError as exc:
        raise OutputExistsError(f"{exc}") from exc
    root = zarr.open_group(str(out), mode="r+")
    status = str(info.get("status"))
    if status != "complete":
        problems = structure_problems(root, info, complete=False)
        if problems:
            raise OutputExistsError(
                f"{out}: an interrupted run whose store is damaged ({problems[0]}); {HINT}"
            )
    stored: Any = root.attrs[ATTR]
    return root, str(stored.get("status"))
