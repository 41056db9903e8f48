"""Extract features with Apache Beam: the same shard tasks as every engine.

    python -m pipelines.extract_features --spec deploy/specs/demo.yaml --input data/demo/digits \
        --output out/beam --direct_num_workers=2 --direct_running_mode=multi_processing
    featurize run --engine beam --spec deploy/specs/demo.yaml ...

Graph: ``Create(tasks) | Reshuffle | ParDo(ProcessShard) | ToList | Map(commit)``.
One element per shard task: rows never cross a process boundary, so no engine
shuffle holds feature data (GroupByKey of rows grew memory with the dataset).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from featurelib.engines.base import Engine
from featurelib.errors import PolicyError
from featurelib.io import files as layout
from pipelines.options import FeaturizeOptions, beam_options


class ProcessShard(beam.DoFn):
    """Runs :func:`featurelib.run.process_shard`; ``setup`` warms the worker's caches once."""

    def __init__(self, spec_json: str) -> None:
        self.spec_json = spec_json

    def setup(self) -> None:
        from featurelib.engines.local import worker_init
        from featurelib.run import worker_state

        worker_init()
        worker_state(self.spec_json)  # heavy state once per worker process, not per task

    def process(self, task):
        from featurelib.run import process_shard

        yield process_shard(task)


class Apply(beam.DoFn):
    """Generic map for auxiliary passes (``dedup: content`` hashing)."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def process(self, element):
        yield self.function(element)


def build_pipeline(pipeline: beam.Pipeline, tasks: Sequence[Any], finish: Callable[[list[Any]], Any]):
    """Pure graph construction: shard tasks in, one commit at the end."""
    spec_json = tasks[0].spec_json if tasks else ""
    results = (
        pipeline
        | "ShardTasks" >> beam.Create(list(tasks), reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "ProcessShards" >> beam.ParDo(ProcessShard(spec_json))
        | "Gather" >> beam.combiners.ToList()
    )
    return results | "Commit" >> beam.Map(lambda rs: json.dumps(finish(rs)["counts"]))


class BeamEngine(Engine):
    """Runs shard tasks in a Beam pipeline (default runner: the embedded FnApiRunner).

    Parameters
    ----------
    argv : list of str
        Beam flags, passed through unchanged (``--runner``, ``--direct_num_workers``, ...).
    pipeline_factory : callable, optional
        Returns the pipeline to build into (tests inject a TestPipeline).
    """

    name = "beam"

    def __init__(self, argv: Sequence[str] = (), *, pipeline_factory: Callable[[], beam.Pipeline] | None = None):
        self.argv = list(argv)
        self.options = beam_options(self.argv)
        self.pipeline_factory = pipeline_factory or (lambda: beam.Pipeline(options=self.options))

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> BeamEngine:
        return cls(argv)

    def describe(self) -> str:
        options = self.options.get_all_options()
        return f"beam ({self.options.view_as(StandardOptions).runner}, workers={options.get('direct_num_workers')}, " \
               f"mode={options.get('direct_running_mode')})"

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """Auxiliary pass: results come back through a file the last step writes."""
        import pickle
        import tempfile

        if not items:
            return []
        from featurelib.engines.local import set_worker_environment

        set_worker_environment()
        with tempfile.TemporaryDirectory(prefix="featurelib-beam-") as scratch:
            target = os.path.join(scratch, "results.pickle")

            def save(results, target=target):
                with open(target, "wb") as handle:
                    pickle.dump(sorted(results, key=lambda r: r[0]), handle)

            # Always a fresh pipeline: an injected test pipeline is kept for the main graph.
            with beam.Pipeline(options=self.options) as pipeline:
                (pipeline
                 | beam.Create(list(enumerate(items)), reshuffle=False)
                 | beam.Reshuffle()
                 | beam.Map(lambda pair, f=function: (pair[0], f(pair[1])))
                 | beam.combiners.ToList()
                 | beam.Map(save))
            with open(target, "rb") as handle:
                return [result for _, result in pickle.load(handle)]

    def run(self, tasks: Sequence[Any], finish: Callable[[list[Any]], dict[str, Any]]) -> dict[str, Any]:
        """Process and commit inside the pipeline; the manifest on disk is the result."""
        if not tasks:  # every shard reused: nothing to schedule, commit here
            return finish([])
        from featurelib.engines.local import set_worker_environment

        set_worker_environment()  # multi-processing workers inherit it: no page-fault storm per image
        output = tasks[0].output
        try:
            with self.pipeline_factory() as pipeline:
                build_pipeline(pipeline, tasks, finish)
        except Exception as exc:
            # The commit step wrote _FAILED.json before raising; Beam wraps the error.
            failed = os.path.join(output, layout.FAILED)
            if os.path.exists(failed):
                with open(failed, encoding="utf-8") as handle:
                    document = json.load(handle)
                if document.get("kind") == "policy":
                    raise PolicyError(document["error"]) from None
            raise RuntimeError(f"Beam pipeline failed: {_root_message(exc)}") from exc
        with open(os.path.join(output, layout.MANIFEST), encoding="utf-8") as handle:
            return json.load(handle)


def _root_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Beam repeats the worker traceback; its last line is the original error.
    return text[-1] if text else type(exc).__name__


def run(argv: Sequence[str] | None = None, *, test_pipeline: beam.Pipeline | None = None):
    """Entry point of ``python -m pipelines.extract_features``; returns the run report."""
    from featurelib.driver import execute, format_summary
    from featurelib.spec import RunSpec

    argv = list(sys.argv[1:] if argv is None else argv)
    ours = PipelineOptions(argv).view_as(FeaturizeOptions)
    if not ours.spec:
        raise SystemExit("pipelines.extract_features: --spec is required")
    beam_argv = _strip_own_flags(argv)
    spec = RunSpec.from_yaml(ours.spec).with_overrides(input=ours.input, output=ours.output, shards=ours.shards)
    factory = (lambda: test_pipeline) if test_pipeline is not None else None
    engine = BeamEngine(beam_argv, pipeline_factory=factory)
    report = execute(spec, engine, resume=ours.resume, overwrite=ours.overwrite)
    print(format_summary(report.manifest, spec.output.path, report.seconds))
    return report


_OWN_VALUE_FLAGS = ("--spec", "--input", "--output", "--shards")
_OWN_SWITCHES = ("--resume", "--overwrite")


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


def main() -> int:
    from featurelib.cli import with_exit_codes

    return with_exit_codes(lambda: run() and None)


if __name__ == "__main__":
    sys.exit(main())
