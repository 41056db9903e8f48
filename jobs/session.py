"""The SparkSession featurelib's jobs use, with each setting explained.

    from jobs.session import build_session
    spark = build_session(master="local[*]")
"""

from __future__ import annotations

import os
import sys
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
    for key, value in {**defaults, **dict(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


#: Warnings and errors only (Spark's default profile logs INFO and a banner): the file spark-submit
#: users pass themselves (deploy/spark/README.md), used here when the session starts its own JVM.
QUIET_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")

#: Set (to anything) to keep Spark's own logging: ``featurize run --verbose`` sets it.
VERBOSE_ENV = "FEATURELIB_VERBOSE"


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
