"""How to build a backend, complete: one typed, picklable object made once per run.

A :class:`BackendRecipe` names everything a backend is built from: the backend
and model, the device, the precision, the inference threads, the cache
directory, and the tile and batch profile of the run (TensorRT builds its
optimisation profile from it).  The client builds its backend from the recipe
and ships the same recipe to every dask worker, so a worker builds exactly the
backend the client built, never one from partial information.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsi_infer.backends import Backend

__all__ = ["PRECISIONS", "BackendRecipe"]

#: Precisions a recipe may ask for; ``None`` leaves the backend's default (fp32 on the
#: CPU, fp16 on CUDA).
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class BackendRecipe:
    """Everything a backend is built from.

    ``tile_sizes``: the square tile edges the run feeds the model (empty: the
    model config's); ``batch``: ``(min, opt, max)`` batch sizes.  Backends that
    compile for fixed shapes (TensorRT) build their profile from these; the
    others take any shape.  ``sha256``: the model identity the client saw, which
    a worker's copy must match (empty: not checked).
    """

    backend: str
    model: str
    device: str = "cpu"
    precision: str | None = None
    threads: int | None = None
    cache_dir: str | None = None
    tile_sizes: tuple[int, ...] = ()
    batch: tuple[int, int, int] = (1, 2, 2)
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.backend or not self.model:
            raise ValueError("a backend recipe needs a backend and a model")
        if self.precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if any(t < 32 or t % 32 for t in self.tile_sizes):
            raise ValueError(f"tile sizes must be multiples of 32, got {list(self.tile_sizes)}")
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.batch}")
        object.__setattr__(self, "tile_sizes", tuple(sorted(set(self.tile_sizes))))

    @classmethod
    def for_run(
        cls,
        backend: str,
        model: str | Path,
        params: Any,
        *,
        device: str = "cpu",
        precision: str | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> BackendRecipe:
        """The recipe of a run with :class:`~wsi_infer.params.RunParams` ``params``: its tile
        size, and batches from 1 (a slide's last batch) to its batch size.  ``backend="auto"``
        is resolved here, once, for ``device``."""
        if backend == "auto":
            from wsi_infer.backends import default_backend

            backend = default_backend(device)
        if threads is None and backend == "onnxruntime" and device == "cpu":
            # The run's threads share the cores: each model call gets its share, and
            # the calls run side by side (see OnnxRuntimeBackend.concurrency).
            from wsi_infer.backends import cpu_cores

            threads = max(1, cpu_cores() // max(1, int(params.workers)))
        bs = int(params.batch_size)
        return cls(
            backend=backend,
            model=str(model),
            device=device,
            precision=precision,
            threads=threads,
            cache_dir=None if cache_dir is None else str(cache_dir),
            tile_sizes=(int(params.tile_size),),
            batch=(1, bs, bs),
        )

    @classmethod
    def of(cls, backend: Backend) -> BackendRecipe:
        """The recipe ``backend`` was built from, with its model identity and, where the model
        is a file or folder, its absolute path (workers may run in other folders; a backend
        made without :func:`~wsi_infer.backends.create_backend` gets the recipe of its name,
        model and device)."""
        recipe = getattr(backend, "recipe", None)
        if not isinstance(recipe, BackendRecipe):
            recipe = cls(backend.name, backend.model_source, backend.device)
        source = Path(recipe.model)
        if source.exists() and not source.is_absolute():
            recipe = replace(recipe, model=str(source.absolute()))
        return recipe.with_identity(backend.model_sha256)

    @classmethod
    def of_call(
        cls, backend: str, model: str | Path, device: str, threads: int | None, options: Any
    ) -> BackendRecipe:
        """The recipe of ``create_backend(backend, model, device=..., threads=..., **options)``."""
        opts = dict(options)
        tiles = {int(opts[k]) for k in ("tile_size", "min_tile", "max_tile") if opts.get(k)}
        lo = int(opts.get("min_batch", 1))
        hi = int(opts.get("max_batch", max(lo, 2)))
        opt = int(opts.get("opt_batch", hi))
        cache = opts.get("cache_dir")
        return cls(
            backend=backend,
            model=str(model),
            device=device,
            precision=opts.get("precision"),
            threads=threads,
            cache_dir=None if cache is None else str(cache),
            tile_sizes=tuple(tiles),
            batch=(lo, min(max(opt, lo), hi), hi),
        )

    def options(self) -> dict[str, Any]:
        """The keyword options of this recipe's backend factory."""
        opts: dict[str, Any] = {}
        if self.backend in ("onnxruntime", "tensorrt") and self.cache_dir is not None:
            opts["cache_dir"] = self.cache_dir
        if self.precision is not None:
            opts["precision"] = self.precision
        if self.backend == "tensorrt":
            lo, opt, hi = self.batch
            opts.update(min_batch=lo, opt_batch=opt, max_batch=hi)
            if self.tile_sizes:
                opts.update(
                    tile_size=self.tile_sizes[-1],
                    min_tile=self.tile_sizes[0],
                    max_tile=self.tile_sizes[-1],
                )
        return opts

    def build(self) -> Backend:
        """The backend, built (``backend.recipe`` is this recipe)."""
        from wsi_infer.backends import create_backend

        return create_backend(
            self.backend, self.model, device=self.device, threads=self.threads, **self.options()
        )

    def with_identity(self, sha256: str) -> BackendRecipe:
        return replace(self, sha256=sha256)
