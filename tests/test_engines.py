"""Local, Beam (in-process and multi-processing) and Spark local[2,3]: identical output (shards,
rejects and stats.json), ledger, retries on Spark, clean failure and resume on Beam, per-worker
state built once per process."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys

import pytest

from featurelib import cli
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.spec import RunSpec
from ledger import assert_ledger
from test_local_engine import AUGMENT, digest_tree

STATS_KINDS = ("parquet", "rejects", "stats")

pytestmark = pytest.mark.timeout(600)


def run_on(engine, spec_path, inp, out, **kwargs):
    spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(inp), output=str(out))
    return execute(spec, engine, log=lambda m: None, **kwargs).manifest


def beam(*flags):
    from pipelines.extract_features import BeamEngine

    return BeamEngine(list(flags))


def spark_engine(session):
    from jobs.extract_features import SparkEngine

    return SparkEngine(session)


def comparable(manifest):
    """A manifest without what legitimately differs between engines and runs."""
    drop = ("engine", "created_at", "metrics", "spec", "files")
    out = {k: v for k, v in manifest.items() if k not in drop}
    out["files"] = [(f["path"], f["rows"], f["sha256"] if f["kind"] != "hdf5" and f["kind"] != "hdf5_index" else None)
                    for f in manifest["files"]]
    return out


def builds_per_process(manifest):
    """{pid: (tasks it ran, times it built the worker state during this run)}."""
    per_pid = collections.defaultdict(lambda: [0, 0])
    for shard in manifest["metrics"]["shards"]:
        per_pid[shard["pid"]][0] += 1
        per_pid[shard["pid"]][1] += shard["state_built"]
    return {pid: tuple(v) for pid, v in per_pid.items()}


def assert_built_once_per_process(manifest):
    """Each worker process built the state exactly once, and some process reused it for a later
    task (a check that a fresh process per task would fail)."""
    per_pid = builds_per_process(manifest)
    assert all(built == 1 for _, built in per_pid.values()), per_pid
    assert sum(tasks for tasks, _ in per_pid.values()) > len(per_pid), per_pid


@pytest.fixture(scope="module")
def parity_spec(tmp_path_factory):
    from conftest import write_spec

    return write_spec(tmp_path_factory.mktemp("spec") / "parity.yaml", augment=AUGMENT,
                      failures={"max_reject_fraction": 0.25}, output={"shards": 6, "pixels": True})


@pytest.fixture(scope="module")
def reference(mixed_dir, parity_spec, tmp_path_factory):
    root, expected = mixed_dir
    out = tmp_path_factory.mktemp("ref") / "local"
    manifest = run_on(LocalEngine(2), parity_spec, root, out)
    assert_ledger(out, set(expected))
    return out, manifest


@pytest.mark.parametrize("engine_name", ["beam", "beam-multiprocessing", "spark-local[2,3]"])
def test_engines_write_what_the_local_engine_writes(engine_name, reference, mixed_dir, parity_spec, tmp_path, spark):
    root, expected = mixed_dir
    engine = {"beam": lambda: beam(),
              "beam-multiprocessing": lambda: beam("--direct_num_workers=2", "--direct_running_mode=multi_processing"),
              "spark-local[2,3]": lambda: spark_engine(spark)}[engine_name]()
    manifest = run_on(engine, parity_spec, root, tmp_path / "o")
    rejected = assert_ledger(tmp_path / "o", set(expected))
    assert {k: v for k, v in expected.items() if v} == rejected
    ref_out, ref_manifest = reference
    assert digest_tree(tmp_path / "o", STATS_KINDS) == digest_tree(ref_out, STATS_KINDS)
    assert (tmp_path / "o" / "stats.json").read_bytes() == (ref_out / "stats.json").read_bytes()
    assert comparable(manifest) == comparable(ref_manifest)
    assert manifest["engine"] == engine_name.split("-")[0]
    assert_built_once_per_process(manifest)
    assert not (tmp_path / "o" / "_work").exists()


def test_local_engine_builds_worker_state_once_per_process(reference):
    _, manifest = reference
    assert_built_once_per_process(manifest)
    assert len(builds_per_process(manifest)) == 2  # 6 shard tasks on 2 worker processes


def test_spark_retries_a_failed_task_and_the_output_equals_a_clean_run(reference, mixed_dir, parity_spec,
                                                                       tmp_path, spark, arm_fault):
    root, expected = mixed_dir
    out = tmp_path / "o"
    arm_fault(out, 3)
    run_on(spark_engine(spark), parity_spec, root, out)
    assert (tmp_path / "fault-marker-3").exists(), "the fault never fired"
    assert_ledger(out, set(expected))
    assert digest_tree(out) == digest_tree(reference[0])


def test_beam_fails_cleanly_and_resume_completes(reference, mixed_dir, parity_spec, tmp_path, arm_fault):
    root, expected = mixed_dir
    out = tmp_path / "o"
    arm_fault(out, 4)
    with pytest.raises(RuntimeError, match="injected fault in shard 4"):
        run_on(beam(), parity_spec, root, out)
    assert not (out / "_manifest.json").exists()
    assert json.loads((out / "_FAILED.json").read_text())["kind"] == "error"
    assert not list(out.rglob("*.tmp-*"))
    assert not (out / "parquet" / "part-00004-of-00006.parquet").exists()
    manifest = run_on(beam(), parity_spec, root, out, resume=True)
    assert manifest["metrics"]["fresh_shards"] >= 1
    assert_ledger(out, set(expected))
    assert digest_tree(out) == digest_tree(reference[0])


def test_beam_entry_point_and_default_engine(mixed_dir, parity_spec, tmp_path, capsys):
    from pipelines.extract_features import run

    root, expected = mixed_dir
    report = run(["--spec", str(parity_spec), "--input", str(root), "--output", str(tmp_path / "a"),
                  "--shards", "3", "--runner", "FnApiRunner"])
    assert report.manifest["engine"] == "beam" and report.manifest["n_shards"] == 3
    # featurize run without --engine uses the local engine (the core install is enough)
    code = cli.main(["run", "--spec", str(parity_spec), "--input", str(root), "--output", str(tmp_path / "b"),
                     "--shards", "3"])
    assert code == 0
    assert json.loads((tmp_path / "b" / "_manifest.json").read_text())["engine"] == "local"
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")


def test_policy_failure_on_beam_exits_3(mixed_dir, spec_file, tmp_path, capsys):
    root, _ = mixed_dir
    spec = spec_file(failures={"max_reject_fraction": 0.0})
    code = cli.main(["run", "--engine", "beam", "--spec", str(spec), "--input", str(root),
                     "--output", str(tmp_path / "o")])
    assert code == 3
    assert "over failures.max_reject_fraction = 0.0" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "_FAILED.json").read_text())["kind"] == "policy"


def test_dedup_pass_runs_on_beam_and_spark(digits_dir, spec_file, tmp_path, spark):
    import shutil

    from apache_beam.testing.test_pipeline import TestPipeline

    from pipelines.extract_features import run

    root = tmp_path / "in"
    for path in sorted(digits_dir.rglob("*.png"))[::20]:
        rel = path.relative_to(digits_dir)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / rel)
        if len(list(root.rglob("*.png"))) <= 4:
            shutil.copyfile(path, root / rel.parent / f"zz-copy-{rel.name}")  # larger key: the duplicate
    spec = spec_file(dedup="content", failures={"max_reject_fraction": 0.2}, output={"shards": 3})
    listed = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    run(["--spec", str(spec), "--input", str(root), "--output", str(tmp_path / "beam")],
        pipeline_factory=lambda: TestPipeline(argv=["--runner=FnApiRunner"], blocking=True))
    run_on(spark_engine(spark), spec, root, tmp_path / "spark")
    for engine in ("beam", "spark"):
        rejected = assert_ledger(tmp_path / engine, listed)
        assert sorted(rejected) == sorted(k for k in listed if "/zz-copy-" in k)
        assert set(rejected.values()) == {"duplicate"}
    assert digest_tree(tmp_path / "beam") == digest_tree(tmp_path / "spark")


@pytest.mark.parametrize("flags, message", [
    (["--direct_num_worker=2"], "unknown Beam flag(s): --direct_num_worker (did you mean --direct_num_workers?)"),
    (["--bogus_flag", "x"], "unknown Beam flag(s): --bogus_flag;"),
    (["--runner=Foo"], "unknown Beam runner 'Foo': Unexpected pipeline runner: Foo. Valid values are "),
])
def test_beam_flags_are_checked_like_every_other_flag(flags, message, mixed_dir, parity_spec, tmp_path, capsys):
    """Beam alone only logs a warning for a misspelt flag and runs on with its default (one worker)."""
    root, _ = mixed_dir
    code = cli.main(["run", "--engine", "beam", "--spec", str(parity_spec), "--input", str(root),
                     "--output", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("featurize: error: " + message), lines
    assert not (tmp_path / "o").exists()


def test_beam_module_help_shows_its_own_options(monkeypatch, capsys):
    from pipelines import extract_features

    monkeypatch.setattr("sys.argv", ["extract_features", "--help"])
    assert extract_features.main() == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m pipelines.extract_features") and "--incremental" in out
    assert "Every flag of Beam's PipelineOptions is accepted too" in out


def test_spark_sessions_featurelib_starts_are_quiet_unless_verbose(monkeypatch):
    """The JVM featurelib starts loads the packaged log4j2 file (warnings only); --verbose or spark-submit's
    own JVM keep Spark's logging as configured."""
    from jobs import session

    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.delenv(session.VERBOSE_ENV, raising=False)
    quiet = session._quiet_logging()
    flag = f"-Dlog4j2.configurationFile=file:{session.QUIET_LOG4J}"
    assert quiet == {"spark.driver.extraJavaOptions": f"-XX:TieredStopAtLevel=1 {flag}",
                     "spark.executor.extraJavaOptions": f"-XX:TieredStopAtLevel=1 {flag}"}
    assert "rootLogger.level = warn" in open(session.QUIET_LOG4J).read()
    monkeypatch.setenv(session.VERBOSE_ENV, "1")
    assert session._quiet_logging() == {}
    monkeypatch.delenv(session.VERBOSE_ENV)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")
    assert session._quiet_logging() == {}


