"""``featurize``: the command line (docs/CONTRACT.md, "Command line").

    featurize sample-data digits data/digits
    featurize run --spec spec.yaml --input data/digits --output out/digits [--engine local|beam|spark]
    featurize run --spec spec.yaml --incremental          (add what is new since the last commit)
    featurize inspect out/digits
    featurize preview --spec spec.yaml --input data/photos --n 8 --out preview.png
    featurize train out/digits --features hog --model logreg [--trainer sklearn|spark]
    featurize predict out/new --model out/digits/models/logreg-hog
    featurize validate spec.yaml [--input P] [--output P]     (every problem, with its line; runs nothing)
    featurize plan --spec spec.yaml [--sample 16] [--json]    (inputs, classes, shards, sizes, time estimate)
    featurize extractors [NAME] [--json]                       (every extractor, or one's parameters)

``run``, ``train`` and ``predict`` take ``--log-format json``: every line they write to stderr is
then one JSON object (:mod:`featurelib.logs`).

Exit codes (:mod:`featurelib.exits`): 0 done; 2 the user's mistake (spec,
arguments, input, output); 3 failed by policy (error budget); 130 interrupted
(143 SIGTERM, 129 SIGHUP); 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from featurelib import logs
from featurelib.errors import UserError
from featurelib.exits import EXIT_ERROR, EXIT_OK, EXIT_USER, RESUME_HINT, with_exit_codes
from featurelib.logs import LogLine


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 already; keep its message short and ours
        if logs.is_json():
            logs.write(LogLine(f"featurize: error: {message}", "error", "error", exit_code=EXIT_USER,
                               usage=self.format_usage().strip()))
        else:
            self.print_usage(sys.stderr)
            print(f"featurize: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=logs.FORMATS, default=logs.DEFAULT_FORMAT,
                        help="stderr as text (default) or one JSON object per line (ts, level, event, message "
                             "and the event's fields) for schedulers and log collectors; stdout is unchanged")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="featurize", description="Distributed image preprocessing and feature extraction.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a spec on an engine",
                         description="Run a spec. Flags not listed here go to the engine "
                                     "(local: --workers; beam: any Beam flag; spark: --master, --conf k=v).")
    run.add_argument("--spec", required=True, help="YAML spec file")
    run.add_argument("--input", help="overrides input.path")
    run.add_argument("--output", help="overrides output.path")
    run.add_argument("--shards", type=int, help="overrides output.shards")
    run.add_argument("--engine", default="local",
                     help="local (default, a process pool), beam or spark (each needs its extra)")
    run.add_argument("--threads-per-worker", type=int, default=None,
                     help="native threads per worker process (overrides execution.threads_per_worker)")
    run.add_argument("--batch-size", type=int, default=None,
                     help="images per extractor call (overrides execution.batch_size)")
    run.add_argument("--verbose", action="store_true",
                     help="keep the engines' own logging (Spark's log4j INFO lines, Beam's workers' INFO lines, "
                          "TensorFlow's start-up lines; quiet by default)")
    _add_log_format(run)
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="reuse the committed shards of the same run")
    mode.add_argument("--overwrite", action="store_true", help="replace an output holding a different run")
    mode.add_argument("--incremental", action="store_true",
                      help="process only the inputs the committed output does not hold yet, as a new generation "
                           "of shard files (same spec; artefacts, labels and shard count of the first run)")
    run.add_argument("--prune", action="store_true",
                     help="with --incremental: drop the rows of inputs no longer listed (their shards are redone)")

    look = sub.add_parser("preview", help="write one PNG of sources next to their augmented variants",
                          description="Decode, preprocess and augment a seeded pick of sources exactly as a run "
                                      "would, and write them as a captioned grid (one source per row).")
    look.add_argument("--spec", required=True, help="YAML spec file")
    look.add_argument("--input", help="overrides input.path")
    look.add_argument("--n", type=int, default=8, help="sources to show (default 8)")
    look.add_argument("--out", default="preview.png", help="PNG to write (default preview.png)")

    sample = sub.add_parser("sample-data", help="write a real labelled sample image set")
    sample.add_argument("name", choices=("digits", "textures", "photos"))
    sample.add_argument("dir")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--scale", type=int, default=1, help="repeat the set this many times (benchmarks)")

    compare = sub.add_parser("compare", help="say what differs between outputs (files, rows, columns, values, "
                                             "rejects, manifests), each against the first")
    compare.add_argument("outputs", nargs="+")
    compare.add_argument("--json", action="store_true", help="print the full comparison")

    inspect = sub.add_parser("inspect", help="describe a committed output")
    inspect.add_argument("output")
    inspect.add_argument("--json", action="store_true", help="print the whole manifest")
    inspect.add_argument("--storage-options", metavar="JSON", help="fsspec options of an object-store output, "
                         "as JSON, or @FILE holding it (keeps credentials out of the process list)")

    train = sub.add_parser("train", help="fit a classifier on an output's features (docs/TRAINING.md)",
                           description="Fit on the train split, select on val, report on test; save the model "
                                       "under OUT/models/NAME/ (model.json, report.json, confusion.png).")
    train.add_argument("output", metavar="OUT", help="a committed output")
    train.add_argument("--features", required=True, help="feature columns, comma-separated (e.g. hog,lbp)")
    train.add_argument("--model", required=True,
                       help="logreg, knn, linear_svm, random_forest, decision_tree or sgd (the trainer says which "
                            "it fits)")
    train.add_argument("--trainer", default="sklearn", help="sklearn (default) or spark (needs its extra)")
    train.add_argument("--name", help="model folder under OUT/models/ (default <model>-<columns joined by +>)")
    train.add_argument("--standardize", action="store_true", help="standardise features with train statistics")
    train.add_argument("--pca", type=int, metavar="N", help="project on N principal components of a train sample")
    train.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model folder of that name")
    train.add_argument("--master", help="spark trainer: the Spark master URL")
    train.add_argument("--conf", action="append", default=[], metavar="K=V", help="spark trainer: a Spark setting "
                                                                                   "(repeatable)")
    _add_log_format(train)

    predict = sub.add_parser("predict", help="apply a saved model to an output with the same features",
                             description="Write OUT_NEW/predictions/NAME.parquet: a predicted label (and "
                                         "probabilities) for every row, unlabelled ones included.")
    predict.add_argument("output", metavar="OUT_NEW", help="a committed output with the model's feature fingerprint")
    predict.add_argument("--model", required=True, metavar="MODEL_DIR", help="a saved model, OUT/models/NAME")
    _add_log_format(predict)

    report = sub.add_parser("report", help="write a self-contained HTML report of a committed output",
                            description="Counts, classes, rejects (with examples), input sizes, feature statistics, "
                                        "sample images with their variants and time per stage, as one HTML file "
                                        "(plots inlined; nothing loaded from elsewhere).")
    report.add_argument("output", metavar="OUT", help="a committed output")
    report.add_argument("--out", help="HTML file to write (default OUT/report.html)")
    report.add_argument("--spec", help="the run's spec, when the sample images need its input.storage_options "
                                       "(default: the spec stored in the manifest)")
    report.add_argument("--samples", type=int, default=6, help="sample sources in the image grid (default 6; 0: none)")

    check = sub.add_parser("validate", help="check a spec and its paths without running anything",
                           description="List every problem of a spec at once, each with its YAML line and key "
                                       "path, then check the input and output paths (nothing is created).")
    check.add_argument("spec", metavar="SPEC", help="YAML spec file")
    check.add_argument("--input", help="overrides input.path")
    check.add_argument("--output", help="overrides output.path")
    check.add_argument("--overwrite", action="store_true", help="an output holding another run is fine (run "
                                                                "--overwrite will replace it)")

    dry = sub.add_parser("plan", help="list the inputs and estimate a run without running it",
                         description="Inputs, bytes, classes, splits, list-stage rejects, shards, feature columns, "
                                     "output size, and a run time estimate measured on a seeded sample of inputs "
                                     "in this process. Nothing is written.")
    dry.add_argument("--spec", required=True, help="YAML spec file")
    dry.add_argument("--input", help="overrides input.path")
    dry.add_argument("--output", help="overrides output.path")
    dry.add_argument("--shards", type=int, help="overrides output.shards")
    dry.add_argument("--sample", type=int, default=16, help="inputs to time (default 16; 0: no estimate)")
    dry.add_argument("--workers", type=int, help="local engine workers to estimate for (default: one per core)")
    dry.add_argument("--json", action="store_true", help="print the plan as JSON")

    extractors = sub.add_parser("extractors", help="list the extractors, or show one's parameters",
                                description="Every registered extractor (built-in and plugins), or with NAME its "
                                            "parameters, defaults, meaning and output length.")
    extractors.add_argument("name", metavar="NAME", nargs="?", help="one extractor")
    extractors.add_argument("--json", action="store_true", help="print as JSON")
    return parser


#: Set by ``featurize run --verbose``: engines keep their own logging (read by jobs/session.py).
VERBOSE_ENV = "FEATURELIB_VERBOSE"


def _run(args: argparse.Namespace, engine_argv: list[str]) -> int:
    from featurelib.driver import execute, format_summary
    from featurelib.engines import get_engine
    from featurelib.spec import RunSpec

    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"

    spec = RunSpec.from_yaml(args.spec).with_overrides(input=args.input, output=args.output, shards=args.shards,
                                                       threads_per_worker=args.threads_per_worker,
                                                       batch_size=args.batch_size)
    spec.require_paths()
    engine = get_engine(args.engine, engine_argv)
    try:
        report = execute(spec, engine, resume=args.resume, overwrite=args.overwrite, incremental=args.incremental,
                         prune=args.prune)
    finally:
        engine.close()
    print(format_summary(report.manifest, spec.output.path, report.seconds))
    logs.write_summary(report.manifest, spec.output.path, report.seconds)  # JSON only: stderr's summary event
    return EXIT_OK


def _preview(args: argparse.Namespace) -> int:
    from featurelib.preview import preview
    from featurelib.spec import RunSpec

    preview(RunSpec.from_yaml(args.spec).with_overrides(input=args.input), args.n, args.out)
    return EXIT_OK


def _sample(args: argparse.Namespace) -> int:
    from featurelib.sample_data import make_sample

    try:
        summary = make_sample(args.name, args.dir, seed=args.seed, scale=args.scale)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {summary.n_images} images in {summary.n_classes} classes ({summary.bytes} bytes) to {args.dir}")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from featurelib.driver import format_summary
    from featurelib.io import files as layout
    from featurelib.io.readers import load_manifest

    from featurelib.io.outfs import is_remote, open_output

    options = _json_option(args.storage_options, "--storage-options")
    manifest = load_manifest(args.output, storage_options=options)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return EXIT_OK
    print(format_summary(manifest, args.output if is_remote(args.output) else os.path.abspath(args.output)))
    output = open_output(args.output, options)
    if output.exists(layout.FAILED):
        print(f"note             the last run failed (see {output.uri(layout.FAILED)}); this manifest is still valid")
    print("schema")
    for field in manifest["schema"]:
        print(f"  {field['name']:<16}{field['type']}")
    print("files")
    for info in manifest["files"]:
        print(f"  {info['path']:<40}{info['kind']:<11}rows={info['rows']:<7}bytes={info['bytes']}")
    return EXIT_OK


def _json_option(text: str | None, flag: str) -> dict:
    """The JSON object given to `flag` (empty when not given).

    Raises
    ------
    UserError
        Not JSON, or not an object.
    """
    if text is None:
        return {}
    if text.startswith("@"):  # @file.json: credentials stay out of `ps` and the shell's history
        try:
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise UserError(f"{flag}: cannot read {text[1:]!r}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{flag}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


def _require_local(path: str, command: str) -> None:
    """Refuse an object-store output for the commands that write beside it or read it by path.

    Raises
    ------
    UserError
    """
    from featurelib.io.outfs import is_remote

    if is_remote(path):
        raise UserError(f"featurize {command} works on local or mounted outputs; {path!r} is an object store: "
                        f"copy it first (e.g. aws s3 sync), or read it in Python with "
                        f"featurelib.io.open_dataset({path!r}, storage_options=...)")


def _compare(args: argparse.Namespace) -> int:
    from featurelib.compare import compare_pair, summary_line
    from featurelib.io.readers import load_manifest

    for path in args.outputs:
        _require_local(path, "compare")
    if len(args.outputs) < 2:
        raise UserError("compare needs at least two outputs")
    manifests = [load_manifest(path) for path in args.outputs]
    pairs = [compare_pair(args.outputs[0], manifests[0], path, manifest)
             for path, manifest in zip(args.outputs[1:], manifests[1:])]
    same = all(pair["same_data"] for pair in pairs)
    if args.json:
        print(json.dumps({"same_data": same, "pairs": pairs}, indent=2, sort_keys=True))
        return EXIT_OK if same else EXIT_ERROR
    for pair in pairs:
        print(summary_line(pair))
        for line in pair["details"]:
            print(f"  {line}")
    print("outputs hold the same data" if same else "outputs differ")
    return EXIT_OK if same else EXIT_ERROR


def _train(args: argparse.Namespace) -> int:
    from featurelib.train import trainer_class
    from featurelib.train.base import MODELS, TrainRequest, default_name, format_report

    _require_local(args.output, "train")
    columns = [name.strip() for name in args.features.split(",") if name.strip()]
    if not columns:
        raise UserError("--features: give at least one feature column (e.g. --features hog,lbp)")
    options: dict = {}
    if args.master:
        options["master"] = args.master
    if args.conf:
        options["conf"] = dict(_key_value(item) for item in args.conf)
    trainer = trainer_class(args.trainer)()
    if args.model not in trainer.models and args.model not in MODELS:
        raise UserError(f"unknown model {args.model!r}; the {trainer.name} trainer fits: {', '.join(trainer.models)}")
    # A model of another trainer: the trainer refuses it itself, saying which trainer fits it.
    request = TrainRequest(output=args.output, columns=columns, model=args.model,
                           name=args.name or default_name(args.model, columns), standardize=args.standardize,
                           pca=args.pca, seed=args.seed, options=options, overwrite=args.overwrite)
    report = trainer.train(request)
    print(format_report(report))
    print(f"model saved in {request.model_dir}")
    return EXIT_OK


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--conf {item!r}: expected KEY=VALUE")
    return key, value


def _predict(args: argparse.Namespace) -> int:
    import collections

    import pyarrow.parquet as pq

    from featurelib.train import trainer_class
    from featurelib.train.base import read_model_info

    _require_local(args.output, "predict")
    info = read_model_info(args.model)
    path = trainer_class(info["trainer"])().predict(args.model, args.output)
    labels = pq.read_table(path, columns=["label_name"]).column("label_name").to_pylist()
    print(f"wrote {len(labels)} predictions to {path}")
    for name, count in sorted(collections.Counter(labels).items()):
        print(f"  {name:<16}{count}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from featurelib.report import write_report

    _require_local(args.output, "report")
    write_report(args.output, args.out, spec_path=args.spec, n_samples=args.samples)
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from featurelib.validate import validate

    result = validate(args.spec, input=args.input, output=args.output, overwrite=args.overwrite)
    print("\n".join(result.lines()), file=sys.stderr if result.problems else sys.stdout)
    return EXIT_USER if result.problems else EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from featurelib.planning import format_plan, plan_report
    from featurelib.spec import RunSpec

    spec = RunSpec.from_yaml(args.spec).with_overrides(input=args.input, output=args.output, shards=args.shards)
    report = plan_report(spec, sample=args.sample, workers=args.workers)
    print(json.dumps(report, indent=2) if args.json else format_plan(report))
    return EXIT_OK


def _extractors(args: argparse.Namespace) -> int:
    from featurelib import catalog

    if args.name:
        entry = catalog.describe(args.name)
        print(json.dumps(entry, indent=2) if args.json else catalog.format_detail(entry))
    else:
        entries = catalog.listing()
        print(json.dumps(entries, indent=2) if args.json else catalog.format_listing(entries))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that a mistake in the arguments is reported in that format too.
    with logs.using(logs.format_from_argv(argv)):
        return _main(argv)


def _main(argv: list[str]) -> int:
    args, extra = _parser().parse_known_args(argv)
    if extra and args.command != "run":
        logs.write(LogLine(f"featurize: error: unrecognized arguments: {' '.join(extra)}", "error", "error",
                           exit_code=EXIT_USER))
        return EXIT_USER
    commands = {"run": lambda: _run(args, extra), "sample-data": lambda: _sample(args),
                "compare": lambda: _compare(args), "inspect": lambda: _inspect(args),
                "preview": lambda: _preview(args), "train": lambda: _train(args),
                "predict": lambda: _predict(args), "report": lambda: _report(args),
                "validate": lambda: _validate(args), "plan": lambda: _plan(args),
                "extractors": lambda: _extractors(args)}
    run_hint = RESUME_HINT
    if args.command == "run" and args.incremental:
        from featurelib.incremental import INCREMENTAL_HINT as run_hint
    hints = {"run": run_hint, "train": "nothing was saved (a model folder appears only when training completes)",
             "predict": "no predictions file was written"}
    return with_exit_codes(commands[args.command], interrupted=hints.get(args.command, "stopped before the end"))


if __name__ == "__main__":
    sys.exit(main())
