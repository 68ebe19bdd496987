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
``"complete"`` last, only after everything else is written and the digests
that :mod:`wsi_infer.verify` checks are recorded.

A store is created whole under a temporary name and renamed into place, so an
output path holds either nothing or a store with its attributes; ``--overwrite``
deletes only such a store, never another folder or file.

A store may also live in object storage (a :class:`~wsi_infer.location.RemotePath`,
``s3://bucket/prefix/NAME.zarr``).  Object stores cannot rename, so there a store is
created in place with ``status: creating`` in the root metadata, written first and
whole; a store left ``creating`` by a kill holds no work and is removed by the next
run on it, as a local ``.NAME.creating-*`` folder is.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import BloscCodec

from wsi_infer.errors import IncompleteStoreError, OutputExistsError, RemoteStorageError
from wsi_infer.location import RemotePath, StorePath, parse_location, remove_tree
from wsi_infer.storeinfo import ATTR, StoreInfo

if TYPE_CHECKING:
    from wsi_infer.heads import Head

__all__ = [
    "ATTR",
    "TABLE_CHUNK",
    "TABLE_COLUMNS",
    "PyramidStream",
    "create_store",
    "is_wsi_infer_store",
    "open_result",
    "prepare_output",
    "pyramid_levels",
    "read_table",
    "refuse_existing",
    "refuse_inside_store",
    "remove_creating",
    "remove_leftovers",
    "store_attribute",
    "store_containing",
    "write_multiscales",
]

#: Table arrays: name -> (dtype, columns or None for 1-D).
TABLE_COLUMNS: dict[str, tuple[str, int | None]] = {
    "id": ("uint32", None),
    "centroid": ("float32", 2),
    "bbox": ("int32", 4),
    "area_um2": ("float32", None),
    "type": ("uint8", None),
    "type_prob": ("float32", None),
}
#: Rows per chunk of the nuclei table; a run appends its rows a chunk at a time.
TABLE_CHUNK = 65536


def store_attribute(path: StorePath) -> Any:
    """The ``wsi_infer`` root attribute of the zarr v3 group at ``path`` (None if there is none).

    Read from ``zarr.json`` directly, so any folder (another tool's) can be asked.
    """
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except RemoteStorageError:  # credentials, network: not an answer about the store
        raise
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    return attrs.get(ATTR) if isinstance(attrs, dict) else None


def is_wsi_infer_store(path: StorePath) -> bool:
    """Whether ``path`` is a folder holding a store wsi-infer wrote (complete or not)."""
    if isinstance(path, RemotePath):
        return isinstance(store_attribute(path), dict)
    return path.is_dir() and not path.is_symlink() and isinstance(store_attribute(path), dict)


def store_containing(path: StorePath) -> StorePath | None:
    """The wsi-infer store that ``path`` lies inside, if any (``path`` itself not counted)."""
    for folder in path.absolute().parents:
        if is_wsi_infer_store(folder):
            return folder
    return None


def refuse_inside_store(path: StorePath, what: str) -> None:
    """Raise :class:`OutputExistsError` when ``path`` would be written inside a store."""
    store = store_containing(path)
    if store is not None:
        raise OutputExistsError(
            f"{path}: is inside the wsi-infer store {store}; write the {what} outside it "
            "(a store holds only what the run wrote)"
        )


def refuse_existing(path: StorePath, overwrite: bool) -> bool:
    """Whether output ``path`` exists (a dangling link counts); if it does and not
    ``overwrite``, raise :class:`OutputExistsError` saying how to go on."""
    exists = path.exists() or path.is_symlink()
    if exists and not overwrite:
        raise OutputExistsError(
            f"{path}: already exists; pass --overwrite to replace it, or choose another output"
        )
    return exists


def _describe(path: StorePath) -> str:
    if path.is_symlink():
        return "a symbolic link"
    if not path.is_dir():
        return "a file"
    if (path / "zarr.json").is_file():
        return f"a zarr store without a '{ATTR}' attribute, another tool's"
    return "a folder that is no zarr store"


def prepare_output(path: StorePath, overwrite: bool) -> None:
    """Refuse to clobber an existing output unless ``overwrite``; then remove it.

    Only a wsi-infer store (or an empty folder) is ever removed: anything else
    at ``path`` is an error even with ``overwrite``.
    """
    if not refuse_existing(path, overwrite):
        return
    if is_wsi_infer_store(path):
        remove_tree(path)
    elif (
        isinstance(path, Path)
        and path.is_dir()
        and not path.is_symlink()
        and not any(path.iterdir())
    ):
        path.rmdir()
    else:
        raise OutputExistsError(
            f"{path}: is {_describe(path)}, not a wsi-infer store; --overwrite replaces only "
            "wsi-infer stores: move it away or choose another --out"
        )


def remove_leftovers(path: StorePath) -> None:
    """Remove what only a run in progress needs: ``_scratch`` and zarr's ``*.partial`` files.

    Works on the files themselves, so a scratch folder half removed by a kill (its
    ``zarr.json`` gone, chunks left) goes too.
    """
    if isinstance(path, RemotePath):  # objects are put whole: no partial files
        (path / "_scratch").rmtree()
        return
    scratch = path / "_scratch"
    if scratch.exists():
        shutil.rmtree(scratch)
    for dirpath, _, files in os.walk(path):
        for name in files:
            if name.endswith(".partial"):
                (Path(dirpath) / name).unlink(missing_ok=True)


def remove_creating(path: StorePath) -> None:
    """Remove stores left half-created under a temporary name beside ``path`` (by a kill)."""
    if isinstance(path, RemotePath):
        try:
            creating = StoreInfo.parse(path, store_attribute(path)).status == CREATING
        except IncompleteStoreError:
            creating = False
        if creating:
            path.rmtree()
        return
    for tmp in path.parent.glob(f".{path.name}.creating-*"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


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


#: The status of a store in object storage while its arrays are being created.
CREATING = "creating"


def create_store(
    path: StorePath,
    *,
    grid_shape: tuple[int, int],
    chunk: int,
    map_chunk: int,
    tissue: NDArray[np.bool_],
    tissue_mpp: float,
    run_mpp: float,
    class_names: tuple[str, ...],
    class_colours: tuple[tuple[int, int, int], ...],
    head: Head,
    info: StoreInfo,
) -> zarr.Group:
    """Create the store's arrays (empty), its provenance ``info`` with ``status: running``;
    the scratch maps have the layout of the model's ``head``.

    The store is made under a temporary name beside ``path`` and renamed into
    place: ``path`` never holds a store without its attributes.  In object
    storage it is made in place, ``status: creating`` until its arrays are all there.
    """
    layout: dict[str, Any] = {
        "grid_shape": grid_shape,
        "chunk": chunk,
        "map_chunk": map_chunk,
        "tissue": tissue,
        "tissue_mpp": tissue_mpp,
        "run_mpp": run_mpp,
        "class_names": class_names,
        "class_colours": class_colours,
        "head": head,
    }
    if isinstance(path, RemotePath):
        _create_arrays(path, info=info.updated(status=CREATING), **layout)
        root = zarr.open_group(str(path), mode="r+")
        info.updated(status="running").write(root)
        return root
    final = path
    path = final.with_name(f".{final.name}.creating-{uuid.uuid4().hex[:12]}")
    try:
        _create_arrays(
            path,
            grid_shape=grid_shape,
            chunk=chunk,
            map_chunk=map_chunk,
            tissue=tissue,
            tissue_mpp=tissue_mpp,
            run_mpp=run_mpp,
            class_names=class_names,
            class_colours=class_colours,
            head=head,
            info=info.updated(status="running"),
        )
        os.rename(path, final)  # fails if ``final`` exists: nothing is replaced
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
    return zarr.open_group(str(final), mode="r+")


def _create_arrays(
    path: StorePath,
    *,
    grid_shape: tuple[int, int],
    chunk: int,
    map_chunk: int,
    tissue: NDArray[np.bool_],
    tissue_mpp: float,
    run_mpp: float,
    class_names: tuple[str, ...],
    class_colours: tuple[tuple[int, int, int], ...],
    head: Head,
    info: StoreInfo,
) -> None:
    # the attributes come with the group's first metadata: never a store without them
    root = zarr.open_group(str(path), mode="w-", zarr_format=3, attributes=info.attributes())
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
    scratch.create_array(
        "maps",
        shape=head.scratch_shape(h, w),
        chunks=head.scratch_shape(map_chunk, map_chunk),
        dtype=head.map_dtype,
        fill_value=0,
        compressors=[_scratch_codec(head)],
        # a written chunk is never all fill (the head's done channel), so zarr need not
        # compare each chunk with it
        config={"write_empty_chunks": True},
    )


def _scratch_codec(head: Head) -> BloscCodec:
    """The scratch maps' compressor: Blosc's LZ4 with bytes shuffled by pixel, so each
    channel's bytes are compressed together.  The maps are written once per tile and
    read by every window that overlaps them; on the bundled model's maps this is 2.0x
    smaller (zstd level 1 unshuffled: 1.7x) at a third of the CPU to write and a third
    to read."""
    pixel = head.num_map_channels * np.dtype(head.map_dtype).itemsize
    return BloscCodec(cname="lz4", clevel=9, shuffle="shuffle", typesize=min(pixel, 255))


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


def pyramid_levels(shape: tuple[int, ...], min_size: int) -> int:
    """Levels of a label pyramid of level 0 ``shape`` (each half the last, rounded up)
    until the larger side is at most ``min_size``, level 0 included."""
    levels, size = 1, max(shape)
    while size > min_size:
        size, levels = (size + 1) // 2, levels + 1
    return levels


class PyramidStream:
    """Levels 1, 2, ... of a label pyramid under ``group``, written while level 0 is.

    Each level is level 0 subsampled 2x, 2x again, ... (nearest neighbour: labels
    are never averaged, so every level holds valid ids) until the larger side is at
    most ``min_size``.  Level 0's rows come in with :meth:`add`, top to bottom; each
    level writes a whole row of chunks as soon as it holds one (so no chunk is read
    back or written twice) and hands it to the next.  :meth:`close` writes what is
    left.  Memory: at most a row of chunks per level.
    """

    def __init__(self, group: zarr.Group, min_size: int) -> None:
        base: Any = group["0"]
        self._levels: list[_StreamLevel] = []
        for level in range(1, pyramid_levels(base.shape, min_size)):
            arr: Any = group.create_array(
                str(level),
                overwrite=True,
                shape=tuple((n - 1) // 2**level + 1 for n in base.shape),
                chunks=base.chunks,
                dtype=base.dtype,
                fill_value=0,
                dimension_names=("y", "x"),
            )
            self._levels.append(_StreamLevel(arr))

    @property
    def levels(self) -> int:
        """How many levels the pyramid has, level 0 included."""
        return len(self._levels) + 1

    def add(self, y0: int, rows: NDArray[Any]) -> None:
        """Level 0's rows ``y0 .. y0 + len(rows)``, following the rows added before."""
        self._feed(0, y0, rows)

    def close(self) -> None:
        """Write the rows each level still holds (its last, partial row of chunks)."""
        for i, level in enumerate(self._levels):
            for y0, rows in level.drain():
                self._feed(i + 1, y0, rows)

    def _feed(self, i: int, y0: int, rows: NDArray[Any]) -> None:
        if i < len(self._levels):
            for start, slab in self._levels[i].take(y0, rows):
                self._feed(i + 1, start, slab)


class _StreamLevel:
    """One level of a :class:`PyramidStream`: the finer level's rows in, rows of chunks out."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.chunk = int(array.chunks[0])
        self.start = 0  # the first row held
        self.held: NDArray[Any] = np.zeros((0, array.shape[1]), array.dtype)

    def take(self, y0: int, rows: NDArray[Any]) -> list[tuple[int, NDArray[Any]]]:
        """Keep the even rows and columns of the finer level's ``rows`` (from its row
        ``y0``); write and return every whole row of chunks now held."""
        odd = y0 % 2
        first = (y0 + odd) // 2
        if first != self.start + len(self.held):
            raise ValueError(
                f"pyramid rows out of order: row {first}, expected {self.start + len(self.held)}"
            )
        # concatenated, so a copy: the caller may reuse ``rows``
        self.held = np.concatenate([self.held, rows[odd::2, ::2]])
        out = []
        while len(self.held) >= self.chunk:
            out.append(self._write(self.held[: self.chunk]))
            self.held = self.held[self.chunk :]
        return out

    def drain(self) -> list[tuple[int, NDArray[Any]]]:
        """Write and return what is held (the level's last rows)."""
        out = [self._write(self.held)] if len(self.held) else []
        self.held = self.held[:0]
        return out

    def _write(self, block: NDArray[Any]) -> tuple[int, NDArray[Any]]:
        y0 = self.start
        self.array[y0 : y0 + len(block)] = block
        self.start += len(block)
        return y0, block


def write_multiscales(group: zarr.Group, name: str, mpp: float, levels: int) -> None:
    """Record ``levels`` levels (of ``mpp`` at level 0) in the group's OME-NGFF metadata."""
    ome = dict(group.attrs["ome"])  # type: ignore[arg-type]
    ome["multiscales"] = [multiscales_attrs(name, mpp, levels)]
    group.attrs["ome"] = ome


def open_result(path: str | StorePath, *, require_complete: bool = True) -> zarr.Group:
    """Open a result store read-only; by default refuse one that is not complete and verified.

    ``require_complete=False`` only checks that it is a wsi-infer store (its
    attribute has the fields every store has); see :mod:`wsi_infer.verify`.
    """
    from wsi_infer.verify import check_complete

    path = parse_location(path)
    try:
        root = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
        raise IncompleteStoreError(f"{path}: not a zarr group ({exc})") from exc
    if require_complete:
        return check_complete(path, root)
    StoreInfo.read(root, path)  # refuses what is no wsi-infer store
    return root


def read_table(path: str | StorePath) -> Any:
    """The nucleus table of a complete store (a path or URL) as a pandas DataFrame."""
    import pandas as pd

    root = open_result(path)
    t: Any = root["tables/nuclei"]
    centroid, bbox, types = t["centroid"][:], t["bbox"][:], t["type"][:]
    names = list(StoreInfo.read(root, path).model.class_names)
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
