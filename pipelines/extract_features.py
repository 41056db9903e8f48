"""Extract features with Apache Beam: the same passes over the same shard tasks as every engine.

    python -m pipelines.extract_features --spec deploy/specs/demo.yaml --input data/demo/digits \
        --output out/beam --direct_num_workers=2 --direct_running_mode=multi_processing
    featurize run --engine beam --spec deploy/specs/demo.yaml ...

Each pass is one pipeline: ``Create(tasks) | Reshuffle | ParDo(RunTask)``. One
element per shard task: rows never cross a process boundary, so no engine
shuffle holds feature data (GroupByKey of rows grew memory with the dataset).
Each task's small result is written by the worker to ``OUT/_work/<pass>/``, so
any runner whose workers can write the output works (Dataflow, Flink, Spark);
the driver reads them back in task order and commits on its side.

Each task also counts itself with Beam metrics (namespace :data:`METRICS_NAMESPACE`:
``tasks``, ``rows``, ``rejects``), read back from the pipeline's result after the
pass (:meth:`BeamEngine.counters`, the manifest's ``metrics.engine_counters``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402

from featurelib.errors import UserError  # noqa: E402
from featurelib.engines.base import COUNTERS, Engine, task_counts  # noqa: E402
from featurelib.io.files import temp_path  # noqa: E402
from pipelines.options import FeaturizeOptions, beam_options  # noqa: E402


#: Runners whose workers run on this machine (they reach the driver's local scratch folder).
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                 "PrismRunner")

#: Namespace of the Beam counters every task increments (one pipeline per pass: names need no pass).
METRICS_NAMESPACE = "featurelib"


def result_path(work_dir: str, index: int) -> str:
    return os.path.join(work_dir, f"result-{index:06d}.pickle")


class RunTask(beam.DoFn):
    """Runs ``function`` on one ``(index, item)`` and writes its result to ``work_dir`` (temp, then rename:
    a retried or speculative bundle never leaves a half-written result)."""

    def __init__(self, function: Callable[[Any], Any], work_dir: str) -> None:
        self.function = function
        self.work_dir = work_dir
        self.counters = {name: beam.metrics.Metrics.counter(METRICS_NAMESPACE, name) for name in COUNTERS}

    def process(self, element):
        index, item = element
        result = self.function(item)
        target = result_path(self.work_dir, index)
        tmp = temp_path(target)
        with open(tmp, "wb") as handle:
            pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
        for name, value in task_counts(result).items():  # once the result is safe: a task that failed adds nothing
            self.counters[name].inc(value)
        yield index


def build_pipeline(pipeline: beam.Pipeline, function: Callable[[Any], Any], items: Sequence[Any], work_dir: str):
    """Pure graph construction: one element per task, results into `work_dir`."""
    return (
        pipeline
        | "Tasks" >> beam.Create(list(enumerate(items)), reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Run" >> beam.ParDo(RunTask(function, work_dir))
    )


class BeamEngine(Engine):
    """Runs each pass as a Beam pipeline (default runner: the embedded FnApiRunner).

    Parameters
    ----------
    argv : list of str
        Beam flags, passed through unchanged (``--runner``, ``--direct_num_workers``, ...).
    pipeline_factory : callable, optional
        Returns a fresh pipeline for each pass (tests inject TestPipelines).
    """

    name = "beam"

    def __init__(self, argv: Sequence[str] = (), *, pipeline_factory: Callable[[], beam.Pipeline] | None = None):
        self.argv = list(argv)
        self.options = beam_options(self.argv)
        self.pipeline_factory = pipeline_factory or (lambda: beam.Pipeline(options=self.options))

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> BeamEngine:
        return cls(argv)

    def check_output(self, *, remote: bool) -> None:
        """Refuse an object-store output on a runner whose workers are not on this machine: pass results
        come back through files in the driver's local scratch folder there (mount the store instead:
        deploy/beam/README.md).

        Raises
        ------
        UserError
        """
        super().check_output(remote=remote)
        runner = self.options.view_as(StandardOptions).runner or ""
        runner = runner if isinstance(runner, str) else type(runner).__name__
        if remote and runner not in LOCAL_RUNNERS:
            raise UserError(f"the Beam runner {runner} with an object-store output: pass results come back through "
                            f"the driver's disk, which {runner}'s workers cannot reach; write to a mounted output "
                            f"(gcsfuse, s3fs-fuse, NFS: deploy/beam/README.md), or use the direct runner")

    def map(self, function: Callable[[Any], Any], items: Sequence[Any], *, work_dir: str) -> list[Any]:
        """One pipeline over `items`; results come back through files in `work_dir`."""
        self.add_counters(work_dir, dict.fromkeys(COUNTERS, 0))
        if not items:
            return []
        os.makedirs(work_dir, exist_ok=True)
        try:
            with quiet_workers(), self.pipeline_factory() as pipeline:
                build_pipeline(pipeline, function, items, work_dir)
        except Exception as exc:
            raise RuntimeError(f"Beam pipeline failed: {_root_message(exc)}") from exc
        self.add_counters(work_dir, query_counters(getattr(pipeline, "result", None)))
        results = []
        for index in range(len(items)):
            with open(result_path(work_dir, index), "rb") as handle:
                results.append(pickle.load(handle))  # written by our own workers in this run
        return results


def query_counters(result) -> dict[str, int]:
    """Our counters (:data:`METRICS_NAMESPACE`) in a finished pipeline's `result`, summed over steps.

    Committed values where the runner has them, else attempted ones (which may count a retried
    bundle twice); every one of :data:`~featurelib.engines.base.COUNTERS` is there (0 if never
    incremented, or if the runner reports no metrics).
    """
    from apache_beam.metrics.metric import MetricsFilter

    counts = dict.fromkeys(COUNTERS, 0)
    if result is None:
        return counts
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except (NotImplementedError, AttributeError, KeyError):  # a runner without metrics: counters are advice
        return counts
    for metric in found:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + int(value or 0)
    return counts


#: Set (to anything) to keep Beam's own logging: ``featurize run --verbose`` sets it.
VERBOSE_ENV = "FEATURELIB_VERBOSE"

#: The folder whose ``sitecustomize.py`` quiets Beam's worker subprocesses (read it for why and how).
WORKER_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_site")

#: Where the FnApiRunner logs again, on the driver, each record its worker subprocesses send it.
_RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"


def _not_relayed(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Worker: ")


@contextlib.contextmanager
def quiet_workers() -> Iterator[None]:
    """While a pipeline runs: Beam's worker subprocesses log warnings and errors only (quiet by default).

    The workers (``--direct_running_mode=multi_processing``) inherit this process's environment: with
    :data:`WORKER_SITE` first on their PYTHONPATH each one logs its own warnings and errors to stderr,
    and none of its INFO lines. The copy of each record the runner logs again here, as one line of
    protobuf text, is dropped (the worker has printed it). Nothing changes with ``--verbose``
    (:data:`VERBOSE_ENV`). The runner's exit status and a failed bundle's error are untouched.
    """
    if os.environ.get(VERBOSE_ENV) or not os.path.isfile(os.path.join(WORKER_SITE, "sitecustomize.py")):
        yield
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(entry for entry in (WORKER_SITE, before) if entry)
    relay = logging.getLogger(_RELAY_LOGGER)
    relay.addFilter(_not_relayed)
    try:
        yield
    finally:
        relay.removeFilter(_not_relayed)
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _root_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Beam repeats the worker traceback; its last line is the original error.
    return text[-1] if text else type(exc).__name__


def run(argv: Sequence[str] | None = None, *, pipeline_factory: Callable[[], beam.Pipeline] | None = None):
    """Entry point of ``python -m pipelines.extract_features``; returns the run report."""
    from featurelib import logs
    from featurelib.driver import execute, format_summary
    from featurelib.errors import UserError
    from featurelib.spec import RunSpec

    argv = list(sys.argv[1:] if argv is None else argv)
    ours = PipelineOptions(argv).view_as(FeaturizeOptions)
    if not ours.spec:
        raise UserError("pipelines.extract_features: --spec is required")
    spec = RunSpec.from_yaml(ours.spec).with_overrides(
        input=ours.input, output=ours.output, shards=ours.shards,
        threads_per_worker=ours.threads_per_worker, batch_size=ours.batch_size)
    engine = BeamEngine(_strip_own_flags(argv), pipeline_factory=pipeline_factory)
    report = execute(spec, engine, resume=ours.resume, overwrite=ours.overwrite, incremental=ours.incremental,
                     prune=ours.prune)
    print(format_summary(report.manifest, spec.output.path, report.seconds))
    logs.write_summary(report.manifest, spec.output.path, report.seconds)  # JSON only: the summary event
    return report


_OWN_VALUE_FLAGS = ("--spec", "--input", "--output", "--shards", "--threads_per_worker", "--batch_size",
                    "--log_format")
_OWN_SWITCHES = ("--resume", "--overwrite", "--incremental", "--prune")


def _strip_own_flags(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _OWN_VALUE_FLAGS:
            skip = True
            continue
        if arg in _OWN_SWITCHES or any(arg.startswith(f + "=") for f in _OWN_VALUE_FLAGS):
            continue
        out.append(arg)
    return out


def _print_help() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipelines.extract_features",
                                     description="Run a featurelib spec as a Beam pipeline (default runner: the "
                                                 "embedded FnApiRunner). Every flag of Beam's PipelineOptions is "
                                                 "accepted too (--runner, --direct_num_workers, "
                                                 "--direct_running_mode, --temp_location, ...); an unknown one is an "
                                                 "error (exit 2).")
    FeaturizeOptions._add_argparse_args(parser)
    parser.print_help()


def main() -> int:
    from featurelib import logs
    from featurelib.exits import RESUME_HINT, with_exit_codes

    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        _print_help()
        return 0
    from featurelib.incremental import INCREMENTAL_HINT

    hint = INCREMENTAL_HINT if "--incremental" in sys.argv[1:] else RESUME_HINT
    with logs.using(logs.format_from_argv(sys.argv[1:], "--log_format")):
        return with_exit_codes(lambda: run() and None, interrupted=hint)


if __name__ == "__main__":
    sys.exit(main())
