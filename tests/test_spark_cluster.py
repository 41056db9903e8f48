"""A real Spark standalone cluster (master + workers on 127.0.0.1 and 127.0.0.2) and spark-submit.

One cluster for the module (JVM start-ups are the cost on 2 cores); three submits.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Mapping, Sequence

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


def submit(cluster, *args: str, timeout: float = 240, spark_args: Sequence[str] = (),
           env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """spark-submit JOB *args; `spark_args` are spark-submit's own (before the job; a repeated option
    replaces the one here), `env` overrides the environment (None: unset)."""
    environment = {**os.environ, "SPARK_HOME": str(spark_home()), "PYSPARK_PYTHON": sys.executable,
                   "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    environment.pop("PYSPARK_SUBMIT_ARGS", None)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    command = [str(spark_home() / "bin" / "spark-submit"), "--master", cluster.master_url,
               "--conf", "spark.ui.enabled=false", "--conf", "spark.executor.cores=1",
               # Schedule only once both executors are up: tasks then run on both workers.
               "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
               "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
               "--conf", f"spark.executor.extraJavaOptions={FAST_JVM}", "--driver-java-options", FAST_JVM,
               *spark_args, str(JOB), *args]
    t0 = time.monotonic()
    done = subprocess.run(command, env=environment, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
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


def bare_python(where: pathlib.Path) -> pathlib.Path:
    """A Python with this venv's third-party packages but without featurelib: a fresh venv whose one
    ``.pth`` names this venv's site-packages as a plain path, so that the folder's own ``.pth`` files
    (the editable install's finder among them) never run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    (where / site.relative_to(sys.prefix) / "featurelib-deps.pth").write_text(f"{site}\n")
    return where / "bin" / "python"


def test_the_code_shipped_as_a_py_files_zip_is_what_the_workers_run(cluster, mixed_dir, spec_file, tmp_path):
    """make dist's zip, submitted with --py-files to executors whose Python has every dependency but not
    featurelib, with no venv bin on PATH and the quiet log4j2 config: each shard imported featurelib from
    the zip, the output equals the local engine's byte for byte, and Spark said nothing below WARN."""
    from deploy.spark.build_dist import build

    t0 = time.monotonic()
    code = tmp_path / "dist" / "featurelib-code.zip"
    digest = build(code)
    assert build(tmp_path / "again.zip") == digest  # the same checkout, the same bytes
    with zipfile.ZipFile(code) as archive:
        names = archive.namelist()
    assert names == sorted(names) and {"featurelib/shard.py", "jobs/extract_features.py",
                                       "pipelines/extract_features.py"} <= set(names)
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n or not n.endswith(".py")]

    python = bare_python(tmp_path / "bare")
    venv_bin = (pathlib.Path(sys.prefix) / "bin").resolve()
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if pathlib.Path(p).resolve() != venv_bin)
    assert shutil.which("featurize", path=path) is None
    plugins = str(ROOT / "tests" / "plugins")  # the test extractors the workers register (FEATURELIB_PLUGINS)
    # The control: that Python imports featurelib only from the zip, and every dependency without it.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PATH": path}
    alone = subprocess.run([str(python), "-c", "import featurelib"], env=clean, cwd=tmp_path, capture_output=True,
                           text=True)
    assert alone.returncode == 1 and "No module named 'featurelib'" in alone.stderr, alone.stderr
    zipped = subprocess.run([str(python), "-c", "import numpy, cv2, pyarrow, h5py, skimage, pyspark, featurelib.shard "
                             "as s; print(s.__file__)"], env={**clean, "PYTHONPATH": str(code)}, cwd=tmp_path,
                            capture_output=True, text=True)
    assert zipped.returncode == 0 and zipped.stdout.strip() == f"{code}/featurelib/shard.py", zipped.stderr

    root, expected = mixed_dir
    # decode.isolation: subprocess: each worker's decoder child must find featurelib in the zip too
    spec = spec_file(failures={"max_reject_fraction": 0.25}, output={"shards": 6}, decode={"isolation": "subprocess"})
    out = tmp_path / "spark"
    log4j = "deploy/spark/log4j2.properties"  # as deploy/spark/README.md: relative for the driver (run from ROOT)
    before = set(apps(cluster))
    done = submit(cluster, "--spec", str(spec), "--input", str(root), "--output", str(out),
                  spark_args=["--py-files", str(code), "--conf", f"spark.pyspark.python={python}",
                              "--conf", f"spark.executorEnv.PATH={path}",
                              "--conf", f"spark.executorEnv.PYTHONPATH={plugins}",
                              "--driver-java-options", f"{FAST_JVM} -Dlog4j2.configurationFile={log4j}",
                              "--conf", f"spark.executor.extraJavaOptions={FAST_JVM} "
                                        f"-Dlog4j2.configurationFile={ROOT / log4j}"],
                  env={"PATH": path, "PYTHONPATH": plugins, "PYSPARK_PYTHON": None, "PYSPARK_DRIVER_PYTHON": None})
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"

    manifest = json.loads((out / "_manifest.json").read_text())
    shards = manifest["metrics"]["shards"]
    assert len(shards) == 6 and len({s["pid"] for s in shards}) >= 2
    for shard in shards:
        file = shard["module_file"]
        assert file.endswith("/featurelib-code.zip/featurelib/shard.py") and not file.startswith(str(ROOT)), file
    assert_ledger(out, set(expected))
    local_out = tmp_path / "local"
    local = execute(RunSpec.from_yaml(str(spec)).with_overrides(input=str(root), output=str(local_out)),
                    LocalEngine(2), log=lambda m: None).manifest
    assert len(digest_tree(out)) == 12 and digest_tree(out) == digest_tree(local_out)
    assert comparable(manifest) == comparable(local)

    # Quiet: nothing below WARN from the driver or this application's executors, no NativeCodeLoader line.
    (app,) = set(apps(cluster)) - before
    executor_logs = "".join(p.read_text(errors="replace") for p in cluster.state_dir.glob(f"work-*/{app}/*/stderr"))
    for text in (done.stdout + done.stderr, executor_logs):
        assert "NativeCodeLoader" not in text and " INFO " not in text and "default log4j profile" not in text, \
            text[-3000:]
    assert executor_logs.strip() == "" or all(" WARN " in line or " ERROR " in line or line.startswith(JVM_NOISE)
                                              for line in executor_logs.splitlines() if line.startswith("2")), \
        executor_logs[-3000:]
    print(f"--py-files zip {digest[:12]}: {time.monotonic() - t0:.1f} s in all")
