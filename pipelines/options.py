"""Pipeline options: featurelib's own flags next to every Beam flag.

    python -m pipelines.extract_features --spec S [--input P] [--output P] [--shards N]
        [--threads_per_worker N] [--batch_size N] [--resume | --overwrite | --incremental]
        [any Beam flag: --runner, --direct_num_workers, ...]
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

#: Beam 2.77's DirectRunner first tries to download the Prism runner (hangs or fails
#: offline); the FnApiRunner is the embedded Python runner and never downloads anything.
DEFAULT_RUNNER = "FnApiRunner"


class FeaturizeOptions(PipelineOptions):
    """featurelib's flags, parsed by Beam's option machinery alongside its own."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--spec", help="YAML spec file")
        parser.add_argument("--input", default=None, help="overrides input.path")
        parser.add_argument("--output", default=None, help="overrides output.path")
        parser.add_argument("--shards", type=int, default=None, help="overrides output.shards")
        parser.add_argument("--threads_per_worker", type=int, default=None,
                            help="overrides execution.threads_per_worker")
        parser.add_argument("--batch_size", type=int, default=None, help="overrides execution.batch_size")
        parser.add_argument("--resume", action="store_true", help="reuse the committed shards of the same run")
        parser.add_argument("--overwrite", action="store_true", help="replace an output holding another run")
        parser.add_argument("--incremental", action="store_true",
                            help="process only the inputs the committed output does not hold yet (a new generation)")
        parser.add_argument("--prune", action="store_true", help="with --incremental: drop the rows of deleted inputs "
                                                                 "(not supported yet)")


def beam_options(argv: list[str]) -> PipelineOptions:
    """PipelineOptions from `argv`, with the FnApiRunner unless ``--runner`` says otherwise."""
    options = PipelineOptions(argv)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return options