def test_beam_worker_subprocesses_are_quiet_unless_verbose(digits_dir, tmp_path, monkeypatch):
    """``--direct_running_mode=multi_processing``: Beam's SDK-harness subprocesses configure their own
    logging (INFO up, to stderr); featurize run keeps them to warnings and errors, less their start-up
    noise, so ``make demo`` needs no ``grep -v``. ``--verbose`` leaves Beam's logging as it is."""
    from conftest import copy_digits, write_spec

    root = copy_digits(digits_dir, tmp_path / "in", step=50, limit=36)
    spec = write_spec(tmp_path / "spec.yaml", output={"shards": 2})
    featurize = str(pathlib.Path(sys.executable).parent / "featurize")
    env = {k: v for k, v in os.environ.items() if k != "FEATURELIB_VERBOSE"}

    def run(*extra):
        return subprocess.run([featurize, "run", "--engine", "beam", "--spec", str(spec), "--input", str(root),
                               "--output", str(tmp_path / "o"), "--overwrite", *extra, "--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"],
                              capture_output=True, text=True, timeout=120, env=env)

    quiet = run()
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    noise = [line for line in quiet.stderr.splitlines()
             if line.startswith("INFO:") or "semi_persistent_directory" in line or "apitools" in line]
    assert not noise, quiet.stderr[-3000:]
    assert "featurize: 36 inputs in 2 shards on engine beam" in quiet.stderr
    assert "featurize: pass 'main': 2 tasks in " in quiet.stderr
    assert "written sources  36" in quiet.stdout
    verbose = run("--verbose")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert any(line.startswith("INFO:apache_beam.runners.worker.") for line in verbose.stderr.splitlines()), \
        verbose.stderr[-3000:]
    # In process, the workers' PYTHONPATH is set only while a pipeline runs, and not at all with --verbose.
    from pipelines import extract_features

    before = os.environ.get("PYTHONPATH")
    with extract_features.quiet_workers():
        assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == extract_features.WORKER_SITE
    assert os.environ.get("PYTHONPATH") == before
    monkeypatch.setenv(extract_features.VERBOSE_ENV, "1")
    with extract_features.quiet_workers():
        assert os.environ.get("PYTHONPATH") == before
