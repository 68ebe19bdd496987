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
from wsi_infer.options import fingerprinted
from wsi_infer.params import RunParams
from wsi_infer.reader import Slide
from wsi_infer.store import store_attribute
from wsi_infer.storeinfo import SlideRecord, StoreInfo
from wsi_infer.verify import structure_problems

__all__ = ["existing_store", "fingerprint", "slide_record"]

HINT = "pass --overwrite to replace it, or choose another --out"


def slide_record(
    slide: Slide, identity: SlideIdentity, slide_mpp: float, mpp_source: str
) -> SlideRecord:
    """What the store says about its slide."""
    return SlideRecord(
        path=str(slide.path.resolve()),
        name=slide.path.name,
        size_bytes=identity.size,
        mtime_ns=identity.mtime_ns,
        sample_sha256=identity.sample_sha256,
        reader=slide.backend,
        vendor=slide.properties.get("openslide.vendor", slide.backend),
        dimensions=tuple(slide.dimensions),
        levels=len(slide.level_dimensions),
        mpp=slide_mpp,
        mpp_source=mpp_source,
    )


def fingerprint(slide: SlideRecord, backend: Any, params: RunParams) -> dict[str, Any]:
    """What must match for an existing store to be resumed or taken as done.

    Its parameters are those :class:`~wsi_infer.options.RunOptions` marks as entering
    the fingerprint (:func:`~wsi_infer.options.fingerprinted`).
    """
    return {
        "slide": slide.identity(),
        "model": {**model_identity(backend), "config": backend.config.to_dict()},
        "parameters": fingerprinted(params),
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
    raw = store_attribute(out)
    if not isinstance(raw, dict):
        what = "a zarr store of another tool" if (out / "zarr.json").is_file() else "not a store"
        raise OutputExistsError(
            f"{out}: already exists and is not a wsi-infer store ({what}); choose another "
            "--out (--overwrite replaces only wsi-infer stores)"
        )
    try:
        info = StoreInfo.parse(out, raw)
    except IncompleteStoreError as exc:
        raise OutputExistsError(f"{exc}") from exc
    if info.fingerprint != wanted:
        raise OutputExistsError(
            f"{out}: already exists, made with {_difference(info.fingerprint, wanted)}; {HINT}"
        )
    root = zarr.open_group(str(out), mode="r+")
    if info.status != "complete":
        problems = structure_problems(root, info, complete=False)
        if problems:
            raise OutputExistsError(
                f"{out}: an interrupted run whose store is damaged ({problems[0]}); {HINT}"
            )
    return root, StoreInfo.read(root, out).status
