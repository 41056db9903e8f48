"""Faults a run must survive (issue: reliability): a full disk mid-shard, and secrets that must stay secret.

Checked from the files on disk: nothing partial visible after the failure, the
ledger invariant after ``--resume``, and no trace of a secret in any file the
run wrote or any line it printed.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import copy_digits, write_spec
from featurelib.cli import main
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.spec import RunSpec
from ledger import assert_ledger

FEATURIZE = str(pathlib.Path(sys.executable).parent / "featurize")


@pytest.fixture(scope="module")
def corpus(digits_dir, tmp_path_factory) -> pathlib.Path:
    """160 real digits in their class folders."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("faults") / "digits", step=11, limit=160)


def listed(corpus: pathlib.Path) -> set[str]:
    return {p.relative_to(corpus).as_posix() for p in corpus.rglob("*.png")}


def spec_for(path: pathlib.Path, corpus: pathlib.Path, out: pathlib.Path, **sections) -> pathlib.Path:
    sections.setdefault("output", {"path": str(out), "shards": 4, "formats": ["parquet", "hdf5"]})
    return write_spec(path, input={"path": str(corpus)}, **sections)


def test_a_full_disk_mid_shard_fails_the_run_cleanly_and_resume_completes(corpus, tmp_path, arm_fault, capsys):
    out = tmp_path / "out"
    spec = spec_for(tmp_path / "spec.yaml", corpus, out)
    arm_fault(out, 2, kind="disk_full")  # ENOSPC while shard 2's files are being finished
    code = main(["run", "--spec", str(spec), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"featurize: failed: No space left on device: {out / 'parquet'}; "
                                           f"free space first (run again with --resume to continue)")
    assert "Traceback" not in err
    failed = json.loads((out / "_FAILED.json").read_text())
    assert failed["kind"] == "error" and "No space left on device" in failed["error"]
    assert not (out / "_manifest.json").exists() and not (out / "_LOCK").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # the half-written files are gone
    assert "part-00002-of-00004.parquet" not in os.listdir(out / "parquet")

    assert main(["run", "--spec", str(spec), "--resume"]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["metrics"]["fresh_shards"] >= 1 and manifest["metrics"]["reused_shards"] >= 1
    assert_ledger(out, listed(corpus))


def _can_mount_tmpfs(where: pathlib.Path) -> bool:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def test_a_real_full_file_system_then_resume_after_space_is_freed(corpus, tmp_path):
    """The same through a real 300 KiB tmpfs: the run's shards fill it (needs mount rights, as root in CI)."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (not root); the injected ENOSPC test above covers the path")
    try:
        out = disk / "out"
        spec = spec_for(tmp_path / "spec.yaml", corpus, out, output={"path": str(out), "shards": 4,
                                                                     "formats": ["parquet", "hdf5"], "pixels": True})
        full = subprocess.run([FEATURIZE, "run", "--spec", str(spec)], capture_output=True, text=True, timeout=300)
        assert full.returncode == 1, full.stderr
        assert "No space left on device" in full.stderr.strip().splitlines()[-1]
        assert not (out / "_manifest.json").exists() and not (out / "_LOCK").exists()
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = subprocess.run([FEATURIZE, "run", "--spec", str(spec), "--resume"], capture_output=True,
                                 text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert_ledger(out, listed(corpus))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


SECRET = "hunter2-SECRET-do-not-leak"


def assert_no_secret(out: pathlib.Path, *texts: str) -> None:
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for text in texts:
        assert SECRET not in text


def test_secrets_appear_in_no_file_log_or_message(corpus, tmp_path, capsys, caplog):
    bad = tmp_path / "bad"
    shutil.copytree(corpus / "3", bad / "3")
    (bad / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a reject with a detail
    options = {"storage_options": {"secret_access_key": SECRET}}
    # Local, through the command line: a committed run, then a run that fails by policy.
    out = tmp_path / "local"
    spec = spec_for(tmp_path / "s1.yaml", bad, out)
    doc = {**json.loads(json.dumps(RunSpec.from_yaml(str(spec)).to_dict())), "input": {"path": f"file://{bad}",
                                                                                        **options},
           "failures": {"max_reject_fraction": 0.5}}
    spec.write_text(json.dumps(doc))
    assert main(["run", "--spec", str(spec)]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    strict = tmp_path / "s2.yaml"
    strict.write_text(json.dumps({**doc, "failures": {"max_reject_fraction": 0.0},
                                  "output": {**doc["output"], "path": str(tmp_path / "failed")}}))
    assert main(["run", "--spec", str(strict)]) == 3
    assert (tmp_path / "failed" / "_FAILED.json").exists()
    # Beam, in process, with an object-store key among its flags.
    from pipelines.extract_features import run as beam_run

    beam_out = tmp_path / "beam"
    beam_run(["--spec", str(spec), "--output", str(beam_out), f"--s3_secret_access_key={SECRET}",
              "--s3_access_key_id=AKIAEXAMPLE"])
    captured = capsys.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for root in (out, tmp_path / "failed", beam_out):
        assert_no_secret(root, captured.out, captured.err, logged)
    assert json.loads((out / "_manifest.json").read_text())["spec"]["input"]["storage_options"] == {}


def test_a_second_attempt_of_a_completed_shard_keeps_the_first_attempts_files(corpus, tmp_path):
    """What a speculative copy's loser or a retry Spark thought lost does when it finishes anyway."""
    from featurelib.plan import plan
    from featurelib.shard import process_shard

    spec = RunSpec.from_yaml(str(spec_for(tmp_path / "spec.yaml", corpus, tmp_path / "out")))
    task = plan(spec)[1]
    first = process_shard(task)
    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "out").rglob("part-*")}
    second = process_shard(task)
    assert second.files == first.files  # same paths, rows, sizes and sha256: the first attempt's files
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "out").rglob("part-*")} == stamps
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]


def test_an_object_store_key_among_spark_settings_appears_nowhere(corpus, tmp_path):
    out = tmp_path / "spark"
    spec = spec_for(tmp_path / "spec.yaml", corpus, out)
    done = subprocess.run([FEATURIZE, "run", "--engine", "spark", "--spec", str(spec), "--conf",
                           f"spark.hadoop.fs.s3a.secret.key={SECRET}", "--conf", "spark.ui.enabled=false"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_no_secret(out, done.stdout, done.stderr)
    # Quiet by default: none of Spark's banner, log4j or native-library lines (featurelib's own only).
    for noise in ("Using Spark's default log4j profile", "NativeCodeLoader", "Setting default log level", " INFO "):
        assert noise not in done.stderr, noise
