"""The result store: a zarr v3 group whose layout is a contract.

::

    result.zarr/
      labels/nuclei/0, 1, ...   uint32 instance ids on the model's grid, then 2x downsampled levels
      labels/types/0, 1, ...    uint8 class per pixel (0 background, 1..n = class_names)
      labels/tissue/0           uint8 tissue mask at the tissue-detection resolution
      tables/nuclei/            id, centroid (x y), bbox (x0 y0 x1 y1), area_um2, type, type_prob
      _scratch/                 model maps while a run is in progress (removed when complete)

Label groups carry OME-NGFF 0.5 ``multiscales`` and ``image-label`` metadata.
The root attribute ``wsi_infer`` holds provenance; its ``status`` becomes
``"complete"`` last, only after everything else is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import BloscCodec

from wsi_infer.errors import IncompleteStoreError, OutputExistsError

__all__ = [
    "TABLE_COLUMNS",
    "create_store",
    "open_result",
    "prepare_output",
    "read_table",
]

ATTR = "wsi_infer"
#: Table arrays: name -> (dtype, columns or None for 1-D).
TABLE_COLUMNS: dict[str, tuple[str, int | None]] = {
    "id": ("uint32", None),
    "centroid": ("float32", 2),
    "bbox": ("int32", 4),
    "area_um2": ("float32", None),
    "type": ("uint8", None),
    "type_prob": ("float32", None),
}
TABLE_CHUNK = 65536


def prepare_output(path: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing output unless ``overwrite``; then remove it."""
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"{path}: already exists; pass --overwrite to replace it, or choose another --out"
            )
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _axes() -> list[dict[str, str]]:
    return [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]


def multiscales_attrs(name: str, mpp: float, levels: int) -> dict[str, Any]:
    return {
        "name": name,
        "axes": _axes(),
        "datasets": [
            {
                "path": str(k),
                "coordinateTransformations": [{"type": "scale", "scale": [mpp * 2**k, mpp * 2**k]}],
            }
            for k in range(levels)
        ],
    }


def create_store(
    path: Path,
    *,
    grid_shape: tuple[int, int],
    chunk: int,
    map_chunk: int,
    tissue: NDArray[np.bool_],
    tissue_mpp: float,
    run_mpp: float,
    class_names: tuple[str, ...],
    class_colours: tuple[tuple[int, int, int], ...],
    attrs: dict[str, Any],
) -> zarr.Group:
    """Create the store's arrays (empty) with ``status: running``."""
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    root.attrs[ATTR] = {**attrs, "status": "running"}
    labels = root.create_group("labels")
    labels.attrs["ome"] = {"version": "0.5", "labels": ["nuclei", "types", "tissue"]}
    h, w = grid_shape
    for name, dtype in (("nuclei", "uint32"), ("types", "uint8")):
        g = labels.create_group(name)
        g.create_array(
            "0",
            shape=(h, w),
            chunks=(chunk, chunk),
            dtype=dtype,
            fill_value=0,
            dimension_names=("y", "x"),
        )
        colours: list[dict[str, Any]] = []
        if name == "types":
            colours = [
                {"label-value": i + 1, "rgba": [*c, 255]} for i, c in enumerate(class_colours)
            ]
        g.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [multiscales_attrs(name, run_mpp, 1)],
            "image-label": {
                "version": "0.5",
                "colors": colours,
                "properties": [
                    {"label-value": i + 1, "class": n} for i, n in enumerate(class_names)
                ]
                if name == "types"
                else [],
            },
        }
    t = labels.create_group("tissue")
    t.create_array(
        "0",
        data=tissue.astype(np.uint8),
        chunks=(min(4096, tissue.shape[0] or 1), min(4096, tissue.shape[1] or 1)),
        dimension_names=("y", "x"),
    )
    t.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [multiscales_attrs("tissue", tissue_mpp, 1)],
        "image-label": {"version": "0.5", "colors": [{"label-value": 1, "rgba": [0, 160, 0, 255]}]},
    }
    tables = root.create_group("tables").create_group("nuclei")
    for col, (dtype, ncols) in TABLE_COLUMNS.items():
        shape = (0,) if ncols is None else (0, ncols)
        chunks = (TABLE_CHUNK,) if ncols is None else (TABLE_CHUNK, ncols)
        tables.create_array(col, shape=shape, chunks=chunks, dtype=dtype)
    scratch = root.create_group("_scratch")
    # Blosc's zstd at level 1: a third of the CPU of the default zstd for these maps
    # (written once per tile, read once by segmentation), at the same size.
    scratch.create_array(
        "maps",
        shape=(h, w, 4),
        chunks=(map_chunk, map_chunk, 4),
        dtype="uint8",
        fill_value=0,
        compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")],
    )
    return root


