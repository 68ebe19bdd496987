"""Progress bars of a resumed run start at what the interrupted one finished."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from localmodel import DarkNucleiBackend
from numpy.typing import NDArray

from wsi_infer.engine import RunParams, run_slide
from wsi_infer.tissue import TissueParams


class _Bar:
    def __init__(self, total: int, desc: str, initial: int) -> None:
        self.total, self.desc, self.initial, self.n = total, desc, initial, initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


class _FailsAt(DarkNucleiBackend):
    def __init__(self, call: int) -> None:
        super().__init__(mpp=1.0)
        self.calls, self.fail_at = 0, call

    def __call__(self, tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("stopped in the middle")
        return super().__call__(tiles)


def test_resumed_predict_bar_starts_at_the_tiles_done(
    make_slide: Callable[..., Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(150, 256, (768, 768, 3), dtype=np.uint8)
    slide = make_slide("progress.tif", image, mpp=1.0)
    out = tmp_path / "r.zarr"
    params = RunParams(tile_size=256, batch_size=1, threads=1, tissue=TissueParams(enabled=False))
    bars: list[_Bar] = []

    def progress(total: int, desc: str, initial: int = 0) -> Any:
        bars.append(_Bar(total, desc, initial))
        return bars[-1]

    with pytest.raises(RuntimeError, match="stopped"):
        run_slide(slide, out, _FailsAt(4), params, progress=progress)
    first = next(b for b in bars if b.desc == "predict")
    assert first.initial == 0 and 3 <= first.n < first.total
    bars.clear()
    run_slide(slide, out, DarkNucleiBackend(mpp=1.0), params, progress=progress)
    resumed = next(b for b in bars if b.desc == "predict")
    assert resumed.total == first.total
    assert resumed.initial == first.n  # the tiles on disk, counted from the start
    assert resumed.n == resumed.total
