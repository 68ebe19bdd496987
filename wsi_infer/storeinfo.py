"""A store's provenance, typed: the root attribute ``wsi_infer`` read and written here only.

:class:`StoreInfo` is what a run records in its store: the software, the model
and backend, the run's parameters, the slide, the label grid, the tissue mask,
the resume fingerprint, the run's status and, once it is done, the nucleus count,
statistics, digests and timings.  Every module reads it through
:meth:`StoreInfo.read` and writes it through :meth:`StoreInfo.write`; nothing else
looks inside the attribute.

The attribute is JSON (``zarr.json``).  Its format is that of the stores written
before this module: each part is read from the same keys, keys this version does
not know are kept as they are (``extra``) and written back unchanged, and a part
that is absent from an older store is ``None``.  A store whose attribute lacks a
field every store has, or holds one of the wrong type, is refused in one line
(:class:`~wsi_infer.errors.IncompleteStoreError`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import zarr

from wsi_infer.errors import IncompleteStoreError

__all__ = [
    "ATTR",
    "BackendRecord",
    "ClassStatistics",
    "ModelRecord",
    "SlideRecord",
    "SoftwareRecord",
    "Statistics",
    "StoreInfo",
    "TissueRecord",
    "group_location",
]

#: The root attribute that holds a store's provenance.
ATTR = "wsi_infer"

P = TypeVar("P", bound="_Part")


class _Garbled(Exception):  # internal: which keys are wrong
    def __init__(self, keys: list[str]) -> None:
        super().__init__(", ".join(keys))
        self.keys = keys


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check(kind: Any, v: Any) -> Any:
    """``v`` as the field kind wants it, else ValueError."""
    if kind == "str":
        ok = isinstance(v, str)
    elif kind == "int":
        ok = _is_int(v)
    elif kind == "number":
        ok = _is_number(v)
    elif kind == "map":
        ok = isinstance(v, dict)
        v = dict(v) if ok else v
    elif kind == "ints":
        ok = isinstance(v, list | tuple) and all(_is_int(x) for x in v)
        v = tuple(v) if ok else v
    elif kind == "maps":
        ok = isinstance(v, list | tuple) and all(isinstance(x, dict) for x in v)
        v = tuple(dict(x) for x in v) if ok else v
    else:
        raise TypeError(f"unknown field kind {kind!r}")
    if not ok:
        raise ValueError(kind)
    return v


def _encode(v: Any) -> Any:
    if isinstance(v, _Part):
        return v.to_dict()
    if isinstance(v, tuple | list):
        return [_encode(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _encode(x) for k, x in v.items()}
    return v


def _kind(k: Any, *, keep_none: bool = False) -> dict[str, Any]:
    """A field's metadata: its JSON kind (``str``, ``int``, ``number``, ``map``, ``ints``,
    ``maps``, or a part class), and whether ``None`` is written (``null``) or left out."""
    return {"kind": k, "keep_none": keep_none}


@dataclass(frozen=True, kw_only=True)
class _Part:
    """A part of the attribute: typed fields, and the keys it does not know in ``extra``."""

    #: Keys of its JSON object that are none of its fields, kept as they are.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def _fields(cls) -> list[dataclasses.Field[Any]]:
        return [f for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls: type[P], data: Any) -> P:
        """The part from its JSON object; :class:`_Garbled` names the keys that are wrong."""
        if not isinstance(data, dict):
            raise _Garbled([""])
        values: dict[str, Any] = {}
        bad: list[str] = []
        for f in cls._fields():
            k = f.metadata["kind"]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            v = data.get(f.name)
            if v is None:
                if required:
                    bad.append(f.name)
                continue
            try:
                if isinstance(k, type) and issubclass(k, _Part):
                    values[f.name] = k.from_dict(v)
                elif isinstance(k, tuple):  # ("parts", PartClass): a JSON object of parts
                    if not isinstance(v, dict):
                        raise _Garbled([""])
                    values[f.name] = {str(n): k[1].from_dict(x) for n, x in v.items()}
                else:
                    values[f.name] = _check(k, v)
            except _Garbled as exc:
                bad += [f"{f.name}.{sub}".rstrip(".") for sub in exc.keys]
            except ValueError:
                bad.append(f.name)
        if bad:
            raise _Garbled(bad)
        known = {f.name for f in cls._fields()}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The part as its JSON object (keys in field order, then the unknown ones)."""
        out: dict[str, Any] = {}
        for f in self._fields():
            v = getattr(self, f.name)
            if v is None and not f.metadata["keep_none"]:
                continue
            out[f.name] = _encode(v)
        out.update(_encode(getattr(self, "extra", {})))
        return out


@dataclass(frozen=True, kw_only=True)
class SoftwareRecord(_Part):
    """The program that made the store."""

    name: str = field(metadata=_kind("str"))
    version: str = field(metadata=_kind("str"))


