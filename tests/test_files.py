"""The shared file helpers: sha256, atomic write, refusal of an existing output, summary CSV."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from wsi_infer.batch import SlideResult, write_summary
from wsi_infer.errors import OutputExistsError
from wsi_infer.files import atomic_write, file_sha256
from wsi_infer.store import refuse_existing


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one read block
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_on_success_only(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left
    with atomic_write(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        tmp.write_text("new")
        assert out.read_text() == "old"  # not visible before the block ends
    assert out.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_refuse_existing_names_the_path_and_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "x.geojson"
    assert refuse_existing(out, overwrite=False) is False
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="--overwrite") as info:
        refuse_existing(tmp_path / "link", overwrite=False)  # a dangling link is there too
    assert str(tmp_path / "link") in str(info.value) and "\n" not in str(info.value)
    out.write_text("mine")
    assert refuse_existing(out, overwrite=True) is True
    assert out.read_text() == "mine"  # refusing never removes


def test_summary_csv_bytes(tmp_path: Path) -> None:
    results = [
        SlideResult("a.svs", "a.zarr", "complete", 12, 1.5, None, 4, 2.25, []),
        SlideResult(
            "b,c.svs",
            "b.zarr",
            "failed",
            None,
            0.25,
            'b,c.svs: cannot read "tile" 3',
            None,
            None,
            ["few nuclei", "odd, sizes"],
        ),
        SlideResult("d.svs", "d.zarr", "complete", 1, 2.0, "two\nlines", 1, 0.5, ["x"]),
    ]
    write_summary(tmp_path, results)
    assert (tmp_path / "summary.csv").read_bytes() == (
        b"slide,store,status,nuclei,seconds,error,tiles,tiles_per_second,warnings\n"
        b"a.svs,a.zarr,complete,12,1.5,,4,2.25,\n"
        b'"b,c.svs",b.zarr,failed,,0.25,"b,c.svs: cannot read ""tile"" 3",,,'
        b'"few nuclei | odd, sizes"\n'
        b'd.svs,d.zarr,complete,1,2.0,"two\nlines",1,0.5,x\n'
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json"]
