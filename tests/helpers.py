"""Helpers shared by tests: the command line in this process, comparison of result stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def invoke(*args: str | Path) -> tuple[int, str, str]:
    """Run ``wsi-infer ARGS`` in this process: exit code, stdout, stderr (exceptions other
    than a usage exit are raised, so a traceback fails the test)."""
    from click.testing import CliRunner

    from wsi_infer.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, stderr: str, *needles: str | Path, prog: str = "wsi-infer") -> str:
    """Assert a command failed with exit code 1 and one line ``PROG: error: ...`` on stderr
    (no traceback) holding each of ``needles``; return that line."""
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error:") and "Traceback" not in stderr, stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


def assert_same_store(a: object, b: object, min_nuclei: int = 100) -> None:
    """Two complete stores hold identical labels (every level) and tables."""
    import zarr

    from wsi_infer.store import TABLE_COLUMNS

    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    ia, ib = ra.attrs["wsi_infer"], rb.attrs["wsi_infer"]
    assert ia["status"] == ib["status"] == "complete"
    for group in ("labels/nuclei", "labels/types"):
        levels = sorted(ra[group].array_keys())
        assert levels == sorted(rb[group].array_keys())
        for level in levels:
            np.testing.assert_array_equal(ra[f"{group}/{level}"][:], rb[f"{group}/{level}"][:])
    for col in TABLE_COLUMNS:
        np.testing.assert_array_equal(ra[f"tables/nuclei/{col}"][:], rb[f"tables/nuclei/{col}"][:])
    ids = ra["tables/nuclei/id"][:]
    assert ids.tolist() == list(range(1, len(ids) + 1))  # no nucleus twice, none lost
    assert ia["nuclei"] == ib["nuclei"] == len(ids) >= min_nuclei
