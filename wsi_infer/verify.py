"""Verifying a result store before it is trusted: skipped as done, exported or read.

When a run completes, a sha256 digest of every node of the store (each array
and group, its metadata and chunk files) is recorded in the root attribute
(``wsi_infer.digests``), just before ``status: complete``.  A store that says it
is complete is trusted only when

* its attributes have the fields a run writes, of the right types;
* every array is there with the shape and dtype the attributes imply: the label
  grid and its pyramid, the tissue mask, the table columns as long as the
  nucleus count (which agrees with the statistics);
* nothing of a run in progress is left (``_scratch``, zarr's ``*.partial``
  temporary files);
* its files still hash to the recorded digests (a damaged chunk, a deleted or
  edited array, a status edited to ``complete`` all fail here).

Checking the digests reads the store once (its size: the labels compress well).
The same holds for a store in object storage: its objects are listed in the order
a folder walk gives the files, so a store's digests are the same wherever it lies.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import zarr

from wsi_infer.errors import CorruptStoreError, IncompleteStoreError
from wsi_infer.files import file_sha256
from wsi_infer.location import RemotePath, StorePath, walk_files
from wsi_infer.store import ATTR, TABLE_COLUMNS, remove_leftovers

__all__ = [
    "REQUIRED_KEYS",
    "check_complete",
    "check_info",
    "leftovers",
    "node_digests",
    "seal_complete",
    "structure_problems",
    "verify_store",
]

logger = logging.getLogger(__name__)

META = "zarr.json"
#: Root-attribute fields every wsi-infer store has from its creation on, with their types.
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "status": str,
    "model": dict,
    "slide": dict,
    "grid_shape": list,
    "run_mpp": (int, float),
    "grid_to_level0": (int, float),
}


def check_info(path: StorePath, info: Any) -> dict[str, Any]:
    """The root attribute as a dict with the fields every store has, else IncompleteStoreError."""
    if not isinstance(info, dict):
        raise IncompleteStoreError(f"{path}: not a wsi-infer result (no '{ATTR}' attribute)")
    bad = [
        k
        for k, t in REQUIRED_KEYS.items()
        if not isinstance(info.get(k), t) or isinstance(info.get(k), bool)
    ]
    if bad:
        raise IncompleteStoreError(
            f"{path}: its '{ATTR}' attribute lacks or garbles {', '.join(bad)}: not a store "
            "wsi-infer wrote, or an edited one; run the slide again with --overwrite"
        )
    return info


def leftovers(path: StorePath, files: list[str] | None = None) -> list[str]:
    """What a finished run must not leave: the scratch folder, temporary ``*.partial`` files.

    ``files`` is the store's :func:`~wsi_infer.location.walk_files`, when at hand.
    """
    files = walk_files(path) if files is None else files
    found = []
    if (path / "_scratch").exists():
        found.append("_scratch/ (the run's scratch maps)")
    partial = [f for f in files if f.endswith(".partial")]
    if partial:
        found.append(f"{len(partial)} temporary *.partial files (e.g. {partial[0]})")
    return found


def _file_sha256(path: StorePath, rel: str) -> str:
    if isinstance(path, RemotePath):
        return hashlib.sha256((path / rel).read_bytes()).hexdigest()
    return file_sha256(path / rel)


def node_digests(path: StorePath, files: list[str] | None = None) -> dict[str, str]:
    """sha256 per node (a folder with ``zarr.json``) of its own files, the root's metadata apart.

    Files belong to their nearest node; ``*.partial`` temporary files are left out
    (:func:`leftovers` reports them).  Keys are node paths relative to the store.
    ``files`` is the store's :func:`~wsi_infer.location.walk_files`, when at hand.
    """
    files = walk_files(path) if files is None else files
    present = set(files)
    digests: dict[str, Any] = {}
    for rel_text in files:
        rel = Path(rel_text)
        if rel == Path(META) or rel.name.endswith(".partial"):
            continue
        node = rel.parent
        while node != Path(".") and (node / META).as_posix() not in present:
            node = node.parent
        h = digests.setdefault(node.as_posix(), hashlib.sha256())
        content = _file_sha256(path, rel_text)
        h.update(f"{rel.relative_to(node).as_posix()}\0{content}\n".encode())
    return {k: v.hexdigest() for k, v in sorted(digests.items())}


def seal_complete(path: StorePath, root: zarr.Group, **changes: Any) -> None:
    """Finish the store at ``path``: remove leftovers, record its digests, mark it complete.

    ``changes`` go into the root attribute in the same, last write.
    """
    remove_leftovers(path)
    info = dict(root.attrs[ATTR])  # type: ignore[arg-type]
    info.update(changes)
    info.pop("error", None)
    info["digests"] = node_digests(path)
    info["status"] = "complete"
    root.attrs[ATTR] = info


def _array(root: zarr.Group, key: str) -> Any:
    try:
        node = root[key]
    except KeyError:
        return None
    return node if isinstance(node, zarr.Array) else None


def structure_problems(root: zarr.Group, info: dict[str, Any], *, complete: bool) -> list[str]:
    """What is missing or the wrong shape; ``complete`` adds the checks of a finished store."""
    problems: list[str] = []
    grid = info["grid_shape"]
    if len(grid) != 2 or not all(isinstance(v, int) and v > 0 for v in grid):
        return [f"grid_shape {grid} is not two positive integers"]
    for name, dtype in (("nuclei", "uint32"), ("types", "uint8")):
        base = _array(root, f"labels/{name}/0")
        if base is None:
            problems.append(f"labels/{name}/0 is missing")
            continue
        if tuple(base.shape) != tuple(grid) or str(base.dtype) != dtype:
            problems.append(
                f"labels/{name}/0 is {base.dtype} {tuple(base.shape)}, not {dtype} {tuple(grid)}"
            )
        if complete:
            problems += _pyramid_problems(root, name, tuple(grid))
    tissue = _array(root, "labels/tissue/0")
    if tissue is None or tissue.ndim != 2:
        problems.append("labels/tissue/0 is missing")
    n = info.get("nuclei")
    for col, (dtype, ncols) in TABLE_COLUMNS.items():
        arr = _array(root, f"tables/nuclei/{col}")
        if arr is None:
            problems.append(f"tables/nuclei/{col} is missing")
            continue
        if str(arr.dtype) != dtype or tuple(arr.shape[1:]) != (() if ncols is None else (ncols,)):
            problems.append(f"tables/nuclei/{col} is {arr.dtype} {tuple(arr.shape)}")
        elif complete and arr.shape[0] != n:
            problems.append(
                f"tables/nuclei/{col} has {arr.shape[0]} rows, the store says {n} nuclei"
            )
    if complete:
        stats = info.get("statistics")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            problems.append(f"nuclei {n!r} is not a count")
        elif isinstance(stats, dict) and stats.get("nuclei") != n:
            problems.append(
                f"the statistics count {stats.get('nuclei')} nuclei, the store says {n}"
            )
    elif _array(root, "_scratch/maps") is None and info.get("stage") != "written":
        problems.append("_scratch/maps (the predicted maps) is missing")
    return problems


def _pyramid_problems(root: zarr.Group, name: str, grid: tuple[int, int]) -> list[str]:
    group: Any = root.get(f"labels/{name}")
    try:
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        paths = [str(d["path"]) for d in datasets]
    except (KeyError, IndexError, TypeError, AttributeError):
        return [f"labels/{name} has no OME-NGFF multiscales"]
    problems = []
    shape = grid
    for k, p in enumerate(paths):
        arr = _array(root, f"labels/{name}/{p}")
        if p != str(k) or arr is None:
            problems.append(f"labels/{name}/{p} (pyramid level {k}) is missing")
        elif tuple(arr.shape) != shape:
            problems.append(f"labels/{name}/{p} is {tuple(arr.shape)}, not {shape}")
        shape = (math.ceil(shape[0] / 2), math.ceil(shape[1] / 2))
    return problems


def verify_store(path: StorePath, root: zarr.Group, info: dict[str, Any]) -> list[str]:
    """Every reason not to trust the complete store at ``path`` (empty: it verifies)."""
    files = walk_files(path)
    problems = structure_problems(root, info, complete=True)
    problems += [f"leftover {what}" for what in leftovers(path, files)]
    recorded = info.get("digests")
    if not isinstance(recorded, dict) or not recorded:
        problems.append("no digests recorded (a run did not finish it, or its status was edited)")
        return problems
    found = node_digests(path, files)
    for node in sorted(set(recorded) | set(found)):
        if node not in found:
            problems.append(f"{node} is gone")
        elif node not in recorded:
            problems.append(f"{node} was added after the run")
        elif found[node] != recorded[node]:
            problems.append(f"{node} changed after the run (damaged or edited)")
    return problems


def check_complete(path: StorePath, root: zarr.Group | None = None) -> zarr.Group:
    """The complete, verified store at ``path``, else a one-line error naming the first problem."""
    if root is None:
        try:
            root = zarr.open_group(str(path), mode="r")
        except (FileNotFoundError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
            raise IncompleteStoreError(f"{path}: not a zarr group ({exc})") from exc
    info = check_info(path, root.attrs.get(ATTR))
    if info["status"] != "complete":
        raise IncompleteStoreError(
            f"{path}: run status is {info['status']!r}, not 'complete'; run the same command "
            "again to finish it, or rerun with --overwrite"
        )
    problems = verify_store(path, root, info)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CorruptStoreError(
            f"{path}: says complete but fails verification: {problems[0]}{more}; it is not "
            "trusted: run the slide again with --overwrite"
        )
    return root
