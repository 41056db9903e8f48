"""Engines by name: ``local`` is built in; others are found through entry points.

An engine decides where tasks run (:class:`featurelib.engines.base.Engine`).
``local`` needs only the core install; ``beam`` and ``spark`` are declared in
the ``featurelib.engines`` entry-point group by the package (``setup.py``), with
the extra each needs, so featurelib never imports ``pipelines`` or ``jobs``
itself, and a missing extra is one clear message rather than a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

from featurelib.errors import UserError

#: Entry-point group of engines (value ``module:Class``, extras name the pip extra).
ENTRY_POINT_GROUP = "featurelib.engines"

#: Engines that ship with the core install.
BUILTIN = {"local": "featurelib.engines.local:LocalEngine"}

DEFAULT = "local"


def _entry_points() -> dict:
    from importlib import metadata

    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every engine name this installation knows."""
    return sorted({*BUILTIN, *_entry_points()})


def _load(target: str):
    import importlib

    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def engine_class(name: str):
    """The engine class called `name`.

    Raises
    ------
    UserError
        If no engine has that name, or its extra is not installed (the message
        names the ``pip install`` line).
    """
    if name in BUILTIN:
        return _load(BUILTIN[name])
    entry = _entry_points().get(name)
    if entry is None:
        raise UserError(f"unknown engine {name!r}; known: {', '.join(names())}")
    try:
        return entry.load()
    except ImportError as exc:
        extra = entry.extras[0] if entry.extras else name
        missing = getattr(exc, "name", None) or str(exc)
        raise UserError(f"engine {name!r} needs its extra ({missing} is not installed): "
                        f"pip install 'featurelib[{extra}]'") from None


def get_engine(name: str, argv: Sequence[str] = ()):
    """Build engine `name` from its own command-line flags `argv`."""
    return engine_class(name).from_argv(list(argv))
