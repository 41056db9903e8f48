"""Hostile names through every engine (issue: reliability): file names and labels are data, never paths.

One corpus of real digits whose file names hold spaces, unicode, ``%``, a
newline and 200 characters, with a 200-character class folder, the same bytes
at two paths and a symlink out of the root; and one manifest whose labels are
``../../etc``, ``/abs``, empty and 300 characters long. Each runs once on the
local engine, Beam and Spark (the session's ``local[2,3]``): the ledger holds,
the engines write the same bytes, labels come back exactly as given, and
nothing is written outside the output.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import re
import shutil

import pytest

from conftest import write_spec
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.spec import RunSpec
from ledger import assert_ledger

LONG_LABEL = "L" * 200
HOSTILE_FILE_NAMES = ["with space.png", "ünïcødé-数字.png", "100%.png", "new\nline.png", "x" * 200 + ".png",
                      "-rf.png", ".hidden-looking but not.png"[1:]]
MANIFEST_LABELS = ["../../etc", "/abs", "", "M" * 300, "ok"]
#: Every path featurelib writes under an output, whatever the inputs are called.
LAYOUT = re.compile(r"^(_manifest\.json|stats\.json|(parquet|rejects)/part-\d{5}-of-\d{5}\.parquet"
                    r"|hdf5/part-\d{5}-of-\d{5}\.h5|hdf5/features\.h5|stats/part-\d{5}-of-\d{5}\.json)$")


@pytest.fixture(scope="module")
def corpora(digits_dir, tmp_path_factory):
    """(folder root, expected {key: reason}), (manifest path, expected {key: reason}), the parent folder."""
    base = tmp_path_factory.mktemp("hostile")
    digits = sorted(digits_dir.rglob("*.png"))[::40]  # 45 real digits
    root = base / "folder"
    expected: dict[str, str | None] = {}
    for path in digits[:30]:
        rel = path.relative_to(digits_dir)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / rel)
        expected[rel.as_posix()] = None
    for name, path in zip(HOSTILE_FILE_NAMES, digits[30:]):
        shutil.copyfile(path, root / "3" / name)
        expected[f"3/{name}"] = None
    (root / LONG_LABEL).mkdir()
    shutil.copyfile(digits[40], root / LONG_LABEL / "a.png")
    expected[f"{LONG_LABEL}/a.png"] = None
    shutil.copyfile(digits[0], root / "3" / "same bytes as another.png")  # written twice without dedup
    expected["3/same bytes as another.png"] = None
    outside = base / "outside-secret.png"
    shutil.copyfile(digits[41], outside)
    os.symlink(outside, root / "3" / "escape.png")
    expected["3/escape.png"] = "invalid_input"

    manifest = base / "manifest" / "inputs.csv"
    manifest.parent.mkdir()
    manifest_expected: dict[str, str | None] = {}
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label", "id"])
        for index, (label, path) in enumerate(zip(MANIFEST_LABELS * 3, digits[:15])):
            key = f"row-{index}"
            writer.writerow([str(path), label, key])
            manifest_expected[key] = None
    return (root, expected), (manifest, manifest_expected), base


def engines(spark):
    from jobs.extract_features import SparkEngine
    from pipelines.extract_features import BeamEngine

    return {"local": lambda: LocalEngine(2), "beam": lambda: BeamEngine([]),
            "spark": lambda: SparkEngine(spark)}


def digest(out: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for kind in ("parquet", "rejects") for p in sorted((out / kind).glob("*"))}


def files_under(folder: pathlib.Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.parametrize("which", ["folder", "manifest"])
def test_hostile_names_and_labels_are_data_on_every_engine(which, corpora, spark, tmp_path):
    (root, expected), (manifest, manifest_expected), base = corpora
    source, keys = (root, expected) if which == "folder" else (manifest, manifest_expected)
    spec_path = write_spec(tmp_path / "spec.yaml", failures={"max_reject_fraction": 0.5},
                           features=[{"name": "color_stats"}, {"name": "hog", "params": {"pixels_per_cell": [8, 8]}}],
                           output={"shards": 3, "formats": ["parquet", "hdf5"]})
    before = files_under(base)
    outputs = {}
    for name, make in engines(spark).items():
        out = tmp_path / name
        spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(source), output=str(out))
        manifest_doc = execute(spec, make(), log=lambda m: None).manifest
        rejected = assert_ledger(out, set(keys))
        assert rejected == {k: v for k, v in keys.items() if v}, name
        bad_paths = sorted(p for p in files_under(out) if not LAYOUT.match(p) and p not in ("parquet", "hdf5",
                                                                                            "rejects", "stats"))
        assert not bad_paths, bad_paths  # no label, file name or temporary ever became a path
        outputs[name] = (out, manifest_doc)
    assert files_under(base) == before  # nothing written beside or above the inputs
    reference = digest(outputs["local"][0])
    for name, (out, _) in outputs.items():
        assert digest(out) == reference, name
    label_names = outputs["local"][1]["label_names"]
    if which == "folder":
        assert LONG_LABEL in label_names and "3" in label_names
    else:  # exactly as given, none of them a path; an empty label is unlabelled
        assert sorted(label_names) == sorted(label for label in MANIFEST_LABELS if label)
        import pyarrow.parquet as pq

        rows = [r for p in sorted((outputs["spark"][0] / "parquet").glob("*.parquet"))
                for r in pq.read_table(p, columns=["source_key", "label", "label_name"]).to_pylist()]
        by_key = {r["source_key"]: r for r in rows}
        for index in range(15):
            label = MANIFEST_LABELS[index % len(MANIFEST_LABELS)]
            row = by_key[f"row-{index}"]
            assert row["label_name"] == (label or None)
            assert row["label"] == (label_names.index(label) if label else -1)
    assert json.loads((outputs["beam"][0] / "_manifest.json").read_text())["counts"] == outputs["local"][1]["counts"]
