"""Engines decide where shard tasks run; what a task does lives in :mod:`featurelib.run`.

``local`` is defined here; ``beam`` and ``spark`` live in ``pipelines`` and
``jobs`` and are imported only when asked for, so featurelib never imports an
engine at import time.
"""

from __future__ import annotations

from collections.abc import Sequence


def get_engine(name: str, argv: Sequence[str] = ()):
    """Build engine `name` from its own command-line flags `argv`."""
    from featurelib.errors import UserError

    if name == "local":
        from featurelib.engines.local import LocalEngine

        return LocalEngine.from_argv(argv)
    if name == "beam":
        from pipelines.extract_features import BeamEngine

        return BeamEngine.from_argv(argv)
    if name == "spark":
        from jobs.extract_features import SparkEngine

        return SparkEngine.from_argv(argv)
    raise UserError(f"unknown engine {name!r}; known: local, beam, spark")
