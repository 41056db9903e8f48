"""A small LeNet-style CNN trained on the stored pixels of an output (``jobs/train_cnn.py``).

The shards feed the network through :meth:`FeatureDataset.tf_dataset`: uint8
``(B, H, W, 3)`` batches, reshuffled every epoch with a seed. Everything the
network needs to take raw pixels is inside it: rescaling, the augmentation
layers (Keras preprocessing layers act only in training, so validation, test
and later predictions see the images as stored) and a per-channel
normalisation with the train statistics of ``stats.json``. The saved model
therefore takes the output's pixels as they are.

A trained model lives in ``OUT/models/NAME/`` like every trainer's
(:mod:`featurelib.train.base`)::

    model.keras     the best epoch by validation loss (ModelCheckpoint)
    model.json      trainer "keras-cnn", feature_fingerprint, label_names, image size, settings
    report.json     per-epoch history, the chosen epoch, train/val/test metrics of that model
    curves.png      train and validation loss and accuracy per epoch
    confusion.png   the test confusion matrix
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurelib.errors import UserError
from featurelib.train import base

TRAINER = "keras-cnn"
MODEL = "lenet"
MODEL_FILE = "model.keras"
CURVES_PNG = "curves.png"
#: Default model folder name: ``cnn-pixels``.
DEFAULT_NAME = base.default_name("cnn", ["pixels"])


@dataclasses.dataclass(frozen=True)
class CnnSettings:
    """How the CNN is trained.

    Attributes
    ----------
    epochs : int
        Passes over the train split.
    batch_size : int
    learning_rate : float
        Adam's rate at epoch 0; a cosine schedule takes it to ``learning_rate * final_fraction``
        at the last epoch.
    final_fraction : float
    augment : bool
        Random rotation, translation and zoom of train images (train only).
    rotation, translation, zoom : float
        Their amounts: a fraction of a full turn, of the image size, of the image size.
    seed : int
        Keras, TensorFlow, NumPy and Python seeds, the shuffles and the augmentation.
    """

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 3e-3
    final_fraction: float = 0.05
    augment: bool = True
    rotation: float = 0.04
    translation: float = 0.08
    zoom: float = 0.08
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`UserError` for settings no training can take."""
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1; got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1; got {self.batch_size}")
        if not self.learning_rate > 0:
            raise UserError(f"the learning rate must be positive; got {self.learning_rate}")


def cosine_rate(epoch: int, epochs: int, initial: float, final_fraction: float) -> float:
    """The learning rate of ``epoch`` (0-based): cosine from ``initial`` at epoch 0 down to
    ``initial * final_fraction`` at the last epoch.

    >>> cosine_rate(0, 10, 1.0, 0.0), cosine_rate(9, 10, 1.0, 0.0)
    (1.0, 0.0)
    """
    if epochs <= 1:
        return initial
    progress = epoch / (epochs - 1)
    floor = initial * final_fraction
    return floor + (initial - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lenet(image_size: Sequence[int], n_classes: int, pixel_mean: Sequence[float],
                pixel_std: Sequence[float], settings: CnnSettings):
    """LeNet-5 with ReLU and max pooling, taking raw uint8 pixels.

    Parameters
    ----------
    image_size : (H, W)
    n_classes : int
        ``C``, the width of the softmax.
    pixel_mean, pixel_std : sequence of 3 floats
        Per-channel train statistics on the 0-255 scale (``stats.json``'s ``pixels``).
    settings : CnnSettings
        Augmentation amounts and the seed of the random layers.

    Returns
    -------
    keras.Model
        ``(B, H, W, 3)`` uint8 -> ``(B, C)`` class probabilities (uncompiled).
    """
    import keras
    from keras import layers

    h, w = (int(v) for v in image_size)
    std = np.where(np.asarray(pixel_std, np.float64) > 0, pixel_std, 1.0)
    inputs = keras.Input((h, w, 3), dtype="uint8", name="pixels")
    x = layers.Rescaling(1.0, name="to_float")(inputs)  # casts: the augmentation layers need floats
    if settings.augment:
        x = layers.RandomRotation(settings.rotation, fill_mode="nearest", seed=settings.seed, name="rotate")(x)
        x = layers.RandomTranslation(settings.translation, settings.translation, fill_mode="nearest",
                                     seed=settings.seed + 1, name="translate")(x)
        x = layers.RandomZoom(settings.zoom, fill_mode="nearest", seed=settings.seed + 2, name="zoom")(x)
    x = layers.Normalization(mean=list(pixel_mean), variance=list(np.square(std)), name="standardize")(x)
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="fc1")(x)
    x = layers.Dense(84, activation="relu", name="fc2")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=MODEL)