@dataclass(frozen=True, kw_only=True)
class BackendRecord(_Part):
    """The inference backend that ran the model, and where."""

    name: str = field(metadata=_kind("str"))
    device: str = field(metadata=_kind("str"))


@dataclass(frozen=True, kw_only=True)
class ModelRecord(_Part):
    """The model as it ran: its config (``config.json``) with the hashes of what ran.

    In JSON one object: the config's keys beside ``sha256``, ``precision``,
    ``source`` and ``source_sha256``; here the config is :attr:`config` (``extra``).
    """

    sha256: str | None = field(default=None, metadata=_kind("str"))
    precision: str | None = field(default=None, metadata=_kind("str"))
    source: str | None = field(default=None, metadata=_kind("str"))
    source_sha256: str | None = field(default=None, metadata=_kind("str"))
    #: The model's config (every key that is none of the above).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names, colours = self.extra.get("class_names", []), self.extra.get("class_colours", [])
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ValueError("model class_names must be a list of names")
        if not isinstance(colours, list | tuple) or not all(
            isinstance(c, list | tuple) and len(c) >= 3 and all(_is_int(x) for x in c)
            for c in colours
        ):
            raise ValueError("model class_colours must be a list of RGB triples")

    @classmethod
    def from_dict(cls, data: Any) -> ModelRecord:
        try:
            return super().from_dict(data)
        except ValueError as exc:
            bad = "class_names" if "class_names" in str(exc) else "class_colours"
            raise _Garbled([bad]) from None

    def to_dict(self) -> dict[str, Any]:
        """The config's keys, then the hashes (the order runs have always written)."""
        hashes = super().to_dict()
        for k in self.extra:
            hashes.pop(k, None)
        return {**_encode(self.extra), **hashes}

    @classmethod
    def of(cls, config: Mapping[str, Any], **hashes: str | None) -> ModelRecord:
        """The record of a model config (``ModelConfig.to_dict()``) and its hashes."""
        return cls(**hashes, extra=dict(config))

    @property
    def config(self) -> Mapping[str, Any]:
        return self.extra

    @property
    def name(self) -> str | None:
        return self.extra.get("name")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.extra.get("class_names", ()))

    @property
    def class_colours(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(c) for c in self.extra.get("class_colours", ()))


@dataclass(frozen=True, kw_only=True)
class SlideRecord(_Part):
    """The slide a store was made from: where, its identity, reader and resolution."""

    path: str = field(metadata=_kind("str"))
    name: str | None = field(default=None, metadata=_kind("str"))
    size_bytes: int | None = field(default=None, metadata=_kind("int"))
    mtime_ns: int | None = field(default=None, metadata=_kind("int"))
    sample_sha256: str | None = field(default=None, metadata=_kind("str"))
    reader: str | None = field(default=None, metadata=_kind("str"))
    vendor: str | None = field(default=None, metadata=_kind("str"))
    dimensions: tuple[int, ...] | None = field(default=None, metadata=_kind("ints"))
    levels: int | None = field(default=None, metadata=_kind("int"))
    mpp: float = field(metadata=_kind("number"))
    mpp_source: str | None = field(default=None, metadata=_kind("str"))

    def identity(self) -> dict[str, Any]:
        """What the resume fingerprint takes of the slide."""
        d = self.to_dict()
        return {k: d.get(k) for k in ("path", "size_bytes", "mtime_ns", "sample_sha256", "mpp")}


@dataclass(frozen=True, kw_only=True)
class TissueRecord(_Part):
    """The tissue mask's resolution and the share of the slide it covers."""

    mpp: float = field(metadata=_kind("number"))
    fraction: float = field(metadata=_kind("number"))


@dataclass(frozen=True, kw_only=True)
class ClassStatistics(_Part):
    """One class' share of the nuclei."""

    count: int = field(metadata=_kind("int"))
    fraction: float | None = field(default=None, metadata=_kind("number", keep_none=True))
    density_per_mm2: float | None = field(default=None, metadata=_kind("number", keep_none=True))
    mean_area_um2: float | None = field(default=None, metadata=_kind("number", keep_none=True))


@dataclass(frozen=True, kw_only=True)
class Statistics(_Part):
    """Counts, densities and mean areas (:func:`wsi_infer.stats.slide_statistics`), and the
    plausibility warnings (:class:`wsi_infer.plausibility.Finding` as dicts)."""

    nuclei: int = field(metadata=_kind("int"))
    tissue_area_mm2: float = field(metadata=_kind("number"))
    density_per_mm2: float | None = field(default=None, metadata=_kind("number", keep_none=True))
    mean_area_um2: float | None = field(default=None, metadata=_kind("number", keep_none=True))
    classes: Mapping[str, ClassStatistics] = field(
        default_factory=dict, metadata=_kind(("parts", ClassStatistics))
    )
    warnings: tuple[Mapping[str, Any], ...] | None = field(default=None, metadata=_kind("maps"))

    @property
    def warning_lines(self) -> list[str]:
        """The plausibility warnings, one line each."""
        return [str(w["message"]) for w in self.warnings or () if "message" in w]


