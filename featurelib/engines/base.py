"""What every engine provides: ``map`` over tasks and ``run`` (map, then commit)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any


class Engine(abc.ABC):
    """Subclasses implement :meth:`map`; :meth:`run` may put the commit elsewhere (Beam does)."""

    name = "base"

    @abc.abstractmethod
    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[function(item) for item in items]``, in order, wherever the engine runs tasks."""

    def run(self, tasks: Sequence[Any], finish: Callable[[list[Any]], dict[str, Any]]) -> dict[str, Any]:
        """Process every shard task, then commit on the driver."""
        from featurelib.run import process_shard

        return finish(self.map(process_shard, tasks))
