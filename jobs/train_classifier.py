"""Train a Spark MLlib classifier on a committed output, or apply one, under spark-submit.

    spark-submit --master spark://HOST:7077 jobs/train_classifier.py OUT --features hog,lbp --model logreg \\
        [--name NAME] [--standardize] [--pca N] [--seed N] [--overwrite] [--grid JSON] [--parallelism N]
    spark-submit jobs/train_classifier.py --predict OUT_NEW --model-dir OUT/models/NAME

The trainer of ``featurize train --trainer spark`` (:mod:`jobs.spark_trainer`)
with the session spark-submit provides: the same model folder, report and
predictions file, the same exit codes (2 and one ``featurize: error:`` line for
a user's mistake, found before any Spark application starts). ``--grid``
replaces the model's candidate grid: a JSON list of ``{MLlib parameter: value}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyspark  # noqa: E402,F401  (the spark extra)

from featurelib.errors import UserError  # noqa: E402
from jobs.extract_features import _conf_pairs  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/train_classifier.py",
                                     description="Fit on train, select on val, report on test (Spark MLlib); "
                                                 "or, with --predict, apply a saved model to another output.")
    parser.add_argument("output", nargs="?", metavar="OUT", help="the committed output to train on")
    parser.add_argument("--features", help="feature columns, comma-separated (e.g. hog,lbp)")
    parser.add_argument("--model", help="logreg, linear_svm or random_forest")
    parser.add_argument("--name", help="model folder under OUT/models/ (default <model>-<columns joined by +>)")
    parser.add_argument("--standardize", action="store_true", help="StandardScaler fitted on train")
    parser.add_argument("--pca", type=int, metavar="N", help="project on N principal components of a train sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder of that name")
    parser.add_argument("--grid", metavar="JSON", help='candidates instead of the default grid, e.g. '
                                                       '\'[{"regParam": 0.01}, {"regParam": 0.1}]\'')
    parser.add_argument("--parallelism", type=int, help="fits at once (default 2)")
    parser.add_argument("--predict", metavar="OUT_NEW", help="apply --model-dir to this output instead of training")
    parser.add_argument("--model-dir", help="with --predict: a saved model, OUT/models/NAME")
    parser.add_argument("--master", default=None, help="default: what spark-submit set, else local[*]")
    parser.add_argument("--conf", action="append", default=[], metavar="K=V")
    return parser


def _options(args: argparse.Namespace) -> dict:
    """``request.options`` of the Spark trainer from the flags that were given."""
    options: dict = {}
    if args.master:
        options["master"] = args.master
    if args.conf:
        options["conf"] = _conf_pairs(args.conf)
    if args.grid:
        try:
            options["grid"] = json.loads(args.grid)
        except json.JSONDecodeError as exc:
            raise UserError(f"--grid is not JSON: {exc}") from None
    if args.parallelism is not None:
        options["parallelism"] = args.parallelism
    return options


def _train(args: argparse.Namespace) -> None:
    from featurelib.train.base import TrainRequest, default_name, format_report
    from jobs.spark_trainer import SparkTrainer

    if not args.output or not args.features or not args.model:
        raise UserError("training needs OUT, --features and --model (or --predict OUT_NEW --model-dir DIR)")
    columns = [name.strip() for name in args.features.split(",") if name.strip()]
    if not columns:
        raise UserError("--features: give at least one feature column (e.g. --features hog,lbp)")
    request = TrainRequest(output=args.output, columns=columns, model=args.model,
                           name=args.name or default_name(args.model, columns), standardize=args.standardize,
                           pca=args.pca, seed=args.seed, options=_options(args), overwrite=args.overwrite)
    report = SparkTrainer().train(request)
    print(format_report(report))
    print(f"model saved in {request.model_dir}")


def _predict(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from jobs.spark_trainer import SparkTrainer

    given = [flag for flag, value in (("OUT", args.output), ("--features", args.features), ("--model", args.model))
             if value]
    if given or not args.model_dir:
        raise UserError("--predict OUT_NEW takes --model-dir DIR" + (f", not {', '.join(given)}" if given else ""))
    path = SparkTrainer(options=_options(args)).predict(args.model_dir, args.predict)
    print(f"wrote {pq.read_metadata(path).num_rows} predictions to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """spark-submit entry point; exit codes as ``featurize`` (0 done, 2 a user's mistake, 1 a failure)."""
    from featurelib.exits import with_exit_codes

    args = _parser().parse_args(argv)
    return with_exit_codes(lambda: _predict(args) if args.predict else _train(args))


if __name__ == "__main__":
    sys.exit(main())