def write_curves_png(history: dict[str, list[float]], path: str, *, best_epoch: int | None = None,
                     title: str = "") -> None:
    """Train and validation loss (left) and accuracy (right) per epoch (1-based), as a PNG;
    a dashed line marks ``best_epoch``, the one kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, metric in zip(axes, ("loss", "accuracy")):
            ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"val {metric}")
            if best_epoch is not None:
                ax.axvline(best_epoch, color="gray", linestyle="--", label=f"kept (epoch {best_epoch})")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def predict_labels(model, dataset, split: str, batch_size: int = 256, *, originals_only: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` of ``model`` on the labelled rows of a split, both ``(N,)`` int32.

    Batch by batch through the shards (memory: a batch), in shard order. Reports count
    originals only, as every trainer's: augmented variants of a val or test image are not
    independent evidence.
    """
    true, predicted = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]
    for batch in dataset.batches([], split=split, pixels=True, batch_size=batch_size, originals_only=originals_only):
        probabilities = np.asarray(model.predict_on_batch(batch.pixels))
        true.append(batch.y)
        predicted.append(np.argmax(probabilities, axis=1).astype(np.int32))
    return np.concatenate(true), np.concatenate(predicted)


def _check_dataset(dataset) -> None:
    """The output must hold pixels and labelled train and val rows (before TensorFlow loads)."""
    if dataset.image_size is None:
        raise UserError(f"{dataset.root} holds no pixels: the CNN trains on images; run the spec again "
                        f"with output.pixels: true")
    labels = dataset.stats["labels"]
    for split in ("train", "val"):
        if not sum(labels.get(split, {}).values()):
            raise UserError(f"{dataset.root} has no labelled {split} images: the CNN needs train rows to fit "
                            f"and val rows to choose the epoch (spec split fractions)")


def train_cnn(output: str, *, name: str = DEFAULT_NAME, settings: CnnSettings = CnnSettings(),
              overwrite: bool = False, deterministic: bool = False, verbose: int = 2) -> dict[str, Any]:
    """Train the CNN on ``output``'s pixels; write ``output/models/name/``; return the report.

    Parameters
    ----------
    output : str
        A committed output with pixels (local folder: the model is written under it).
    name : str
        Model folder name under ``output/models/``.
    settings : CnnSettings
    overwrite : bool
        Replace an existing model folder of that name.
    deterministic : bool
        Turn on TensorFlow's deterministic kernels, for the whole process (the seeds make
        the rest repeatable): the same seed then gives the same model on one machine.
    verbose : int
        Keras ``fit`` verbosity (2: one line per epoch).

    Returns
    -------
    dict
        The report (also ``report.json``): base trainer keys (``name``, ``model``,
        ``trainer``, ``columns``, ``feature_fingerprint``, ``label_names``, ``seed``,
        ``selection``, ``train``/``val``/``test``, ``seconds``) plus ``history`` (per-epoch
        ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``learning_rate``),
        ``best_epoch`` (1-based) and ``best_val_loss``.

    Raises
    ------
    UserError
        Not an output, no pixels, no labelled train or val rows, bad settings, a model
        folder that exists, TensorFlow not installed.
    """
    from featurelib.io.dataset import open_dataset

    settings.check()
    started = time.perf_counter()
    dataset = open_dataset(output)
    _check_dataset(dataset)
    model_dir = os.path.join(output, base.MODELS_DIR, name)
    base.refuse_existing_model_dir(model_dir, overwrite)
    _load_tensorflow(deterministic)  # only now: a user's mistake above costs no import time
    with base.staged_model_dir(model_dir, overwrite) as staging:
        report = _fit(dataset, staging, name, settings, verbose)
        report["seconds"] = time.perf_counter() - started
        _write_model_folder(staging, dataset, settings, report)
    return report


def _fit(dataset, folder: str, name: str, settings: CnnSettings, verbose: int) -> dict[str, Any]:
    """Train into ``folder`` (the best checkpoint), reload the best epoch, return its report."""
    import keras

    train = dataset.tf_dataset(pixels=True, split="train", batch_size=settings.batch_size, shuffle=True,
                               seed=settings.seed)
    val = dataset.tf_dataset(pixels=True, split="val", batch_size=256, originals_only=True)

    keras.utils.set_random_seed(settings.seed)
    model = build_lenet(dataset.image_size, len(dataset.label_names), dataset.stats["pixels"]["mean"],
                        dataset.stats["pixels"]["std"], settings)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    best_path = os.path.join(folder, MODEL_FILE)
    rate = lambda epoch, _rate: cosine_rate(epoch, settings.epochs, settings.learning_rate,  # noqa: E731
                                            settings.final_fraction)
    callbacks = [keras.callbacks.ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True),
                 keras.callbacks.LearningRateScheduler(rate)]
    # shuffle=False: the reader shuffles (a new seeded order every epoch), Keras cannot.
    fit = model.fit(train, validation_data=val, epochs=settings.epochs, callbacks=callbacks, shuffle=False,
                    verbose=verbose)
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    best = int(np.argmin(history["val_loss"]))
    return _report(dataset, keras.models.load_model(best_path), name, settings, history, best)


