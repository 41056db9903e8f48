"""Listing many files (issue #13): the fast folder walk, the column-wise manifest read and the parallel
remote listing give the records the former code gave: keys, uris, labels, splits, rejects, order.

No timing is asserted here (benchmarks/bench_listing.py measures them).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from featurelib import sources
from featurelib.sources import list_folder, list_inputs, split_of

FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}


def former_walk(root: str) -> list[tuple[str, str, bool]]:
    """The os.walk listing featurelib had before issue #13 (every file checked with realpath)."""
    found = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                path = os.path.join(directory, name)
                found.append((os.path.relpath(path, root).replace(os.sep, "/"), path, False))
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """5,000 hard links to one PNG in 10 class folders (two levels deep in some), loose files in the root,
    hidden files and folders, symbolic links inside and out of the root, a link to a folder, a broken
    link and a FIFO."""
    base = tmp_path_factory.mktemp("tree")
    source = base / "one.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    root = base / "root"
    for i in range(5000):
        folder = root / f"class_{i % 10}" / (f"sub{i % 3}" if i % 7 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        os.link(source, folder / f"img_{i:05d}.png")
    (root / "loose.png").write_bytes(b"x")
    (root / ".hidden.png").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "a.png").write_bytes(b"x")
    (root / "class_1" / ".DS_Store").write_bytes(b"x")
    (base / "outside.png").write_bytes(b"x")
    os.symlink(base / "outside.png", root / "class_2" / "escape.png")
    os.symlink(root / "class_3" / "img_00003.png", root / "class_2" / "inside-link.png")
    os.symlink(root / "class_4", root / "class_2" / "folder-link")
    os.symlink(root / "nowhere.png", root / "class_5" / "broken.png")
    os.mkfifo(root / "class_6" / "pipe.png")
    return root


def test_folder_listing_is_what_it_was(tree, monkeypatch):
    now = list_folder(str(tree), seed=3, fractions=FRACTIONS)
    monkeypatch.setattr(sources, "_walk_local", former_walk)
    before = list_folder(str(tree), seed=3, fractions=FRACTIONS)
    assert now == before
    assert len(now.records) == 5000 + 1 + 4  # the FIFO, the escaping and the broken link are listed (rejected)
    assert [r.source_key for r in now.records] == sorted(r.source_key for r in now.records)
    rejects = {r.source_key: r.reject[0] for r in now.records if r.reject}
    assert rejects == {"class_2/escape.png": "invalid_input", "class_5/broken.png": "invalid_input",
                       "class_6/pipe.png": "invalid_input"}
    by_key = {r.source_key: r for r in now.records}
    assert by_key["class_0/sub0/img_00000.png"].label_name == "class_0"
    assert by_key["loose.png"].label == -1
    assert by_key["class_2/inside-link.png"].reject is None
    assert all(r.split == split_of(3, r.source_key, FRACTIONS) for r in now.records if r.reject is None)
    # A trailing slash and a file:// root list the same records.
    slash = list_folder(str(tree) + "/", seed=3, fractions=FRACTIONS).records
    assert [(r.source_key, r.split, r.reject) for r in slash] == [(r.source_key, r.split, r.reject) for r in now.records]
    assert list_folder(f"file://{tree}", seed=3, fractions=FRACTIONS) == now


def former_manifest_rows(path: str, storage_options) -> dict:
    """The rows as the former code read them (a dict per row), turned into columns."""
    table_rows = pq.read_table(path).to_pylist() if path.endswith(".parquet") else pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={c: "string" for c in ("uri", "label", "split", "id")},
                                                   strings_can_be_null=True)).to_pylist()
    names = list(table_rows[0])
    return {name: [row.get(name) for row in table_rows] for name in names}


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_listing_is_what_it_was(tree, tmp_path, kind, monkeypatch):
    listed = list_folder(str(tree))
    rows = [r for r in listed.records if r.reject is None][:4000]
    table = pa.table({
        "uri": [r.uri if i % 50 else os.path.relpath(r.uri, tmp_path) for i, r in enumerate(rows)] + [None, ""],
        "label": [r.label_name for r in rows] + ["x", None],
        "split": [("train", "val", None, "bogus")[i % 4] for i in range(len(rows))] + [None, None],
        "id": [None if i % 3 else f"id{i % 1000:04d}" for i in range(len(rows))] + ["id0000", None],
    })
    path = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    now = list_inputs(str(path), seed=5, fractions=FRACTIONS)
    monkeypatch.setattr(sources, "_read_manifest_table", former_manifest_rows)
    assert now == list_inputs(str(path), seed=5, fractions=FRACTIONS)
    assert len(now.records) == len(rows) + 2
    details = " | ".join(r.reject[1] for r in now.records if r.reject)
    assert "has no uri" in details and "repeats id 'id0000'" in details and "has split 'bogus'" in details


def test_remote_folders_are_listed_in_parallel_with_the_same_records():
    import fsspec

    fs = fsspec.filesystem("memory")
    for i in range(600):
        fs.pipe(f"/listing-bucket/root/class_{i % 12}/{'deep/' if i % 5 == 0 else ''}img_{i:04d}.png", b"x")
    fs.pipe("/listing-bucket/root/loose.png", b"x")
    fs.pipe("/listing-bucket/root/.hidden/a.png", b"x")
    fs.pipe("/listing-bucket/root/class_1/.hidden.png", b"x")
    try:
        calls = []
        find = fs.find
        fs.find = lambda path, **kw: calls.append(path) or find(path, **kw)
        now = list_folder("memory://listing-bucket/root", seed=1)
        assert len(calls) == 12  # one find per class folder
        fs.find = find
        expected = sorted(p for p in find("/listing-bucket/root", withdirs=False) if "/." not in p)
        assert [r.uri for r in now.records] == [f"memory://{p}" for p in expected]
        assert [r.source_key for r in now.records] == [p[len("/listing-bucket/root/"):] for p in expected]
        assert {r.label_name for r in now.records} == {f"class_{i}" for i in range(12)} | {None}
    finally:
        fs.rm("/listing-bucket", recursive=True)
        fs.__dict__.pop("find", None)
