"""What every engine provides: one verb, ``map``."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any


class Engine(abc.ABC):
    """Decides where tasks run; what a task does lives in :mod:`featurelib.shard` and :mod:`featurelib.passes`.

    The driver (:func:`featurelib.driver.execute`) maps every pass of a run
    through :meth:`map` and commits on its own side, so every engine runs the
    same passes the same way.
    """

    name = "base"

    @abc.abstractmethod
    def map(self, function: Callable[[Any], Any], items: Sequence[Any], *, work_dir: str) -> list[Any]:
        """``[function(item) for item in items]``, in order, wherever the engine runs tasks.

        Parameters
        ----------
        function : picklable callable
            Runs in a worker process (a :class:`featurelib.worker.WorkerCall`).
        items : sequence of picklable items
        work_dir : str
            A folder inside the output, reachable by every worker that can write
            the output; engines whose results cannot come back in memory pass
            them through files there (it is removed at commit).
        """

    def close(self) -> None:
        """Release what the engine started (sessions, clusters); the default holds nothing."""
