"""Training and prediction on a committed output (``featurize train`` / ``featurize predict``).

Trainers by name, like engines: ``sklearn`` is built in; others (``spark``) are
declared in the ``featurelib.trainers`` entry-point group with the extra they
need, so a missing extra is one clear message.
"""

from __future__ import annotations

from featurelib.errors import UserError

#: Entry-point group of trainers (value ``module:Class``, extras name the pip extra).
ENTRY_POINT_GROUP = "featurelib.trainers"
#: Trainers that ship with the core install.
BUILTIN = {"sklearn": "featurelib.train.sklearn_trainer:SklearnTrainer",
           # predicts with models of jobs/train_cnn.py (which trains them)
           "keras-cnn": "featurelib.train.cnn:CnnTrainer"}
DEFAULT = "sklearn"


def _entry_points() -> dict:
    from importlib import metadata

    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every trainer name this installation knows."""
    return sorted({*BUILTIN, *_entry_points()})


def trainer_class(name: str):
    """The trainer class called `name`.

    Raises
    ------
    UserError
        No trainer has that name, or its extra is not installed (the message names the
        ``pip install`` line).
    """
    import importlib

    if name in BUILTIN:
        module, _, attribute = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attribute)
    entry = _entry_points().get(name)
    if entry is None:
        raise UserError(f"unknown trainer {name!r}; known: {', '.join(names())}")
    try:
        return entry.load()
    except ImportError as exc:
        extra = entry.extras[0] if entry.extras else name
        missing = getattr(exc, "name", None) or str(exc)
        raise UserError(f"trainer {name!r} needs its extra ({missing} is not installed): "
                        f"pip install 'featurelib[{extra}]'") from None
