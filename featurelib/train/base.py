"""What every trainer shares: the request, the saved-model folder, the report.

A trained model lives in ``OUT/models/NAME/``::

    model.json      what the model is and what it takes (MODEL_INFO_VERSION, trainer, model,
                    columns, feature_fingerprint, label_names, standardize, pca, chosen params)
    report.json     selection on val, metrics on test (see :func:`classification_report`)
    confusion.png   the test confusion matrix
    ...             the trainer's own files (``model.joblib`` for sklearn, ``spark/`` for MLlib)

``featurize predict`` reads ``model.json`` first and refuses an output whose
feature fingerprint differs from the one the model was trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from featurelib.errors import UserError

#: Model names of ``--model`` (contract). Each trainer says which it supports.
MODELS = ("logreg", "knn", "linear_svm", "random_forest", "decision_tree", "sgd")
MODEL_INFO = "model.json"
REPORT = "report.json"
CONFUSION_PNG = "confusion.png"
MODELS_DIR = "models"
PREDICTIONS_DIR = "predictions"
MODEL_INFO_VERSION = 1


@dataclasses.dataclass
class TrainRequest:
    """One ``featurize train`` call.

    Attributes
    ----------
    output : str
        The committed output to train on (``OUT``).
    columns : list of str
        Feature columns, side by side in this order.
    model : str
        One of :data:`MODELS`.
    name : str
        The model's folder name under ``OUT/models/``.
    standardize : bool
        Standardise features with statistics of the train split before the model.
    pca : int or None
        Project on this many principal components (randomized PCA fitted on a train sample).
    seed : int
        Every random choice (shuffles, PCA sample, forests) follows it.
    options : dict
        Trainer-specific settings (Spark: ``master``, ``conf``; sklearn ``sgd``: ``batch_size``,
        ``shuffle_buffer``, ``epochs``).
    overwrite : bool
        Replace an existing model folder of that name (refused otherwise).
    """

    output: str
    columns: list[str]
    model: str
    name: str
    standardize: bool = False
    pca: int | None = None
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    overwrite: bool = False

    @property
    def model_dir(self) -> str:
        return os.path.join(self.output, MODELS_DIR, self.name)


def default_name(model: str, columns: Sequence[str]) -> str:
    """``<model>-<columns joined by +>``, e.g. ``logreg-hog+lbp``."""
    return f"{model}-{'+'.join(columns)}"


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision, recall, F1 and support, and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : ndarray, (N,) int
        Label indices into ``label_names``.
    label_names : sequence of str, length C

    Returns
    -------
    dict
        ``{"rows": N, "accuracy": float, "macro_f1": float, "per_class": {name: {precision, recall,
        f1, support}}, "confusion": C x C list (rows: true label, columns: predicted)}``.
        A class with no prediction has precision 0 (and no warning).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n_classes = len(label_names)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    f1s = []
    for index, name in enumerate(label_names):
        tp = int(confusion[index, index])
        predicted, actual = int(confusion[:, index].sum()), int(confusion[index].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
        if actual:
            f1s.append(f1)
    return {"rows": int(len(y_true)), "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "per_class": per_class,
            "confusion": confusion.tolist()}


def format_report(report: dict[str, Any]) -> str:
    """The lines ``featurize train`` prints: selection, then test metrics per class."""
    lines = [f"model {report['name']}: {report['model']} on {'+'.join(report['columns'])} "
             f"({report['trainer']}), chosen {json.dumps(report['selection']['chosen'], sort_keys=True)}"]
    for split in ("train", "val", "test"):
        part = report.get(split)
        if part and part.get("rows"):
            lines.append(f"  {split:5s} {part['rows']:6d} rows  accuracy {part['accuracy']:.4f}"
                         + (f"  macro F1 {part['macro_f1']:.4f}" if "macro_f1" in part else ""))
    test = report.get("test") or {}
    if test.get("per_class"):
        width = max(len(n) for n in test["per_class"])
        lines.append(f"  {'class':{width}s}  precision  recall     f1  support")
        for name, m in test["per_class"].items():
            lines.append(f"  {name:{width}s}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  "
                         f"{m['support']:7d}")
    return "\n".join(lines)


def write_confusion_png(confusion: Sequence[Sequence[int]], label_names: Sequence[str], path: str,
                        title: str = "") -> None:
    """The confusion matrix as a PNG heat map with counts (rows: true, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    n = len(label_names)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(n), labels=label_names, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=label_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title)
        high = matrix.max() if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if high and matrix[i, j] > high / 2 else "black", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_json(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` through a temporary file and a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def refuse_existing_model_dir(model_dir: str, overwrite: bool) -> None:
    """Raise :class:`UserError` when ``model_dir`` exists and ``overwrite`` is off."""
    if os.path.exists(model_dir) and not overwrite:
        raise UserError(f"model folder {model_dir} already exists: choose another --name or "
                        f"pass --overwrite to replace it")


@contextlib.contextmanager
def staged_model_dir(model_dir: str, overwrite: bool) -> Iterator[str]:
    """A fresh folder beside ``model_dir`` to train into, renamed to ``model_dir`` when the
    block succeeds: a folder under ``models/`` is always complete, and a failed or interrupted
    training leaves the previous model as it was.

    Yields
    ------
    str
        The staging folder (``models/.NAME.tmp-PID``: a temporary by the contract's naming).
    """
    refuse_existing_model_dir(model_dir, overwrite)
    parent, name = os.path.split(model_dir)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        yield staging
        refuse_existing_model_dir(model_dir, overwrite)  # another training may have finished meanwhile
        if os.path.exists(model_dir):
            retired = f"{staging}.old"
            os.rename(model_dir, retired)
            os.rename(staging, model_dir)
            shutil.rmtree(retired)
        else:
            os.rename(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_model_info(model_dir: str) -> dict[str, Any]:
    """``model.json`` of a saved model.

    Raises
    ------
    UserError
        ``model_dir`` holds no ``model.json`` (not a saved model, or training did not finish).
    """
    path = os.path.join(model_dir, MODEL_INFO)
    if not os.path.exists(path):
        where = "does not exist" if not os.path.exists(model_dir) else "holds no model.json"
        raise UserError(f"{model_dir!r} is not a saved featurelib model: it {where}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def open_for_prediction(trainer: str, model_dir: str, output: str, *, columns: bool = True):
    """``(model.json, dataset)`` for ``predict``: the model is ``trainer``'s, the output is
    committed and has the model's feature fingerprint (and, with ``columns``, its columns).

    Raises
    ------
    UserError
        Not a saved model of that trainer, not an output, or incompatible features.
    """
    from featurelib.io.dataset import open_dataset

    info = read_model_info(model_dir)
    if info.get("trainer") != trainer:
        raise UserError(f"{model_dir} was trained by the {info.get('trainer')!r} trainer, not {trainer!r}")
    dataset = open_dataset(output)
    check_compatible(info if columns else {**info, "columns": []}, dataset)
    return info, dataset


def to_model_labels(model_names: Sequence[str], output_names: Sequence[str]) -> np.ndarray:
    """Index table from an output's label indices to the model's, by name: ``(C_out + 1,)`` int32.

    Index it with an output's ``y``: a name the model does not know maps to -1, and ``y == -1``
    (unlabelled) picks the trailing -1.
    """
    model_names = list(model_names)
    return np.array([model_names.index(n) if n in model_names else -1 for n in output_names] + [-1], np.int32)


def check_compatible(info: dict[str, Any], dataset) -> None:
    """Refuse features the model was not trained on.

    Raises
    ------
    UserError
        The dataset's feature fingerprint differs from the model's (the message names both and
        what to do), or a column the model needs is missing.
    """
    if dataset.feature_fingerprint != info["feature_fingerprint"]:
        raise UserError(f"{dataset.root} has feature_fingerprint {dataset.feature_fingerprint[:12]}..., the model "
                        f"was trained on {info['feature_fingerprint'][:12]}...: its features are not comparable "
                        f"(another spec, decode policy or vocabulary); extract them with the model's spec")
    missing = [name for name in info["columns"] if name not in dataset.columns]
    if missing:
        raise UserError(f"{dataset.root} lacks the model's columns {missing}")


# --- the trainer interface -----------------------------------------------------------------------

class Trainer:
    """What ``featurize train`` / ``predict`` call; subclasses are found by name (:mod:`featurelib.train`).

    ``train(request)`` fits, selects on val, reports on test and writes ``request.model_dir``
    (``model.json``, ``report.json``, ``confusion.png`` and its own files), returning the report
    dict, whose keys are: ``name``, ``model``, ``trainer``, ``columns``, ``feature_fingerprint``,
    ``label_names``, ``standardize``, ``pca``, ``seed``, ``selection`` (``{"metric":
    "val accuracy", "candidates": [{"params": {...}, "val_accuracy": float}], "chosen": {...}}``),
    ``train``/``val``/``test`` (:func:`classification_report`, ``None`` for an empty split) and
    ``seconds``. ``predict(model_dir, output)`` writes ``output/predictions/NAME.parquet`` and
    returns its path.
    """

    name = ""
    #: The :data:`MODELS` this trainer fits.
    models: tuple[str, ...] = ()

    def train(self, request: TrainRequest) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, model_dir: str, output: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError


# --- PCA as a projection ---------------------------------------------------------------------------

PCA_FILE = "pca.npz"


def fit_pca(sample: np.ndarray, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Randomized PCA of a train sample, as a projection any engine can apply.

    Parameters
    ----------
    sample : ndarray, (S, D) float
        Train rows (a seeded sample when the split is large).
    n_components : int
        ``k``, at most ``min(S, D)``.
    seed : int

    Returns
    -------
    mean : ndarray, (D,) float32
    components : ndarray, (k, D) float32
        Project with ``(x - mean) @ components.T`` -> ``(N, k)``.
    """
    from sklearn.decomposition import PCA

    sample = np.asarray(sample, dtype=np.float64)
    limit = min(sample.shape)
    if not 1 <= n_components <= limit:
        raise UserError(f"--pca {n_components}: must be between 1 and {limit} "
                        f"(the smaller of {sample.shape[0]} sample rows and {sample.shape[1]} features)")
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(sample)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def project(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``(x - mean) @ components.T``: ``(N, D)`` -> ``(N, k)`` float32."""
    return ((np.asarray(x, np.float32) - mean) @ components.T).astype(np.float32, copy=False)


def save_pca(model_dir: str, mean: np.ndarray, components: np.ndarray) -> None:
    np.savez(os.path.join(model_dir, PCA_FILE), mean=mean, components=components)


def load_pca(model_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = os.path.join(model_dir, PCA_FILE)
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        return data["mean"], data["components"]
