"""Pipeline options: featurelib's own flags next to every Beam flag.

    python -m pipelines.extract_features --spec S [--input P] [--output P] [--shards N]
        [--threads_per_worker N] [--batch_size N] [--resume | --overwrite | --incremental]
        [--log_format text|json] [any Beam flag: --runner, --direct_num_workers, ...]
"""

from __future__ import annotations

import difflib
import logging

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from featurelib.errors import UserError

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
                                                                 "(their shards are redone)")
        parser.add_argument("--log_format", choices=("text", "json"), default="text",
                            help="featurelib's stderr lines as text or one JSON object per line (featurelib.logs)")


def unknown_flags(argv: list[str]) -> list[tuple[str, str | None]]:
    """The flags in `argv` that no Beam options class (nor featurelib's) defines, each with a close known one.

    Beam itself only logs "Discarding unparseable args" and runs on: a misspelt
    ``--direct_num_worker=2`` would silently run with one worker.
    """
    parsers = []
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_logger.level
    beam_logger.setLevel(logging.ERROR)  # its "Discarding unparseable args" warning: ours says more
    try:
        PipelineOptions(argv).get_all_options(add_extra_args_fn=parsers.append)
    finally:
        beam_logger.setLevel(level)
    parser = parsers[0]
    _, unknown = parser.parse_known_args(argv)
    known = [option for action in parser._actions for option in action.option_strings]
    out = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if not name.startswith("-"):
            continue  # a value of an unknown flag, or a stray word: reported with its flag
        close = difflib.get_close_matches(name, known, n=1)
        out.append((name, close[0] if close else None))
    return out


def check_runner(name: str) -> None:
    """Refuse a runner Beam does not know (Beam would fail only when the pipeline runs)."""
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(name)
    except ValueError as exc:
        raise UserError(f"unknown Beam runner {name!r}: {str(exc).splitlines()[0]}") from None
    except ImportError as exc:
        raise UserError(f"Beam runner {name!r} needs a package that is not installed ({exc})") from None


def beam_options(argv: list[str]) -> PipelineOptions:
    """PipelineOptions from `argv`, with the FnApiRunner unless ``--runner`` says otherwise.

    Raises
    ------
    UserError
        A flag no Beam options class defines (with the closest known one), or an unknown runner.
    """
    unknown = unknown_flags(list(argv))
    if unknown:
        described = ", ".join(f"{name} (did you mean {close}?)" if close else name for name, close in unknown)
        raise UserError(f"unknown Beam flag(s): {described}; every flag of Beam's PipelineOptions and "
                        f"featurelib's own are accepted")
    options = PipelineOptions(argv)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    check_runner(options.view_as(StandardOptions).runner)
    return options
