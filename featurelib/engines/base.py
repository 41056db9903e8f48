"""What every engine provides: one verb, ``map``, and the counters it kept while mapping."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: The counters every engine keeps per pass (:meth:`Engine.counters`); an engine may add its own.
COUNTERS = ("tasks", "rows", "rejects")


def pass_name(work_dir: str | None) -> str:
    """The pass a ``map`` call runs: the last part of its `work_dir` (the driver's ``OUT/_work/<pass>``)."""
    return os.path.basename(os.path.normpath(work_dir)) if work_dir else "pass"


def task_counts(result: Any) -> dict[str, int]:
    """What one finished task adds to its pass's counters.

    ``tasks`` is 1; ``rows`` and ``rejects`` come from a shard task's result
    (:class:`featurelib.shard.ShardResult` ``.metrics``: ``written_rows``, ``rejected``),
    0 for a pass that writes none (``dedup``, ``sample``).
    """
    metrics = getattr(result, "metrics", None)
    if not isinstance(metrics, Mapping):
        return {"tasks": 1, "rows": 0, "rejects": 0}
    return {"tasks": 1, "rows": int(metrics.get("written_rows", 0)), "rejects": int(metrics.get("rejected", 0))}


class Engine(abc.ABC):
    """Decides where tasks run; what a task does lives in :mod:`featurelib.shard` and :mod:`featurelib.passes`.

    The driver (:func:`featurelib.driver.execute`) maps every pass of a run
    through :meth:`map` and commits on its own side, so every engine runs the
    same passes the same way. Engines count what they ran with their own
    machinery (:meth:`counters`); the driver puts the counts in the manifest's
    ``metrics.engine_counters``, never in its ledger, whose counts come from the files.
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
            them through files there (it is removed at commit). Its last part
            names the pass in :meth:`counters`.
        """

    def check_output(self, *, remote: bool) -> None:
        """Refuse, before anything is read, an output this engine cannot write correctly; the driver
        calls it once per run (``remote``: an object store, whose files are uploaded, not renamed).

        Raises
        ------
        UserError
        """
        self.__dict__["_remote_output"] = remote

    def counters(self) -> dict[str, dict[str, int]]:
        """The engine's counters by pass since :meth:`reset_counters`: ``{"main": {"tasks": 3, "rows": 90,
        "rejects": 2}, "dedup": {...}}`` (:data:`COUNTERS` for every pass; an engine may add its own).

        What the engine counted while it ran, for monitoring: an engine may count a task more than
        once (Spark's accumulators over-count re-executed tasks), so these are never the output's
        counts (those come from the files at commit). The default: whatever :meth:`add_counters` got.
        """
        return {name: dict(values) for name, values in self.__dict__.get("_counters", {}).items()}

    def reset_counters(self) -> None:
        """Forget the counters (the driver calls it when a run starts)."""
        self.__dict__["_counters"] = {}

    def add_counters(self, work_dir: str | None, values: Mapping[str, int]) -> None:
        """Add `values` to the counters of the pass that `work_dir` belongs to (:func:`pass_name`)."""
        counters = self.__dict__.setdefault("_counters", {}).setdefault(pass_name(work_dir), {})
        for key, value in values.items():
            counters[key] = counters.get(key, 0) + int(value)

    def close(self) -> None:
        """Release what the engine started (sessions, clusters); the default holds nothing."""
