"""The options of a run, defined once.

:class:`RunOptions` is the one place a run flag is declared: each field carries
its CLI flag, its help text and whether it enters the resume fingerprint (in its
``metadata``, see :func:`option`).  From it come

* the click options of ``wsi-infer run`` (:func:`run_option_decorators`),
* the parameters recorded in a store and compared when it is resumed
  (:meth:`RunOptions.params`, :func:`fingerprinted`),
* the batch job (:class:`wsi_infer.batch.BatchJob` holds the options whole).

Adding a flag means adding a field here.  There is one set of defaults: these
fields'.  ``tile_size``, ``overlap`` and the post-processing thresholds default to
``None``, "the model's own" (its ``config.json``); a value given overrides it.

``threads`` are threads per process (reading tiles and post-processing beside the
model); ``processes`` are the worker processes of a local dask cluster (the flag is
also accepted under its former name, ``--workers``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from wsi_infer.errors import ParameterError

if TYPE_CHECKING:
    from wsi_infer.params import RunParams

__all__ = [
    "OptionSpec",
    "RunOptions",
    "fingerprinted",
    "option",
    "option_specs",
    "run_option_decorators",
]

F = TypeVar("F", bound=Callable[..., Any])

#: What an option defaulting to ``None`` means, in its help.
MODEL_DEFAULT = "the model's own, from its config"


@dataclass(frozen=True)
class OptionSpec:
    """How a :class:`RunOptions` field appears on the command line and in the fingerprint.

    ``flags``: the option's names (the first is its name in help texts);
    ``fingerprint``: whether a store made with another value is another result (it
    is then refused on resume); ``type``: the click type (a callable returning it,
    so that click is imported only by the CLI); ``default_help``: what the default
    means when it is ``None``.
    """

    flags: tuple[str, ...]
    help: str
    fingerprint: bool
    type: Callable[[], Any] | None = None
    default_help: str | None = None

    def __post_init__(self) -> None:
        if not self.flags or not all(f.startswith("-") for f in self.flags):
            raise ValueError(f"option flags must start with '-', got {self.flags}")
        if not self.help:
            raise ValueError(f"option {self.flags[0]} needs a help text")


def option(
    *flags: str,
    help: str,
    fingerprint: bool,
    type: Callable[[], Any] | None = None,
    default_help: str | None = None,
) -> dict[str, OptionSpec]:
    """A field's ``metadata`` declaring it an option."""
    return {"option": OptionSpec(tuple(flags), help, fingerprint, type, default_help)}


def _int_min(lo: int) -> Callable[[], Any]:
    def make() -> Any:
        import click

        return click.IntRange(min=lo)

    return make


def _float_range(
    lo: float | None = None, hi: float | None = None, *, open_: bool = False
) -> Callable[[], Any]:
    def make() -> Any:
        import click

        return click.FloatRange(lo, hi, min_open=open_, max_open=open_ and hi is not None)

    return make


def _choice(*values: str) -> Callable[[], Any]:
    def make() -> Any:
        import click

        return click.Choice(list(values))

    return make


def _path() -> Any:
    import click

    return click.Path(path_type=Path)


