"""The local engine end to end: ledger from disk, determinism, HDF5 = Parquet, resume, budget, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from featurelib import cli
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.errors import PolicyError, UserError
from featurelib.io.readers import read_hdf5, read_parquet
from featurelib.spec import RunSpec
from ledger import assert_ledger

# every op, so that the engine parity tests cover each one's draws
AUGMENT = {"copies": 2, "splits": ["train"], "ops": [
    {"op": "flip", "p": 0.5}, {"op": "rotate", "degrees": 10}, {"op": "brightness", "delta": 0.1},
    {"op": "scale", "factor": [0.9, 1.1]}, {"op": "shear", "degrees": 8, "fill": "constant"},
    {"op": "translate", "fraction": 0.05, "fill": "reflect"}, {"op": "crop", "scale": [0.8, 1.0]},
    {"op": "contrast"}, {"op": "saturation"}, {"op": "hue"}, {"op": "noise", "sigma": 4},
    {"op": "mask", "shape": "circle", "size": [0.2, 0.3]}, {"op": "grayscale", "p": 0.2}]}


def run_spec(spec_path, inp, out, workers=2, **kwargs):
    spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(inp), output=str(out))
    return execute(spec, LocalEngine(workers), log=lambda m: None, **kwargs).manifest


def digest_tree(out: pathlib.Path, kinds=("parquet", "rejects")) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for kind in kinds for p in sorted((out / kind).glob("*"))}


@pytest.fixture(scope="module")
def subset_dir(digits_dir, tmp_path_factory):
    """240 real digits (every 7th file, 10 classes)."""
    from conftest import copy_digits

    return copy_digits(digits_dir, tmp_path_factory.mktemp("subset") / "digits", step=7, limit=240)


def test_ledger_with_bad_files_mixed_into_real_digits(mixed_dir, spec_file, tmp_path):
    root, expected = mixed_dir
    spec = spec_file(failures={"max_reject_fraction": 0.25}, decode={"max_pixels": 50_000_000})
    manifest = run_spec(spec, root, tmp_path / "out")
    rejected = assert_ledger(tmp_path / "out", set(expected))
    for key, reason in expected.items():
        assert rejected.get(key) == reason, (key, rejected.get(key), reason)
    assert manifest["engine"] == "local"
    assert manifest["counts"]["written_sources"] == sum(r is None for r in expected.values())


def test_same_spec_twice_and_one_vs_two_workers_write_identical_files(subset_dir, spec_file, tmp_path):
    spec = spec_file(augment=AUGMENT, output={"shards": 5, "pixels": True})
    m1 = run_spec(spec, subset_dir, tmp_path / "a", workers=1)
    m2 = run_spec(spec, subset_dir, tmp_path / "b", workers=2)
    run_spec(spec, subset_dir, tmp_path / "c", workers=2)
    a, b, c = (digest_tree(tmp_path / x) for x in "abc")
    assert len(a) == 10 and a == b == c
    strip = lambda m: {k: v for k, v in m.items() if k not in ("created_at", "metrics", "spec", "files")}
    assert strip(m1) == strip(m2)
    assert [f["sha256"] for f in m1["files"] if f["kind"] == "parquet"] == \
           [f["sha256"] for f in m2["files"] if f["kind"] == "parquet"]
    # variants exist for train sources only, and they differ from their originals
    data = read_parquet(str(tmp_path / "a"))
    keys = data["keys"]
    assert any(k.endswith("#aug2") for k in keys)
    for key, split in zip(keys, data["split"]):
        if "#aug" in key:
            assert split == "train"


def test_features_h5_reads_back_what_parquet_holds(subset_dir, spec_file, tmp_path):
    spec = spec_file(output={"shards": 3, "pixels": True}, augment=AUGMENT)
    run_spec(spec, subset_dir, tmp_path / "o")
    pq_data = read_parquet(str(tmp_path / "o"))
    h5 = read_hdf5(str(tmp_path / "o"))
    assert h5["keys"] == pq_data["keys"] and h5["split"] == pq_data["split"]
    np.testing.assert_array_equal(h5["labels"], pq_data["labels"])
    stacked = np.concatenate([pq_data["features"][c["name"]] for c in h5["columns"]], axis=1)
    np.testing.assert_array_equal(h5["features"], stacked)
    assert h5["label_names"] == [str(i) for i in range(10)]
    # relative virtual sources: the output can be moved as a whole
    shutil.move(tmp_path / "o", tmp_path / "moved")
    np.testing.assert_array_equal(read_hdf5(str(tmp_path / "moved"))["features"], stacked)


def test_failed_shard_leaves_nothing_partial_and_resume_completes(subset_dir, spec_file, tmp_path, arm_fault):
    spec = spec_file(output={"shards": 4})
    clean = tmp_path / "clean"
    run_spec(spec, subset_dir, clean)
    out = tmp_path / "faulty"
    arm_fault(out, 2)
    with pytest.raises(RuntimeError, match="injected fault in shard 2"):
        run_spec(spec, subset_dir, out)
    assert not (out / "_manifest.json").exists()
    failed = json.loads((out / "_FAILED.json").read_text())
    assert "injected fault" in failed["error"] and failed["kind"] == "error"
    assert not list(out.rglob("*.tmp-*")) and not (out / "parquet/part-00002-of-00004.parquet").exists()
    # a different spec is refused; the same spec with --resume completes from what is there
    other = spec_file(output={"shards": 4}, seed=1)
    with pytest.raises(UserError, match="holds a different run"):
        run_spec(other, subset_dir, out, resume=True)
    manifest = run_spec(spec, subset_dir, out, resume=True)
    assert manifest["metrics"]["reused_shards"] >= 1 and manifest["metrics"]["fresh_shards"] >= 1
    assert not (out / "_FAILED.json").exists()
    assert digest_tree(out) == digest_tree(clean)


def test_overwrite_replaces_a_different_run_and_refuses_foreign_folders(subset_dir, spec_file, tmp_path):
    out = tmp_path / "o"
    run_spec(spec_file(output={"shards": 2}), subset_dir, out)
    # what featurize train/predict add: kept when the same run is rewritten (same features) ...
    (out / "models" / "logreg-x").mkdir(parents=True)
    (out / "predictions").mkdir()
    (out / "predictions" / "logreg-x.parquet").write_bytes(b"p")
    run_spec(spec_file(output={"shards": 2}), subset_dir, out)
    assert (out / "models" / "logreg-x").is_dir() and (out / "predictions" / "logreg-x.parquet").exists()
    other = spec_file(output={"shards": 3})
    with pytest.raises(UserError, match="pass --overwrite"):
        run_spec(other, subset_dir, out)
    manifest = run_spec(other, subset_dir, out, overwrite=True)
    assert sorted(p.name for p in (out / "parquet").iterdir()) == [f"part-0000{i}-of-00003.parquet" for i in range(3)]
    assert manifest["n_shards"] == 3
    # ... and deleted with the run --overwrite replaces (trained on features that are gone)
    assert not (out / "models").exists() and not (out / "predictions").exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="holds no featurelib run"):
        run_spec(other, subset_dir, foreign, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_error_budget_fails_by_policy(mixed_dir, spec_file, tmp_path):
    root, expected = mixed_dir
    spec = spec_file(failures={"max_reject_fraction": 0.001})
    with pytest.raises(PolicyError, match="over failures.max_reject_fraction = 0.001"):
        run_spec(spec, root, tmp_path / "o")
    failed = json.loads((tmp_path / "o" / "_FAILED.json").read_text())
    assert failed["kind"] == "policy"
    assert failed["counts"]["listed"] == len(expected)
    assert not (tmp_path / "o" / "_manifest.json").exists()


class NoEngine:
    """An engine that must never be asked to run anything."""

    name = "none"

    def map(self, function, items, *, work_dir):
        raise AssertionError(f"the engine was asked to run {len(items)} tasks")


def test_list_stage_rejects_over_the_budget_fail_before_any_image_is_read(subset_dir, spec_file, tmp_path):
    # Two labels kept of ten: about 80% of the digits are invalid_label as soon as they are listed.
    spec = RunSpec.from_yaml(str(spec_file(labels=["0", "1"], failures={"max_reject_fraction": 0.5}))
                             ).with_overrides(input=str(subset_dir), output=str(tmp_path / "o"))
    with pytest.raises(PolicyError) as caught:
        execute(spec, NoEngine(), log=lambda m: None)
    message = str(caught.value)
    assert "inputs rejected when listed, before any image was read" in message
    assert "over failures.max_reject_fraction = 0.5; top reasons: invalid_label " in message
    assert "label '2' is not in the spec's labels" in message or "is not in the spec's labels" in message
    failed = json.loads((tmp_path / "o" / "_FAILED.json").read_text())
    assert failed["kind"] == "policy" and failed["counts"]["written_rows"] == 0
    assert failed["counts"]["rejected"] == failed["top_reasons"]["invalid_label"] > 0.75 * len(
        list(subset_dir.rglob("*.png")))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["_FAILED.json"]  # no lock, no shard, no scratch


def test_labels_matching_no_input_are_one_warning_line(subset_dir, spec_file, tmp_path):
    small = tmp_path / "in"
    for folder in sorted(subset_dir.iterdir()):  # two digits of each class
        (small / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.png"))[:2]:
            shutil.copyfile(path, small / folder.name / path.name)
    spec = RunSpec.from_yaml(str(spec_file(labels=[str(d) for d in range(10)] + ["cat", "dgo"],
                                           failures={"max_reject_fraction": 0.0}))
                             ).with_overrides(input=str(small), output=str(tmp_path / "o"))
    logged: list[str] = []
    execute(spec, LocalEngine(1), log=logged.append)
    warnings = [m for m in logged if "warning" in m]
    assert warnings == ["featurize: warning: 2 of the spec's labels match no input (no folder or manifest label "
                        "of that name): 'cat', 'dgo'"]


def test_dedup_and_split_by_content(subset_dir, spec_file, tmp_path):
    root = tmp_path / "dups"
    shutil.copytree(subset_dir, root)
    originals = sorted(p for p in root.rglob("*.png"))[:5]
    for path in originals:
        shutil.copyfile(path, path.parent / ("zz-" + path.name))  # larger key: the copy is the duplicate
    spec = spec_file(dedup="content", split={"train": 0.8, "val": 0.1, "test": 0.1, "by": "content"},
                     failures={"max_reject_fraction": 0.1})
    run_spec(spec, root, tmp_path / "o")
    listed = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    rejected = assert_ledger(tmp_path / "o", listed)
    assert rejected == {(p.parent / ("zz-" + p.name)).relative_to(root).as_posix(): "duplicate" for p in originals}
    data = read_parquet(str(tmp_path / "o"))
    # split by content: recompute from the bytes
    from test_sources import contract_split

    for key, split in zip(data["keys"], data["split"]):
        digest = hashlib.sha256((root / key).read_bytes()).hexdigest()
        assert split == contract_split(42, digest, 0.8, 0.1)


# --- the command line -----------------------------------------------------------


def test_cli_run_and_inspect(subset_dir, spec_file, tmp_path, capsys):
    spec = spec_file()
    code = cli.main(["run", "--engine", "local", "--spec", str(spec), "--input", str(subset_dir),
                     "--output", str(tmp_path / "o"), "--shards", "2", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "written sources  240" in out and "shards           2" in out
    assert cli.main(["inspect", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "color_hist" in out and "fixed_size_list<item: float>[64]" in out and "rejects/part-00001" in out


@pytest.mark.parametrize("args,message", [
    (["--engine", "local", "--spec", "{spec}", "--input", "{tmp}/none"], "is not a folder"),
    (["--engine", "local", "--spec", "{tmp}/missing.yaml"], "cannot read spec"),
    (["--engine", "local", "--spec", "{bad}"], r"unknown extractor 'hogg'"),
    (["--engine", "local", "--spec", "{spec}", "--output", "/etc/passwd/out"], "is not writable"),
    (["--engine", "local", "--spec", "{spec}", "--bogus"], r"unknown option\(s\) for the local engine"),
    (["--engine", "local", "--spec", "{spec}", "--resume", "--overwrite"], "not allowed with argument"),
])
def test_cli_user_mistakes_exit_2_with_one_message(args, message, subset_dir, spec_file, tmp_path, capsys):
    spec = spec_file(input={"path": str(subset_dir)}, output={"path": str(tmp_path / "o")})
    bad = spec_file(features=[{"name": "hogg"}])
    argv = ["run", *[a.format(spec=spec, tmp=tmp_path, bad=bad) for a in args]]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


def test_cli_inspect_of_a_non_output_and_policy_exit_code(mixed_dir, spec_file, tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert "is not a committed featurelib output" in capsys.readouterr().err
    root, _ = mixed_dir
    spec = spec_file(failures={"max_reject_fraction": 0.0})
    assert cli.main(["run", "--engine", "local", "--spec", str(spec), "--input", str(root),
                     "--output", str(tmp_path / "p")]) == 3
    assert "failed by policy" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path / "p")]) == 2
    assert "the last run failed" in capsys.readouterr().err


def test_isolated_decoding_turns_hangs_and_crashes_into_rejects(subset_dir, spec_file, tmp_path):
    """decode.isolation: subprocess on the local engine: a hanging decoder and a decoder that kills
    its process become `timeout` and `crashed` rejects; the shard and the job go on."""
    from featurelib.decode import FAULT_ENV as DECODE_FAULT_ENV, FAULT_PREFIX

    assert os.environ[DECODE_FAULT_ENV] == "1"  # set by conftest before any worker pool starts

    root = tmp_path / "in"
    shutil.copytree(subset_dir, root)
    (root / "3" / "hang.png").write_bytes(FAULT_PREFIX + b"hang")
    (root / "3" / "segfault.png").write_bytes(FAULT_PREFIX + b"segfault")
    (root / "4" / "exit.png").write_bytes(FAULT_PREFIX + b"exit")
    spec = spec_file(decode={"isolation": "subprocess", "timeout_s": 2}, failures={"max_reject_fraction": 0.05},
                     output={"shards": 2})
    run_spec(spec, root, tmp_path / "iso")
    listed = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    rejected = assert_ledger(tmp_path / "iso", listed)
    assert rejected == {"3/hang.png": "timeout", "3/segfault.png": "crashed", "4/exit.png": "crashed"}
    # isolation changes nothing about the pixels: features equal those of in-process decoding
    run_spec(spec_file(failures={"max_reject_fraction": 0.05}, output={"shards": 2}), root, tmp_path / "plain")
    a, b = read_parquet(str(tmp_path / "iso")), read_parquet(str(tmp_path / "plain"))
    assert a["keys"] == b["keys"]
    for column in a["features"]:
        np.testing.assert_array_equal(a["features"][column], b["features"][column])


def test_rows_per_key_are_identical_across_shard_counts_and_hash_seeds(subset_dir, spec_file, tmp_path):
    """Determinism: 2 shards in this process and 7 shards in another process with another PYTHONHASHSEED
    write the same row, byte for byte, for every key (features, augmented variants, stored pixels)."""
    import os
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = spec_file(augment=AUGMENT, output={"shards": 2, "pixels": True})
    run_spec(spec, subset_dir, tmp_path / "two")
    env = {**os.environ, "PYTHONHASHSEED": "987654"}
    done = subprocess.run([str(pathlib.Path(sys.executable).parent / "featurize"), "run", "--spec", str(spec),
                           "--input", str(subset_dir), "--output", str(tmp_path / "seven"), "--shards", "7"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    def rows(out):
        table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "parquet").glob("*.parquet"))])
        return table.sort_by("key")

    two, seven = rows(tmp_path / "two"), rows(tmp_path / "seven")
    assert two.num_rows == seven.num_rows > 240  # originals and their variants
    assert two.equals(seven)


def test_the_driver_of_a_run_imports_neither_pandas_nor_pyarrow_dataset(subset_dir, spec_file, tmp_path):
    """Fixed cost: the driver reads its shards' keys and rejects at commit without ``pyarrow.dataset``,
    whose import pulls in pandas (about 0.45 s of a 2 s run, measured). The check runs a whole local
    run and its --resume (every file read back) in a fresh process."""
    import subprocess
    import sys

    spec = spec_file(output={"shards": 2})
    code = (
        "import sys\n"
        "from featurelib.driver import execute\n"
        "from featurelib.engines.local import LocalEngine\n"
        "from featurelib.spec import RunSpec\n"
        f"spec = RunSpec.from_yaml({str(spec)!r}).with_overrides(input={str(subset_dir)!r}, "
        f"output={str(tmp_path / 'out')!r})\n"
        "report = execute(spec, LocalEngine(2), log=lambda m: None)\n"
        "execute(spec, LocalEngine(2), log=lambda m: None, resume=True)\n"
        "print(report.manifest['counts']['written_sources'], "
        "sorted(m for m in ('pandas', 'pyarrow.dataset') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(None, 1) == ["240", "[]\n"]
