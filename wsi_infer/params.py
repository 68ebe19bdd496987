"""The parameters of a run: everything that shapes its output, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsi_infer.errors import ParameterError
from wsi_infer.options import RunOptions, fingerprinted
from wsi_infer.postprocess import PostprocessParams
from wsi_infer.tiling import TileGrid
from wsi_infer.tissue import TissueParams

__all__ = ["RunParams"]

_DEFAULTS = RunOptions()


@dataclass(frozen=True)
class RunParams:
    """Everything that shapes a run's output (recorded in the store), and its thread count.

    Made for a model by :meth:`for_model` (or :meth:`wsi_infer.options.RunOptions.params`),
    which fills in the model's tile size and overlap.  Built directly, the defaults of
    :class:`~wsi_infer.options.RunOptions` apply, and 512 / 64 px tiles when not given.
    """

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = _DEFAULTS.batch_size
    mpp: float | None = None
    #: Threads per process reading tiles and post-processing (not in the fingerprint).
    threads: int = _DEFAULTS.threads
    label_chunk: int = 512
    window_cols: int = 2048
    margin: int = 96
    tissue: TissueParams = field(default_factory=TissueParams)
    post: PostprocessParams = field(default_factory=PostprocessParams)

    def __post_init__(self) -> None:
        if self.tile_size < 64 or self.tile_size % 32:
            raise ValueError(
                f"tile size must be a multiple of 32 and at least 64, got {self.tile_size}"
            )
        TileGrid(1, 1, self.tile_size, self.overlap)  # validates overlap
        if self.batch_size < 1 or self.threads < 1:
            raise ValueError("batch size and threads must be at least 1")
        if self.margin < 8 or self.label_chunk < 64 or self.window_cols % self.label_chunk:
            raise ValueError(
                "margin >= 8, label_chunk >= 64, window_cols a multiple of label_chunk"
            )

    @classmethod
    def for_model(cls, config: Any, **given: Any) -> RunParams:
        """Parameters for a model: ``tile_size``, ``overlap`` and the post-processing
        thresholds default to the model's own (its config), anything in ``given`` that is
        not ``None`` overrides them.  Post-processing keys: ``foreground_threshold``,
        ``marker_threshold``, ``min_area_um2`` (smallest nucleus), ``min_marker_area_um2``.
        Raises :class:`ParameterError` for values the model cannot run with."""
        post_keys = ("foreground_threshold", "marker_threshold")
        post: dict[str, Any] = {k: given.pop(k) for k in post_keys if k in given}
        px = config.mpp**2
        min_area = given.pop("min_area_um2", None)
        if min_area is not None:
            post["min_area"] = max(1, round(min_area / px))
        min_marker = given.pop("min_marker_area_um2", None)
        if min_marker is not None:
            post["min_marker_area"] = round(min_marker / px)
        values = {k: v for k, v in given.items() if v is not None}
        values.setdefault("tile_size", config.tile_size)
        values.setdefault("overlap", config.overlap)
        try:
            params = cls(post=PostprocessParams.for_model(config, **post), **values)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        params.check_model(config)
        return params

    def check_model(self, config: Any) -> None:
        """Raise :class:`ParameterError` when the model cannot run on these tiles."""
        w = int(getattr(config, "attention_window", 0) or 0)
        if not w:
            return
        bad = [
            f"{name} {value}"
            for name, value in (("tile size", self.tile_size), ("overlap", self.overlap))
            if value % w
        ]
        if bad:
            lo = max(w, self.tile_size // w * w)
            raise ParameterError(
                f"{' and '.join(bad)} must be multiples of the model's {w}-px attention "
                f"window, so that every tile lies on the slide-wide window grid (e.g. "
                f"--tile-size {lo} or {lo + w} with --overlap {max(w, self.overlap // w * w)})"
            )

    def output_defining(self) -> dict[str, Any]:
        """The parameters the output depends on: those of the resume fingerprint (all but
        the ones :class:`~wsi_infer.options.RunOptions` marks otherwise: the thread count)."""
        return fingerprinted(self)
