"""Extract features with Apache Spark: one shard task per partition, commit on the driver.

    featurize run --engine spark --spec deploy/specs/demo.yaml --input data/demo/digits --output out/spark
    spark-submit --master spark://HOST:7077 jobs/extract_features.py --spec S --input P --output P

Every pass of a run maps its shard tasks with ``parallelize(tasks, len(tasks))``:
one task per partition (a column hash such as ``repartition(n, col)`` collides
small shard ids into fewer partitions); only the small results are collected,
and the driver commits.

Each task also adds to accumulators (``tasks``, ``rows``, ``rejects``), read after
the pass (:meth:`SparkEngine.counters`, the manifest's ``metrics.engine_counters``).
They are updated inside a transformation, so Spark applies the update of a task
that runs more than once (a retry after an executor was lost, a speculative copy,
a recomputed stage) more than once: they over-count, and this is why they are
never the output's counts (the driver's ledger counts the files at commit).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyspark  # noqa: E402,F401  (the engine needs the spark extra: a missing one fails at engine lookup)

from featurelib.engines.base import COUNTERS, Engine, task_counts  # noqa: E402
from featurelib.errors import UserError  # noqa: E402
from jobs.session import note_job_done  # noqa: E402


def _conf_pairs(values: Sequence[str]) -> dict[str, str]:
    conf = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--conf takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        conf[key] = value
    return conf


class CountedCall:
    """``function(item)`` that also adds its task's counts (:func:`~featurelib.engines.base.task_counts`)
    to the pass's accumulators, on the executor, once the task's function has returned."""

    def __init__(self, function: Callable[[Any], Any], accumulators: dict[str, Any]) -> None:
        self.function, self.accumulators = function, accumulators

    def __call__(self, item: Any) -> Any:
        result = self.function(item)
        for name, value in task_counts(result).items():
            self.accumulators[name].add(value)
        return result


class SparkEngine(Engine):
    """Runs shard tasks as Spark tasks.

    Parameters
    ----------
    spark : SparkSession, optional
        An existing session (tests share one); otherwise one is built from
        `master` and `conf` on first use.
    """

    name = "spark"

    def __init__(self, spark=None, *, master: str | None = None, conf: dict[str, str] | None = None) -> None:
        self._spark, self.master, self.conf = spark, master, conf or {}
        self._owns_session = spark is None

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> SparkEngine:
        parser = argparse.ArgumentParser(prog="featurize run --engine spark", add_help=False)
        parser.add_argument("--master", default=None)
        parser.add_argument("--conf", action="append", default=[])
        args, unknown = parser.parse_known_args(list(argv))
        if unknown:
            raise UserError(f"unknown option(s) for the spark engine: {unknown}; it takes --master, --conf k=v")
        return cls(master=args.master, conf=_conf_pairs(args.conf))

    @property
    def spark(self):
        return self._session(None)

    def _session(self, settings):
        """The session, built on first use with the first pass's worker settings."""
        if self._spark is None:
            from jobs.session import build_session

            self._spark = build_session(self.master, self.conf, settings=settings)
        return self._spark

    def map(self, function: Callable[[Any], Any], items: Sequence[Any], *, work_dir: str | None = None) -> list[Any]:
        self.add_counters(work_dir, dict.fromkeys(COUNTERS, 0))
        if not items:
            return []
        context = self._session(getattr(function, "settings", None)).sparkContext
        if self.__dict__.get("_remote_output") and context.getConf().get("spark.speculation", "false") == "true":
            # Two attempts of a task would upload the same keys one after the other; the manifest could
            # then describe one attempt's files and the store hold the other's (HDF5 bytes differ).
            raise UserError("spark.speculation=true with an object-store output: speculative copies of a task "
                            "would overwrite each other's uploads; turn speculation off for this run")
        context.setJobDescription(f"featurelib: {len(items)} shard tasks")
        accumulators = {name: context.accumulator(0) for name in COUNTERS}
        try:
            results = context.parallelize(list(items), len(items)).map(CountedCall(function, accumulators)).collect()
            note_job_done()  # a session that did real work: its JVM's class-data archive is worth keeping
            # Read once the job is done; may over-count re-executed tasks (see the module's docstring).
            self.add_counters(work_dir, {name: acc.value for name, acc in accumulators.items()})
            return results
        except BaseException as exc:
            # Ctrl-C, SIGTERM or a failed task: stop the tasks still running, so nothing writes into
            # the output after the driver gives up. Interrupted, a session this engine owns is stopped
            # at once (its Python workers die with it); otherwise wait for the cancelled tasks to end.
            with contextlib.suppress(Exception):
                context.cancelAllJobs()
                if isinstance(exc, KeyboardInterrupt) and self._owns_session:
                    self.close()
                else:
                    _wait_for_tasks_to_stop(context)
            raise

    def close(self) -> None:
        """Stop the session this engine started (never one it was given)."""
        if self._owns_session and self._spark is not None:
            self._spark.stop()
            self._spark = None


def _wait_for_tasks_to_stop(context, timeout_s: float = 20.0) -> None:
    """Wait until no stage is active: cancelling is asynchronous, and a task still running would write
    into the output after the driver cleaned it up (its Python worker is killed a few seconds later)."""
    tracker = context.statusTracker()
    deadline = time.monotonic() + timeout_s
    while tracker.getActiveStageIds() and time.monotonic() < deadline:
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """spark-submit entry point; same flags and exit codes as ``featurize run``."""
    from featurelib import logs
    from featurelib.driver import execute, format_summary
    from featurelib.exits import with_exit_codes
    from featurelib.spec import RunSpec

    parser = argparse.ArgumentParser(prog="jobs/extract_features.py")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--shards", type=int)
    parser.add_argument("--threads-per-worker", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--master", default=None, help="default: what spark-submit set, else local[*]")
    parser.add_argument("--conf", action="append", default=[])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true")
    mode.add_argument("--overwrite", action="store_true")
    mode.add_argument("--incremental", action="store_true",
                      help="process only the inputs the committed output does not hold yet (a new generation)")
    parser.add_argument("--prune", action="store_true", help="with --incremental: drop the rows of deleted inputs")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=logs.DEFAULT_FORMAT,
                        help="stderr lines as text or one JSON object per line (featurelib.logs)")
    args = parser.parse_args(argv)
    engine = None

    def run() -> None:
        nonlocal engine
        spec = RunSpec.from_yaml(args.spec).with_overrides(
            input=args.input, output=args.output, shards=args.shards,
            threads_per_worker=args.threads_per_worker, batch_size=args.batch_size)
        spec.require_paths()
        engine = SparkEngine(master=args.master, conf=_conf_pairs(args.conf))
        report = execute(spec, engine, resume=args.resume, overwrite=args.overwrite,
                         incremental=args.incremental, prune=args.prune)
        print(format_summary(report.manifest, spec.output.path, report.seconds))
        logs.write_summary(report.manifest, spec.output.path, report.seconds)  # JSON only: the summary event

    try:
        with logs.using(args.log_format):
            if args.incremental:
                from featurelib.incremental import INCREMENTAL_HINT

                return with_exit_codes(run, interrupted=INCREMENTAL_HINT)
            return with_exit_codes(run)
    finally:
        if engine is not None:
            engine.close()


if __name__ == "__main__":
    sys.exit(main())