@dataclass(frozen=True)
class RunOptions:
    """Every option of a run (``wsi-infer run``), with its one default."""

    model: str = field(
        default="default",
        metadata=option(
            "--model",
            "-m",
            help="Bundled model name, checkpoint directory, or exported MODEL.onnx (run by "
            "onnxruntime).",
            fingerprint=True,  # as the model's identity (the hash of what runs)
        ),
    )
    backend: str = field(
        default="auto",
        metadata=option(
            "--backend",
            help="Inference backend: torch, onnxruntime, tensorrt, or auto (the fastest "
            "available on the device: onnxruntime on CPU).",
            fingerprint=True,  # in the model's identity
        ),
    )
    device: str = field(
        default="cpu",
        metadata=option(
            "--device", help="Where the model runs.", fingerprint=True, type=_choice("cpu", "cuda")
        ),
    )
    batch_size: int = field(
        default=2,
        metadata=option(
            "--batch-size",
            help="Tiles per model call (raise it on a GPU).",
            fingerprint=True,  # a batch's make-up may change results in the last bits
            type=_int_min(1),
        ),
    )
    tile_size: int | None = field(
        default=None,
        metadata=option(
            "--tile-size",
            help="Model input edge in pixels. A multiple of 32, and of the model's attention "
            "window if it has one.",
            fingerprint=True,
            type=_int_min(64),
            default_help=MODEL_DEFAULT,
        ),
    )
    overlap: int | None = field(
        default=None,
        metadata=option(
            "--overlap",
            help="Pixels of context shared by neighbouring tiles, even.",
            fingerprint=True,
            type=_int_min(0),
            default_help=MODEL_DEFAULT,
        ),
    )
    foreground_threshold: float | None = field(
        default=None,
        metadata=option(
            "--foreground-threshold",
            help="Nucleus probability above which a pixel is nucleus.",
            fingerprint=True,
            type=_float_range(0, 1, open_=True),
            default_help=MODEL_DEFAULT,
        ),
    )
    marker_threshold: float | None = field(
        default=None,
        metadata=option(
            "--marker-threshold",
            help="Distance-map level above which a nucleus' core starts; higher splits more.",
            fingerprint=True,
            type=_float_range(0, 1, open_=True),
            default_help=MODEL_DEFAULT,
        ),
    )
    min_area_um2: float | None = field(
        default=None,
        metadata=option(
            "--min-area",
            help="Smallest nucleus kept, in µm².",
            fingerprint=True,
            type=_float_range(0),
            default_help=MODEL_DEFAULT,
        ),
    )
    mpp: float | None = field(
        default=None,
        metadata=option(
            "--mpp",
            help="Slide resolution in micrometres per pixel (overrides the metadata).",
            fingerprint=True,
            type=_float_range(0, open_=True),
            default_help="the slide's metadata",
        ),
    )
    threads: int = field(
        default=2,
        metadata=option(
            "--threads",
            help="Threads reading tiles and post-processing beside the model (per process).",
            fingerprint=False,
            type=_int_min(1),
        ),
    )
    processes: int | None = field(
        default=None,
        metadata=option(
            "--processes",
            "--workers",
            help="Start a local dask cluster of this many worker processes (--workers is "
            "the same option's former name).",
            fingerprint=False,
            type=_int_min(1),
            default_help="none, threads of this process only",
        ),
    )
    scheduler: str | None = field(
        default=None,
        metadata=option(
            "--scheduler",
            help="Run on an existing dask cluster (tcp://HOST:PORT).",
            fingerprint=False,
        ),
    )
    no_tissue_mask: bool = field(
        default=False,
        metadata=option(
            "--no-tissue-mask",
            help="Process the whole slide, glass included.",
            fingerprint=True,
        ),
    )
    tissue_mpp: float = field(
        default=8.0,
        metadata=option(
            "--tissue-mpp",
            help="Resolution of tissue detection, in µm per pixel.",
            fingerprint=True,
            type=_float_range(0, open_=True),
        ),
    )
    tissue_threshold: float | None = field(
        default=None,
        metadata=option(
            "--tissue-threshold",
            help="Saturation above which a pixel is tissue.",
            fingerprint=True,
            type=_float_range(0, 1),
            default_help="Otsu's threshold of the slide",
        ),
    )
    geojson: bool = field(
        default=False,
        metadata=option(
            "--geojson",
            help="Also write each store's nuclei as NAME.geojson beside it (QuPath).",
            fingerprint=False,
        ),
    )
    log_json: Path | None = field(
        default=None,
        metadata=option(
            "--log-json",
            help="Append one JSON line per event (started, progress, finished, failed).",
            fingerprint=False,
            type=_path,
        ),
    )
    strict: bool = field(
        default=False,
        metadata=option(
            "--strict",
            help="Fail slides whose results get plausibility warnings (wrong --mpp, no "
            "tissue, ...), instead of only warning.",
            fingerprint=False,
        ),
    )

    def __post_init__(self) -> None:
        for name in ("batch_size", "threads", "processes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ParameterError(f"{_flag(name)} must be at least 1, got {value}")
        if self.no_tissue_mask and self.tissue_threshold is not None:
            raise ParameterError("--no-tissue-mask and --tissue-threshold are mutually exclusive")
        if self.processes is not None and self.scheduler is not None:
            raise ParameterError("--processes (--workers) and --scheduler are mutually exclusive")

    def params(self, config: Any) -> RunParams:
        """The run's parameters for the model of ``config`` (``None`` values: the model's).

        Raises :class:`~wsi_infer.errors.ParameterError` for values it cannot run with.
        """
        from wsi_infer.params import RunParams
        from wsi_infer.tissue import TissueParams

        try:
            tissue = TissueParams(
                enabled=not self.no_tissue_mask,
                mpp=self.tissue_mpp,
                saturation_threshold=self.tissue_threshold,
            )
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        return RunParams.for_model(
            config,
            tile_size=self.tile_size,
            overlap=self.overlap,
            batch_size=self.batch_size,
            mpp=self.mpp,
            threads=self.threads,
            tissue=tissue,
            foreground_threshold=self.foreground_threshold,
            marker_threshold=self.marker_threshold,
            min_area_um2=self.min_area_um2,
        )


def option_specs() -> dict[str, OptionSpec]:
    """Each :class:`RunOptions` field's option, by field name, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(RunOptions)}


def _flag(name: str) -> str:
    return option_specs()[name].flags[0]


#: Fields of :class:`RunOptions` (and so of :class:`~wsi_infer.params.RunParams`, where they
#: share a name) that do not shape the output: not in the resume fingerprint.
NOT_FINGERPRINTED = frozenset(name for name, s in option_specs().items() if not s.fingerprint)


def fingerprinted(params: RunParams) -> dict[str, Any]:
    """The parameters a store's output depends on: all but those marked not to enter."""
    d = dataclasses.asdict(params)
    return {k: v for k, v in d.items() if k not in NOT_FINGERPRINTED}


def run_option_decorators(f: F) -> F:
    """Add one click option per :class:`RunOptions` field to the command ``f``.

    Each is passed to ``f`` under its field's name; ``RunOptions(**those)`` makes the options.
    """
    import click

    defaults = RunOptions()
    for fld in reversed(dataclasses.fields(RunOptions)):
        spec: OptionSpec = fld.metadata["option"]
        default = getattr(defaults, fld.name)
        kwargs: dict[str, Any] = {"help": spec.help}
        if isinstance(default, bool):
            kwargs["is_flag"] = True
        elif default is None:
            if spec.default_help:
                kwargs["help"] = f"{spec.help} [default: {spec.default_help}]"
        else:
            kwargs["default"] = default
            kwargs["show_default"] = True
        if spec.type is not None:
            kwargs["type"] = spec.type()
        f = click.option(*spec.flags, fld.name, **kwargs)(f)
    return f
