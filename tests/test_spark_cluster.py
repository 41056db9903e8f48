"""A real Spark standalone cluster (master + workers on 127.0.0.1 and 127.0.0.2) and spark-submit.

One cluster for the module (JVM start-ups are the cost on 2 cores); three submits.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from deploy.spark_standalone import spark_home, standalone_cluster
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.spec import RunSpec
from ledger import assert_ledger

ROOT = pathlib.Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "extract_features.py"
#: Short-lived JVMs (driver, executors): the C1 compiler and the serial GC start them faster on 2 cores.
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
#: The JVM's own line on stderr (Spark 4 adds the vector incubator module); not ours.
JVM_NOISE = ("WARNING: Using incubator modules",)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A master and two single-core workers, started once for the module and always stopped."""
    t0 = time.monotonic()
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), timeout_s=120) as running:
        print(f"cluster up in {time.monotonic() - t0:.1f} s: {running.master_url}")
        yield running


def submit(cluster, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    command = [str(spark_home() / "bin" / "spark-submit"), "--master", cluster.master_url,
               "--conf", "spark.ui.enabled=false", "--conf", "spark.executor.cores=1",
               # Schedule only once both executors are up: tasks then run on both workers.
               "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
               "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
               "--conf", f"spark.executor.extraJavaOptions={FAST_JVM}", "--driver-java-options", FAST_JVM,
               str(JOB), *args]
    t0 = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    print(f"spark-submit {' '.join(args[:2])}: exit {done.returncode} in {time.monotonic() - t0:.1f} s")
    return done


def apps(cluster) -> list[str]:
    state = cluster.master_state()
    return [a["id"] for a in state["activeapps"] + state["completedapps"]]


def digest_tree(out: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for kind in ("parquet", "rejects") for p in sorted((out / kind).glob("*"))}


def comparable(manifest: dict) -> dict:
    """The manifest less what legitimately differs between engines and output paths."""
    kept = {k: v for k, v in manifest.items() if k not in ("engine", "created_at", "metrics", "spec", "files")}
    kept["files"] = [f for f in manifest["files"] if not f["kind"].startswith("hdf5")]  # HDF5 bytes may differ
    return kept


def test_spark_submit_on_the_cluster_matches_the_local_engine(cluster, mixed_dir, spec_file, tmp_path):
    root, expected = mixed_dir
    spec = spec_file(failures={"max_reject_fraction": 0.25}, output={"shards": 6})
    out = tmp_path / "spark"
    done = submit(cluster, "--spec", str(spec), "--input", str(root), "--output", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert "engine           spark" in done.stdout

    # the ledger, from the files on disk, with every expected reason
    rejected = assert_ledger(out, set(expected))
    for key, reason in expected.items():
        assert rejected.get(key) == reason, (key, rejected.get(key), reason)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["engine"] == "spark"
    assert manifest["n_shards"] == 6

    # both workers ran tasks: two executors (one per single-core worker), each with its Python worker
    pids = {s["pid"] for s in manifest["metrics"]["shards"]}
    assert len(pids) >= 2, pids
    ran = {w.name: sum(p.read_text(errors="replace").count("Running task")
                       for p in (cluster.state_dir / w.name).glob("app-*/*/stderr"))
           for w in sorted(cluster.state_dir.glob("work-*"))}
    assert len(ran) == 2 and all(ran.values()), ran

    # the same spec on the local engine writes the same Parquet and reject files, byte for byte
    local_out = tmp_path / "local"
    local_spec = RunSpec.from_yaml(str(spec)).with_overrides(input=str(root), output=str(local_out))
    local = execute(local_spec, LocalEngine(2), log=lambda m: None).manifest
    spark_files, local_files = digest_tree(out), digest_tree(local_out)
    assert len(spark_files) == 12 and spark_files == local_files
    assert local["engine"] == "local"
    assert comparable(manifest) == comparable(local)


def test_user_mistake_through_spark_submit_exits_2_with_one_message(cluster, mixed_dir, spec_file, tmp_path):
    root, _ = mixed_dir
    bad = spec_file(features=[{"name": "hogg"}])
    before = apps(cluster)
    done = submit(cluster, "--spec", str(bad), "--input", str(root), "--output", str(tmp_path / "o"), timeout=120)
    assert done.returncode == 2, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    # spark-submit merges the Python driver's stderr into its own stdout (PythonRunner
    # redirectErrorStream): the message is on stdout; stderr holds only the JVM's own line.
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and not line.startswith(JVM_NOISE)]
    assert len(lines) == 1 and lines[0].startswith("featurize: error: unknown extractor 'hogg'"), lines
    assert "Traceback" not in done.stdout + done.stderr
    # no application reached the master (no executor, no task), and no output was made
    assert apps(cluster) == before
    assert not (tmp_path / "o").exists()


def test_a_speculative_copy_of_a_straggler_leaves_one_complete_shard_and_no_temporaries(cluster, mixed_dir, spec_file,
                                                                                       tmp_path, arm_fault):
    """Shard 0's first attempt stalls half-way with its files open; Spark copies it onto the other worker,
    the copy wins, the straggler is killed: one set of files, byte-identical to the local engine's."""
    from conftest import FAULT_FILE

    root, expected = mixed_dir
    spec = spec_file(failures={"max_reject_fraction": 0.25}, output={"shards": 6})
    out = tmp_path / "spark"
    arm_fault(out, 0, kind="slow", seconds=60)
    done = submit(cluster, "--spec", str(spec), "--input", str(root), "--output", str(out),
                  "--conf", "spark.speculation=true", "--conf", "spark.speculation.interval=200ms",
                  "--conf", "spark.speculation.quantile=0.5", "--conf", "spark.speculation.multiplier=1.5",
                  "--conf", "spark.speculation.minTaskRuntime=1s",
                  "--conf", f"spark.executorEnv.FEATURELIB_FAULT_FILE={FAULT_FILE}")
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    # The speculative attempt (task 0.1: attempt 1 of the task) ran on an executor.
    logs = "".join(p.read_text(errors="replace") for p in cluster.state_dir.glob("work-*/app-*/*/stderr"))
    assert "(TID" in logs and ".1 in stage" in logs, "no speculative attempt ran"
    assert_ledger(out, set(expected))  # also: no temporary file left by the killed straggler
    local_out = tmp_path / "local"
    execute(RunSpec.from_yaml(str(spec)).with_overrides(input=str(root), output=str(local_out)), LocalEngine(2),
            log=lambda m: None)
    assert digest_tree(out) == digest_tree(local_out)