def append_table(root: zarr.Group, rows: dict[str, NDArray[Any]]) -> None:
    """Append rows (same length in every column) to ``tables/nuclei``."""
    n = len(rows["id"])
    if n == 0:
        return
    tables: Any = root["tables/nuclei"]
    for col in TABLE_COLUMNS:
        arr = tables[col]
        assert isinstance(arr, zarr.Array)
        data = rows[col]
        if len(data) != n:
            raise ValueError(f"table column {col} has {len(data)} rows, expected {n}")
        arr.append(data.astype(arr.dtype), axis=0)


def reset_table(root: zarr.Group) -> None:
    """Empty ``tables/nuclei`` (a resumed run writes it again from the start)."""
    tables: Any = root["tables/nuclei"]
    for col in TABLE_COLUMNS:
        arr = tables[col]
        arr.resize((0, *arr.shape[1:]))


def build_pyramid(group: zarr.Group, name: str, mpp: float, min_size: int) -> int:
    """Add 2x nearest-neighbour levels under ``group`` until the largest side is <= min_size.

    Labels are subsampled, never averaged, so every level holds valid ids.  Each
    destination chunk is made from one source block: memory stays at one block.
    """
    level = 0
    src: Any = group["0"]
    while max(src.shape) > min_size:
        shape = ((src.shape[0] + 1) // 2, (src.shape[1] + 1) // 2)
        ch, cw = src.chunks
        dst: Any = group.create_array(
            str(level + 1),
            overwrite=True,
            shape=shape,
            chunks=src.chunks,
            dtype=src.dtype,
            fill_value=0,
            dimension_names=("y", "x"),
        )
        for y in range(0, shape[0], ch):
            for x in range(0, shape[1], cw):
                dst[y : y + ch, x : x + cw] = src[
                    2 * y : 2 * (y + ch) : 2, 2 * x : 2 * (x + cw) : 2
                ]
        level += 1
        src = dst
    ome = dict(group.attrs["ome"])  # type: ignore[arg-type]
    ome["multiscales"] = [multiscales_attrs(name, mpp, level + 1)]
    group.attrs["ome"] = ome
    return level + 1


def open_result(path: str | Path, *, require_complete: bool = True) -> zarr.Group:
    """Open a result store read-only; by default refuse one that is not complete."""
    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
        raise IncompleteStoreError(f"{path}: not a zarr group ({exc})") from exc
    info = root.attrs.get(ATTR)
    if not isinstance(info, dict):
        raise IncompleteStoreError(f"{path}: not a wsi-infer result (no '{ATTR}' attribute)")
    if require_complete and info.get("status") != "complete":
        raise IncompleteStoreError(
            f"{path}: run status is {info.get('status')!r}, not 'complete'; rerun with --overwrite"
        )
    return root


def read_table(path: str | Path) -> Any:
    """The nucleus table of a complete store as a pandas DataFrame (one row per nucleus)."""
    import pandas as pd

    root = open_result(path)
    t: Any = root["tables/nuclei"]
    centroid, bbox, types = t["centroid"][:], t["bbox"][:], t["type"][:]
    info: Any = root.attrs[ATTR]
    names = list(info["model"]["class_names"])
    cols: dict[str, Any] = {
        "id": t["id"][:],
        "centroid_x": centroid[:, 0],
        "centroid_y": centroid[:, 1],
        "bbox_x0": bbox[:, 0],
        "bbox_y0": bbox[:, 1],
        "bbox_x1": bbox[:, 2],
        "bbox_y1": bbox[:, 3],
        "area_um2": t["area_um2"][:],
        "type": types,
        "type_name": pd.Categorical(
            [names[i - 1] if i else None for i in types.tolist()], categories=names
        ),
        "type_prob": t["type_prob"][:],
    }
    return pd.DataFrame(cols)
