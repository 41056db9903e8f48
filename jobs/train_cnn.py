"""Train a small LeNet-style CNN on the pixels an output stored (``output.pixels: true``).

    python jobs/train_cnn.py OUT [--name NAME] [--epochs N] [--batch-size N] [--seed N]
                                 [--learning-rate R] [--no-augment] [--overwrite]

Reads the train and val pixel shards through ``tf.data`` (reshuffled every epoch),
augments train images on the fly, follows a cosine learning-rate schedule, keeps
the epoch with the lowest validation loss, and reports its accuracy on test.
Writes ``OUT/models/NAME/`` (default NAME ``cnn-pixels``): ``model.keras``,
``model.json``, ``report.json``, ``curves.png``, ``confusion.png``
(:mod:`featurelib.train.cnn`). Needs ``pip install 'featurelib[deep]'``.

Exit codes as ``featurize``: 0 done; 2 the user's mistake (not an output, no
pixels stored, no train or val rows, an existing model folder, bad arguments,
TensorFlow missing); 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featurelib.exits import EXIT_USER, with_exit_codes  # noqa: E402
from featurelib.train import cnn  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with one line, as featurize does
        self.print_usage(sys.stderr)
        print(f"train_cnn: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    defaults = cnn.CnnSettings()
    parser = _Parser(prog="train_cnn.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", metavar="OUT", help="a committed output with pixels stored")
    parser.add_argument("--name", default=cnn.DEFAULT_NAME, help="model folder under OUT/models/ (%(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="%(default)s")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="%(default)s")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help="Adam's initial rate, cosine-decayed over the epochs (%(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="%(default)s")
    parser.add_argument("--no-augment", action="store_true", help="train on the images as stored")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder of that name")
    return parser.parse_args(list(argv))


def _train(args: argparse.Namespace) -> int:
    settings = cnn.CnnSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                               augment=not args.no_augment, seed=args.seed)
    settings.check()
    if "://" in args.output and not args.output.startswith("file://"):
        from featurelib.errors import UserError

        raise UserError(f"{args.output}: the model is written under OUT/models/, so OUT must be a local folder")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notes drown the report
    report = cnn.train_cnn(args.output, name=args.name, settings=settings, overwrite=args.overwrite,
                           deterministic=True)
    from featurelib.train.base import format_report

    print(format_report(report))
    print(f"  best epoch {report['best_epoch']} of {settings.epochs} (val loss {report['best_val_loss']:.4f}), "
          f"{report['seconds']:.1f} s; saved in {os.path.join(args.output, 'models', args.name)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return with_exit_codes(lambda: _train(args))


if __name__ == "__main__":
    sys.exit(main())