#: Statuses of a store: being created (object storage), running, failed, complete.
STATUSES = ("creating", "running", "failed", "complete")


@dataclass(frozen=True, kw_only=True)
class StoreInfo(_Part):
    """A store's root attribute ``wsi_infer``, typed (see the module docstring)."""

    software: SoftwareRecord | None = field(default=None, metadata=_kind(SoftwareRecord))
    model: ModelRecord = field(metadata=_kind(ModelRecord))
    backend: BackendRecord | None = field(default=None, metadata=_kind(BackendRecord))
    #: The run's parameters (:class:`~wsi_infer.params.RunParams` as a dict), as recorded.
    parameters: Mapping[str, Any] | None = field(default=None, metadata=_kind("map"))
    slide: SlideRecord = field(metadata=_kind(SlideRecord))
    run_mpp: float = field(metadata=_kind("number"))
    grid_shape: tuple[int, ...] = field(metadata=_kind("ints"))
    grid_to_level0: float = field(metadata=_kind("number"))
    tissue: TissueRecord | None = field(default=None, metadata=_kind(TissueRecord))
    tiles: int | None = field(default=None, metadata=_kind("int"))
    #: What a run must match to resume this store (:func:`wsi_infer.resume.fingerprint`).
    fingerprint: Mapping[str, Any] | None = field(default=None, metadata=_kind("map"))
    store_id: str | None = field(default=None, metadata=_kind("str"))
    started: str | None = field(default=None, metadata=_kind("str"))
    status: str = field(metadata=_kind("str"))
    nuclei: int | None = field(default=None, metadata=_kind("int"))
    #: ``"written"`` once the labels, table and statistics are all written.
    stage: str | None = field(default=None, metadata=_kind("str"))
    statistics: Statistics | None = field(default=None, metadata=_kind(Statistics))
    error: str | None = field(default=None, metadata=_kind("str"))
    seconds: float | None = field(default=None, metadata=_kind("number"))
    timings: Mapping[str, float] | None = field(default=None, metadata=_kind("map"))
    finished: str | None = field(default=None, metadata=_kind("str"))
    #: sha256 per node, recorded just before ``status: complete`` (:mod:`wsi_infer.verify`).
    digests: Mapping[str, str] | None = field(default=None, metadata=_kind("map"))

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is none of {', '.join(STATUSES)}")

    @classmethod
    def from_dict(cls, data: Any) -> StoreInfo:
        try:
            return super().from_dict(data)
        except ValueError:  # a value of the right type, but none a store can hold
            raise _Garbled(["status"]) from None

    @classmethod
    def parse(cls, where: object, data: Any) -> StoreInfo:
        """The info of the attribute value ``data`` of the store ``where`` (named in errors).

        Raises :class:`IncompleteStoreError` when it is none, lacks a field every store
        has, or holds one of the wrong type.
        """
        if not isinstance(data, dict):
            raise IncompleteStoreError(f"{where}: not a wsi-infer result (no '{ATTR}' attribute)")
        try:
            return cls.from_dict(data)
        except _Garbled as exc:
            raise IncompleteStoreError(
                f"{where}: its '{ATTR}' attribute lacks or garbles {', '.join(exc.keys)}: not a "
                "store wsi-infer wrote, or an edited one; run the slide again with --overwrite"
            ) from None

    @classmethod
    def read(cls, group: zarr.Group, where: object | None = None) -> StoreInfo:
        """The info of the store whose root group is ``group`` (``where`` names it in errors)."""
        return cls.parse(
            where if where is not None else group_location(group), group.attrs.get(ATTR)
        )

    def write(self, group: zarr.Group) -> None:
        """Write this info as the root attribute of ``group`` (one metadata write)."""
        group.attrs[ATTR] = self.to_dict()

    def attributes(self) -> dict[str, Any]:
        """The group attributes holding this info (for a group's first metadata)."""
        return {ATTR: self.to_dict()}

    def updated(self, **changes: Any) -> StoreInfo:
        """This info with ``changes``; an ``error`` is kept only while the status is failed."""
        info = dataclasses.replace(self, **changes)
        if info.status != "failed" and info.error is not None:
            info = dataclasses.replace(info, error=None)
        return info

    @property
    def warning_lines(self) -> list[str]:
        """The result's plausibility warnings, one line each (none before its statistics)."""
        return self.statistics.warning_lines if self.statistics is not None else []


def group_location(group: zarr.Group) -> str:
    """Where the store of ``group`` lies, for messages."""
    root = getattr(group.store, "root", None)
    return str(root) if root is not None else str(group.store)
