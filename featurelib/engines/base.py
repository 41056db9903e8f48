"""What every engine provides: ``map`` over tasks and ``run`` (map, then commit)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class Engine:
    """Base class: subclasses implement :meth:`map`; :meth:`run` may put the commit elsewhere."""

    name = "base"

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError  # abstract: every engine overrides it

    def run(self, tasks: Sequence[Any], finish: Callable[[list[Any]], dict[str, Any]]) -> dict[str, Any]:
        """Process every shard task, then commit on the driver."""
        from featurelib.run import process_shard

        return finish(self.map(process_shard, tasks))
