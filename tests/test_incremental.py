"""``featurize run --incremental``: a growing folder of real digits, processed generation by generation.

The first run writes 120 digits; then 60 other digits arrive with a new class folder of 3
images and 5 of the first inputs are deleted; the incremental run writes only what is new,
as ``*.g0002.*`` files, and commits a manifest over both generations. Everything is checked
from the files on disk, against a from-scratch run over the same sources.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurelib import cli
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.errors import UserError
from featurelib.io.dataset import open_dataset
from featurelib.io.readers import read_hdf5, read_parquet
from featurelib.spec import RunSpec
from ledger import assert_ledger, assert_ledger_across_generations

pytestmark = pytest.mark.timeout(300)

FEATURES = [{"name": "color_stats"}, {"name": "intensity_hist", "params": {"bins": 16}},
            {"name": "toy_centered", "params": {"sample_images": 24}, "column": "toy"}]
AUGMENT = {"copies": 1, "splits": ["train"], "ops": [{"op": "flip", "p": 0.5}, {"op": "brightness", "delta": 0.1}]}
NEW_CLASS = "extra"


def write(path: pathlib.Path, **sections) -> pathlib.Path:
    from conftest import write_spec

    defaults = {"features": FEATURES, "augment": AUGMENT, "failures": {"max_reject_fraction": 0.1},
                "output": {"shards": 4, "formats": ["parquet", "hdf5"]}}
    return write_spec(path, **{k: v for k, v in {**defaults, **sections}.items() if v is not None})


def run(spec_path, inp, out, engine=None, logs=None, **kwargs):
    spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(inp), output=str(out))
    return execute(spec, engine or LocalEngine(2), log=(logs.append if logs is not None else lambda m: None),
                   **kwargs).manifest


def copy_files(paths, src: pathlib.Path, dst: pathlib.Path) -> set[str]:
    keys = set()
    for path in paths:
        rel = path.relative_to(src).as_posix()
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel)
        keys.add(rel)
    return keys


def snapshot(out: pathlib.Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file under `out` except the run-level files an incremental run rewrites."""
    return {p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def rows_by_key(out: pathlib.Path, pattern: str = "*.parquet") -> dict[str, dict]:
    rows = {}
    for path in sorted((out / "parquet").glob(pattern)):
        for row in pq.read_table(path).to_pylist():
            rows[row["key"]] = row
    return rows


@pytest.fixture(scope="module")
def grown(digits_dir, tmp_path_factory):
    """A first run over 120 digits, then an incremental run after 63 arrived and 5 went away."""
    from conftest import LOAD_LOG

    base = tmp_path_factory.mktemp("incremental")
    digits = sorted(digits_dir.rglob("*.png"))
    first_files, new_files = digits[::15][:120], digits[7::30][:60]
    inp, out = base / "bucket", base / "out"
    first = copy_files(first_files, digits_dir, inp)
    spec = write(base / "spec.yaml")
    m1 = run(spec, inp, out)
    before = snapshot(out)
    artefact = out / m1["artifacts"][0]["path"]
    # the bucket grows: 60 other digits, a class folder the first run never saw; 5 inputs go away
    new = copy_files(new_files, digits_dir, inp)
    extra = set()
    for i, path in enumerate(digits[1::200][:3]):
        (inp / NEW_CLASS).mkdir(exist_ok=True)
        shutil.copyfile(path, inp / NEW_CLASS / f"e{i}.png")
        extra.add(f"{NEW_CLASS}/e{i}.png")
    deleted = sorted(first)[::24][:5]
    for key in deleted:
        (inp / key).unlink()
    logs: list[str] = []
    LOAD_LOG.write_text("")
    m2 = run(spec, inp, out, logs=logs, incremental=True)
    loads = LOAD_LOG.read_text().split()
    return {"base": base, "inp": inp, "out": out, "spec": spec, "m1": m1, "m2": m2, "before": before,
            "first": first, "new": new, "extra": extra, "deleted": deleted, "logs": logs, "loads": loads,
            "artefact": artefact, "first_files": first_files, "new_files": new_files, "digits_dir": digits_dir}


@pytest.fixture(scope="module")
def reference(grown, tmp_path_factory):
    """A from-scratch run over the same written sources (the 120 first digits and the 60 new ones), with the
    first run's fitted artefact as a saved file: the same feature fingerprint."""
    base = tmp_path_factory.mktemp("reference")
    inp = base / "all"
    copy_files(grown["first_files"] + grown["new_files"], grown["digits_dir"], inp)
    features = [dict(f) for f in FEATURES]
    features[2] = {**features[2], "params": {"sample_images": 24, "constant": str(grown["artefact"])}}
    manifest = run(write(base / "spec.yaml", features=features), inp, base / "out")
    return base / "out", manifest


def test_old_files_are_untouched_and_the_new_generation_has_its_own_files(grown):
    out, before = grown["out"], grown["before"]
    after = snapshot(out)
    rewritten = {"_manifest.json", "stats.json", "hdf5/features.h5"}
    for rel, (digest, mtime) in before.items():
        if rel not in rewritten:
            assert after[rel] == (digest, mtime), rel
    added = sorted(set(after) - set(before))
    expected = sorted(f"{folder}/part-{s:05d}-of-00004.g0002.{ext}" for s in range(4)
                      for folder, ext in (("parquet", "parquet"), ("hdf5", "h5"), ("rejects", "parquet"),
                                          ("stats", "json")))
    assert added == expected
    assert not (out / "_FAILED.json").exists() and not (out / "_LOCK").exists() and not (out / "_work").exists()


def test_manifest_lists_both_generations_with_cumulative_counts_and_the_ledger_holds(grown):
    m1, m2, out = grown["m1"], grown["m2"], grown["out"]
    ever = grown["first"] | grown["new"] | grown["extra"]
    rejected = assert_ledger_across_generations(out, ever)
    assert rejected == {key: "invalid_label" for key in grown["extra"]}
    old = {f["path"]: f for f in m1["files"] if f["shard"] is not None}
    listed = {f["path"]: f for f in m2["files"]}
    assert all(listed[path] == entry for path, entry in old.items())  # kept as they were, with their sha256
    assert [g["generation"] for g in m2["generations"]] == [1, 2]
    assert "generations" not in m1  # a run without --incremental is generation 1
    assert m2["generations"][0] == {"generation": 1, "created_at": m1["created_at"], "engine": "local", **m1["counts"]}
    assert m2["generations"][1]["listed"] == 63 and m2["generations"][1]["written_sources"] == 60
    counts = m2["counts"]
    assert counts["listed"] == 183 and counts["written_sources"] == 180 and counts["rejected"] == 3
    assert m2["rejects_by_reason"] == {"invalid_label": 3}
    assert m2["n_shards"] == m1["n_shards"] == 4 and m2["label_names"] == m1["label_names"]
    for key in ("feature_fingerprint", "run_fingerprint", "spec_fingerprints", "artifacts", "columns", "schema"):
        assert m2[key] == m1[key], key
    assert m2["metrics"]["generation"] == 2 and m1["metrics"]["generation"] == 1
    assert m2["metrics"]["fresh_shards"] == 4


def test_a_new_class_is_invalid_label_saying_labels_are_frozen(grown):
    rejects = [row for p in sorted((grown["out"] / "rejects").glob("*.g0002.parquet"))
               for row in pq.read_table(p).to_pylist()]
    assert {r["source_key"] for r in rejects} == grown["extra"]
    for row in rejects:
        assert row["reason"] == "invalid_label" and row["stage"] == "list"
        assert f"label '{NEW_CLASS}' is not one of the output's 10 labels" in row["detail"]
        assert "full rerun without --incremental" in row["detail"]


def test_deleted_inputs_are_reported_and_their_rows_kept(grown):
    m2, deleted = grown["m2"], grown["deleted"]
    assert m2["missing_inputs"] == 5
    lines = [line for line in grown["logs"] if "no longer listed" in line]
    assert len(lines) == 1 and lines[0].startswith("featurize: 5 input(s) in the output are no longer listed")
    assert repr(deleted[0]) in lines[0]
    assert set(deleted) <= set(rows_by_key(grown["out"]))
    assert any("incremental generation 2: 63 new of 178 listed inputs" in line for line in grown["logs"])


def test_the_fitted_artefact_is_reused_not_refitted(grown):
    out = grown["out"]
    assert not any("pass 'sample'" in line for line in grown["logs"])
    assert any("pass 'main'" in line for line in grown["logs"])
    rel = grown["m1"]["artifacts"][0]["path"]
    assert grown["before"][rel] == snapshot(out)[rel]
    assert "toy_centered" in grown["loads"]  # the new generation's workers loaded it


def test_new_rows_equal_a_from_scratch_run_per_key_and_stats_cover_all_generations(grown, reference):
    ref_out, ref_manifest = reference
    assert ref_manifest["feature_fingerprint"] == grown["m2"]["feature_fingerprint"]
    mine, theirs = rows_by_key(grown["out"]), rows_by_key(ref_out)
    assert set(mine) == set(theirs)  # the same written sources, variants included
    new_rows = rows_by_key(grown["out"], "*.g0002.parquet")
    assert {r["source_key"] for r in new_rows.values()} == grown["new"]
    for key in mine:  # every column but where the bytes were read
        assert {**mine[key], "uri": None} == {**theirs[key], "uri": None}, key
    ours = json.loads((grown["out"] / "stats.json").read_text())
    ref = json.loads((ref_out / "stats.json").read_text())
    assert ours["inputs"] == ref["inputs"] and ours["labels"] == ref["labels"]
    assert ours["unlabelled"] == ref["unlabelled"] and ours["inputs"]["count"] == 180
    assert ours["pixels"]["count"] == ref["pixels"]["count"]
    np.testing.assert_allclose(ours["pixels"]["mean"], ref["pixels"]["mean"], rtol=1e-9)
    for column, values in ref["features"].items():
        assert ours["features"][column]["count"] == values["count"]
        for field in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(ours["features"][column][field], values[field], rtol=1e-7, atol=1e-9)


def test_readers_see_every_generation(grown):
    out = grown["out"]
    dataset = open_dataset(out, verify="sha256")
    data = dataset.read(split=None, include_unlabelled=True)
    assert len(data.keys) == grown["m2"]["counts"]["written_rows"]
    assert set(data.keys) == set(rows_by_key(out))
    assert len(dataset.shard_paths("parquet")) == 8 and len(dataset.shard_paths("hdf5")) == 8
    # features.h5 reads both generations, in the order the Parquet shards are listed
    from_h5, from_parquet = read_hdf5(str(out)), read_parquet(str(out))
    assert from_h5["keys"] == from_parquet["keys"] and len(from_h5["keys"]) == len(data.keys)
    stacked = np.concatenate([from_parquet["features"][c["name"]] for c in from_h5["columns"]], axis=1)
    np.testing.assert_array_equal(from_h5["features"], stacked)
    assert sorted(dataset.read(split=None, include_unlabelled=True, source="hdf5").keys) == sorted(data.keys)


def test_features_h5_reading_an_unlisted_generation_is_refused(grown, tmp_path):
    """A planted generation file: features.h5 rewritten to read it too, the manifest's size and hash of
    features.h5 updated to match. Readers still refuse it: the file is not listed."""
    from featurelib.errors import SchemaError
    from featurelib.io.hdf5 import write_virtual_index
    from featurelib.schema import OutputSchema

    out = tmp_path / "copy"
    shutil.copytree(grown["out"], out)
    manifest = json.loads((out / "_manifest.json").read_text())
    planted = "hdf5/part-00000-of-00004.g0003.h5"
    shutil.copyfile(out / "hdf5/part-00000-of-00004.g0002.h5", out / planted)
    shards = [f["path"] for f in manifest["files"] if f["kind"] == "hdf5"] + [planted]
    spec = RunSpec.from_dict(manifest["spec"])
    schema = OutputSchema.from_spec(spec, {a["column"]: a["sha256"] for a in manifest["artifacts"]})
    write_virtual_index(str(out), shards, schema, manifest["label_names"])
    index = next(f for f in manifest["files"] if f["kind"] == "hdf5_index")
    index["bytes"] = (out / index["path"]).stat().st_size
    index["sha256"] = hashlib.sha256((out / index["path"]).read_bytes()).hexdigest()
    (out / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="g0003.h5, which the manifest .* does not list"):
        open_dataset(out)
    with pytest.raises(SchemaError, match="virtual dataset /.* reads 'part-00000-of-00004.g0003.h5'"):
        read_hdf5(str(out))


def test_inspect_shows_generations_and_compare_still_works(grown, capsys):
    assert cli.main(["inspect", str(grown["out"])]) == 0
    text = capsys.readouterr().out
    assert "generations      2 (--incremental)" in text and "missing inputs   5" in text
    assert "parquet/part-00003-of-00004.g0002.parquet" in text
    assert cli.main(["compare", str(grown["out"]), str(grown["out"])]) == 0


def test_a_third_incremental_run_with_nothing_new_changes_nothing(grown, capsys):
    out = grown["out"]
    before = snapshot(out)
    code = cli.main(["run", "--spec", str(grown["spec"]), "--input", str(grown["inp"]), "--output", str(out),
                     "--incremental", "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert "nothing new to add: all 178 listed inputs are in the output (generation 2)" in captured.err
    assert snapshot(out) == before


def test_refusals_exit_2_with_one_message(grown, tmp_path, capsys):
    spec, inp = str(grown["spec"]), str(grown["inp"])

    def refused(*argv):
        try:
            code = cli.main(["run", "--spec", spec, "--input", inp, *argv])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        return err

    assert "nothing to add to: run once without --incremental" in refused("--output", str(tmp_path / "none"),
                                                                          "--incremental")
    other = write(tmp_path / "other.yaml", seed=7)
    err = refused("--output", str(grown["out"]), "--incremental", "--spec", str(other))
    assert "was written by a different spec" in err and "--incremental keeps the first run's spec" in err
    assert "not allowed with argument" in refused("--output", str(grown["out"]), "--incremental", "--resume")
    assert "not allowed with argument" in refused("--output", str(grown["out"]), "--incremental", "--overwrite")
    assert "--prune works with --incremental only" in refused("--output", str(grown["out"]), "--prune")
    assert "--resume continues a failed first run only" in refused("--output", str(grown["out"]), "--resume")
    assert (grown["out"] / "_manifest.json").exists()


def test_interrupted_generation_keeps_the_previous_manifest_and_a_rerun_on_beam_completes(
        digits_dir, tmp_path, arm_fault):
    from pipelines.extract_features import BeamEngine

    digits = sorted(digits_dir.rglob("*.png"))
    inp, out = tmp_path / "bucket", tmp_path / "out"
    first = copy_files(digits[3::45][:40], digits_dir, inp)
    spec = write(tmp_path / "spec.yaml", output={"shards": 3, "formats": ["parquet", "hdf5"]})
    m1 = run(spec, inp, out)
    new = copy_files(digits[11::60][:24], digits_dir, inp)
    committed = (out / "_manifest.json").read_bytes()
    arm_fault(out, 1)
    with pytest.raises(RuntimeError, match="injected fault in shard 1"):
        run(spec, inp, out, incremental=True)
    # the committed output is untouched and readable; _FAILED.json says which generation failed
    assert (out / "_manifest.json").read_bytes() == committed
    failed = json.loads((out / "_FAILED.json").read_text())
    assert failed["kind"] == "error" and failed["incremental"] and failed["generation"] == 2
    assert failed["committed_generation"] == 1
    assert len(open_dataset(out, verify="sha256").read(split=None).keys) > 0
    assert len(read_hdf5(str(out))["keys"]) == m1["counts"]["written_rows"]
    assert cli.main(["inspect", str(out)]) == 0
    assert not list(out.rglob("*.tmp-*"))
    with pytest.raises(UserError, match="--resume continues a failed first run only"):
        run(spec, inp, out, resume=True)
    # the rerun, on another engine, removes what the failed attempt left and redoes generation 2
    logs: list[str] = []
    m2 = run(spec, inp, out, engine=BeamEngine([]), logs=logs, incremental=True)
    assert m2["engine"] == "beam" and [g["engine"] for g in m2["generations"]] == ["local", "beam"]
    assert [g["generation"] for g in m2["generations"]] == [1, 2]
    assert not (out / "_FAILED.json").exists()
    assert_ledger_across_generations(out, first | new)
    assert m2["counts"]["written_sources"] == 64
    assert sorted(p.name for p in (out / "parquet").iterdir()) == sorted(
        [f"part-0000{s}-of-00003.parquet" for s in range(3)] + [f"part-0000{s}-of-00003.g0002.parquet" for s in range(3)])
    # a failed attempt whose inputs went away again: nothing to redo, its _FAILED.json goes
    (out / "_FAILED.json").write_text(json.dumps({"kind": "interrupted", "incremental": True, "generation": 3}))
    run(spec, inp, out, incremental=True)
    assert not (out / "_FAILED.json").exists() and json.loads((out / "_manifest.json").read_text()) == m2


def test_beam_and_spark_entry_points_take_the_flag(grown, tmp_path, capsys):
    from jobs.extract_features import main as spark_main
    from pipelines.extract_features import _strip_own_flags, run as beam_run

    with pytest.raises(SystemExit) as caught:
        spark_main(["--spec", str(grown["spec"]), "--incremental", "--resume"])
    assert caught.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert _strip_own_flags(["--incremental", "--prune", "--runner=FnApiRunner"]) == ["--runner=FnApiRunner"]
    with pytest.raises(UserError, match="nothing to add to: run once without --incremental"):
        beam_run(["--spec", str(grown["spec"]), "--input", str(grown["inp"]), "--output", str(tmp_path / "none"),
                  "--incremental"])
    hdf5_only = write(tmp_path / "h5.yaml", dedup="content", output={"shards": 2, "formats": ["hdf5"]})
    with pytest.raises(UserError, match="dedup: content needs output.formats to include parquet"):
        run(hdf5_only, grown["inp"], tmp_path / "h5", incremental=True)


def test_dedup_content_across_generations(digits_dir, tmp_path):
    digits = sorted(digits_dir.rglob("*.png"))
    inp, out = tmp_path / "bucket", tmp_path / "out"
    copy_files(digits[5::90][:20], digits_dir, inp)
    spec = write(tmp_path / "spec.yaml", dedup="content", features=FEATURES[:2], augment=None,
                 failures={"max_reject_fraction": 0.9}, output={"shards": 2, "formats": ["parquet"]})
    run(spec, inp, out)
    old = sorted(p for p in inp.rglob("*.png"))[0]
    shutil.copyfile(old, inp / old.parent.name / "0-same-as-old.png")  # a smaller key than the old one
    fresh = digits[8::90][0]
    for name in ("b-copy.png", "a-copy.png"):
        shutil.copyfile(fresh, inp / fresh.parent.name / name)
    run(spec, inp, out, incremental=True)
    rejects = {r["source_key"]: r for p in sorted((out / "rejects").glob("*.g0002.parquet"))
               for r in pq.read_table(p).to_pylist()}
    old_key = old.relative_to(inp).as_posix()
    same = f"{old.parent.name}/0-same-as-old.png"
    assert set(rejects) == {same, f"{fresh.parent.name}/b-copy.png"}
    assert rejects[same]["reason"] == "duplicate" and repr(old_key) in rejects[same]["detail"]
    assert "earlier generation" in rejects[same]["detail"]
    assert repr(f"{fresh.parent.name}/a-copy.png") in rejects[f"{fresh.parent.name}/b-copy.png"]["detail"]


def test_prune_redoes_the_shards_of_deleted_inputs_and_equals_a_from_scratch_run(digits_dir, tmp_path, capsys):
    from featurelib.sources import shard_of

    digits = sorted(digits_dir.rglob("*.png"))
    inp, out = tmp_path / "bucket", tmp_path / "out"
    first = copy_files(digits[4::40][:44], digits_dir, inp)
    spec = write(tmp_path / "spec.yaml")
    m1 = run(spec, inp, out)
    before = snapshot(out)
    new = copy_files(digits[13::80][:12], digits_dir, inp)
    deleted = sorted(k for k in first if shard_of(k, 4) == 2)[:2]
    for key in deleted:
        (inp / key).unlink()
    code = cli.main(["run", "--spec", str(spec), "--input", str(inp), "--output", str(out), "--incremental",
                     "--prune", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2 input(s) in the output are no longer listed (deleted?)" in err and "--prune drops them" in err
    m2 = json.loads((out / "_manifest.json").read_text())
    current = (first | new) - set(deleted)
    assert_ledger(out, current)
    assert m2["missing_inputs"] == 0 and m2["counts"]["listed"] == len(current) == 54
    assert m2["generations"][-1]["pruned"] == 2 and m2["generations"][-1]["redone_shards"] == [2]
    # shard 2 lives in generation 2 only; the other shards' first files are untouched
    after = snapshot(out)
    for rel, state in before.items():
        if "part-00002-of-00004.parquet" in rel or "part-00002-of-00004.h5" in rel or "part-00002-of-00004.json" in rel:
            assert rel not in after
        elif rel.split("/")[0] in ("parquet", "hdf5", "rejects", "stats", "artifacts") and rel != "hdf5/features.h5":
            assert after[rel] == state, rel
    assert {f["path"] for f in m2["files"] if f["shard"] == 2} == {
        "parquet/part-00002-of-00004.g0002.parquet", "hdf5/part-00002-of-00004.g0002.h5",
        "rejects/part-00002-of-00004.g0002.parquet", "stats/part-00002-of-00004.g0002.json"}
    # the same as a from-scratch run over what is listed now, with the first run's artefact
    ref_inp = tmp_path / "now"
    shutil.copytree(inp, ref_inp)
    features = [dict(f) for f in FEATURES]
    features[2] = {**features[2], "params": {"sample_images": 24, "constant": str(out / m1["artifacts"][0]["path"])}}
    ref = run(write(tmp_path / "ref.yaml", features=features), ref_inp, tmp_path / "ref")
    assert ref["counts"] == m2["counts"] and ref["feature_fingerprint"] == m2["feature_fingerprint"]
    mine, theirs = rows_by_key(out), rows_by_key(tmp_path / "ref")
    assert set(mine) == set(theirs)
    for key in mine:
        assert {**mine[key], "uri": None} == {**theirs[key], "uri": None}, key
    ours, expected = (json.loads((o / "stats.json").read_text()) for o in (out, tmp_path / "ref"))
    assert ours["inputs"] == expected["inputs"] and ours["labels"] == expected["labels"]
    np.testing.assert_allclose(ours["pixels"]["mean"], expected["pixels"]["mean"], rtol=1e-9)
    assert len(open_dataset(out, verify="sha256").read(split=None).keys) == len(read_hdf5(str(out))["keys"])


def test_hdf5_only_output_grows_too(digits_dir, tmp_path):
    digits = sorted(digits_dir.rglob("*.png"))
    inp, out = tmp_path / "bucket", tmp_path / "out"
    first = copy_files(digits[2::90][:20], digits_dir, inp)
    spec = write(tmp_path / "spec.yaml", features=FEATURES[:2], output={"shards": 2, "formats": ["hdf5"]})
    run(spec, inp, out)
    new = copy_files(digits[9::90][:10], digits_dir, inp)
    manifest = run(spec, inp, out, incremental=True)
    assert manifest["counts"]["written_sources"] == 30 and len(manifest["generations"]) == 2
    data = read_hdf5(str(out))
    assert {k for k in data["keys"] if "#" not in k} == first | new
    assert sorted(p.name for p in (out / "hdf5").glob("*.g0002.h5")) == [
        "part-00000-of-00002.g0002.h5", "part-00001-of-00002.g0002.h5"]


def test_generation_names_and_hdf5_shard_names():
    from featurelib.io.files import shard_generation, shard_relpath
    from featurelib.io.hdf5 import is_shard_name

    assert shard_relpath("parquet", 3, 8) == "parquet/part-00003-of-00008.parquet"
    assert shard_relpath("stats", 3, 8, 2) == "stats/part-00003-of-00008.g0002.json"
    assert shard_generation("part-00003-of-00008.g0012.h5") == 12
    assert shard_generation("part-00003-of-00008.h5") == 1
    for bad in ("part-00003-of-00008.g0001.h5", "part-00003-of-00008.g2.h5", "x/part-00003-of-00008.g0002.h5"):
        assert shard_generation(bad) is None
    assert is_shard_name("part-00003-of-00008.g0002.h5") and is_shard_name("part-00003-of-00008.h5")
    for bad in ("part-00003-of-00008.g0001.h5", "part-00003-of-00008.g0002.h5/x", "../part-00003-of-00008.g0002.h5",
                "part-00003-of-00008.g0002.parquet", "part-00003-of-00008.g00a2.h5", "part-00003-of-00008.g0002.h5 "):
        assert not is_shard_name(bad), bad
