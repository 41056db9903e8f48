"""The ``local`` engine: a process pool, one worker per core. The baseline every engine is measured against.

    featurize run --spec spec.yaml [--workers N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from featurelib.engines.base import Engine
from featurelib.errors import UserError


#: Imported once by the fork server, so every worker forked from it starts with them
#: (a worker that imported them itself would pay about 0.3 s of CPU per pool).
PRELOAD = ["featurelib.shard", "featurelib.passes"]


class LocalEngine(Engine):
    """Runs tasks in a ``forkserver`` process pool.

    Workers fork from a server that has imported featurelib already. The server
    keeps the environment it started with, so nothing a worker needs may depend
    on the environment alone: :class:`featurelib.worker.WorkerCall` applies the
    thread and malloc settings inside each worker.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default: the CPUs this process may use.
    """

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or len(os.sched_getaffinity(0))

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> LocalEngine:
        parser = argparse.ArgumentParser(prog="featurize run --engine local", add_help=False)
        parser.add_argument("--workers", type=int, default=None)
        args, unknown = parser.parse_known_args(list(argv))
        if unknown:
            raise UserError(f"unknown option(s) for the local engine: {unknown}; it takes --workers N")
        if args.workers is not None and args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        return cls(args.workers)

    def map(self, function: Callable[[Any], Any], items: Sequence[Any], *, work_dir: str | None = None) -> list[Any]:
        """``[function(item) for item in items]`` in worker processes, in order.

        The first failure cancels what has not started and propagates; a dead
        worker raises ``BrokenProcessPool`` rather than hanging.
        """
        if not items:
            return []
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)  # ignored once the server runs: it has them
        results: list[Any] = [None] * len(items)
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(self.workers, len(items)),
                                                    mp_context=context) as pool:
            futures = {pool.submit(function, item): index for index, item in enumerate(items)}
            try:
                for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                    results[futures[future]] = future.result()
                    print(f"featurize: {done}/{len(items)} tasks done", file=sys.stderr, end="\r")
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                print(file=sys.stderr)
        return results