def _load_tensorflow(deterministic: bool) -> None:
    from featurelib.deep.quiet import quiet_import_tensorflow

    try:
        tf = quiet_import_tensorflow()  # without TensorFlow's start-up lines (--verbose keeps them)
    except ImportError:
        raise UserError("the CNN trainer needs TensorFlow: pip install 'featurelib[deep]'") from None
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _report(dataset, model, name: str, settings: CnnSettings, history: dict[str, list[float]],
            best: int) -> dict[str, Any]:
    """The report of the best checkpoint ``model`` (epoch index ``best``) on every split."""
    report: dict[str, Any] = {
        "name": name, "model": MODEL, "trainer": TRAINER, "columns": ["pixels"],
        "feature_fingerprint": dataset.feature_fingerprint, "label_names": list(dataset.label_names),
        "standardize": True, "pca": None, "seed": settings.seed,
        "selection": {"metric": "val loss",
                      "candidates": [{"params": {"epoch": i + 1}, "val_loss": loss, "val_accuracy": acc}
                                     for i, (loss, acc) in enumerate(zip(history["val_loss"],
                                                                         history["val_accuracy"]))],
                      "chosen": {"epoch": best + 1}},
        "history": history, "best_epoch": best + 1, "best_val_loss": history["val_loss"][best],
        "settings": dataclasses.asdict(settings),
    }
    for split in ("train", "val", "test"):
        y_true, y_pred = predict_labels(model, dataset, split)
        report[split] = base.classification_report(y_true, y_pred, dataset.label_names) if len(y_true) else None
    return report


def _write_model_folder(model_dir: str, dataset, settings: CnnSettings, report: dict[str, Any]) -> None:
    """``model.json``, ``report.json``, ``curves.png`` and ``confusion.png`` next to ``model.keras``."""
    info = {
        "model_info_version": base.MODEL_INFO_VERSION, "trainer": TRAINER, "model": MODEL,
        "name": report["name"], "columns": ["pixels"], "feature_fingerprint": dataset.feature_fingerprint,
        "label_names": list(dataset.label_names), "image_size": list(dataset.image_size),
        "input": "uint8 (N, H, W, 3) RGB pixels as stored; the network rescales, augments (training "
                 "only) and standardises them itself",
        "files": {"model": MODEL_FILE}, "chosen": report["selection"]["chosen"],
        "settings": dataclasses.asdict(settings), "output": dataset.root,
    }
    base.write_json(os.path.join(model_dir, base.MODEL_INFO), info)
    base.write_json(os.path.join(model_dir, base.REPORT), report)
    write_curves_png(report["history"], os.path.join(model_dir, CURVES_PNG), best_epoch=report["best_epoch"],
                     title=f"{report['name']}: {MODEL} on {dataset.root}")
    if report["test"]:
        base.write_confusion_png(report["test"]["confusion"], dataset.label_names,
                                 os.path.join(model_dir, base.CONFUSION_PNG),
                                 title=f"{report['name']} on test: accuracy {report['test']['accuracy']:.4f}")


class CnnTrainer(base.Trainer):
    """``featurize predict`` for a model of ``jobs/train_cnn.py`` (``trainer: keras-cnn`` in its
    ``model.json``). Training goes through the job (or :func:`train_cnn`): it learns from pixels,
    not from feature columns, so ``featurize train`` refuses it with that advice."""

    name = TRAINER
    models = (MODEL,)

    def train(self, request: base.TrainRequest) -> dict[str, Any]:
        raise UserError(f"the {TRAINER} model learns from pixels, not feature columns: train it with "
                        f"python jobs/train_cnn.py {request.output}")

    def predict(self, model_dir: str, output: str) -> str:
        """Predict every row of ``output`` (all splits, unlabelled too) from its stored pixels; write
        ``output/predictions/NAME.parquet`` (the sklearn trainer's columns) and return its path.

        Raises
        ------
        UserError
            Not a CNN model, an output without pixels, or another feature fingerprint (the
            decode and resize policy the network was trained on).
        """
        from featurelib.train.sklearn_trainer import write_predictions

        info, dataset = base.open_for_prediction(TRAINER, model_dir, output, columns=False)
        if dataset.image_size is None:
            raise UserError(f"{output} holds no pixels (output.pixels: false): the CNN reads images")
        _load_tensorflow(False)
        import keras

        model = keras.models.load_model(os.path.join(model_dir, MODEL_FILE))
        names = list(info["label_names"])
        to_model = base.to_model_labels(names, dataset.label_names)
        parts = []
        for batch in dataset.batches([], split=None, include_unlabelled=True, pixels=True, batch_size=256):
            probabilities = np.asarray(model.predict_on_batch(batch.pixels), np.float32)
            parts.append((batch, to_model[batch.y], probabilities.argmax(axis=1).astype(np.int32), probabilities))
        path = os.path.join(output, base.PREDICTIONS_DIR, f"{info['name']}.parquet")
        write_predictions(path, parts, names, info)
        return path
