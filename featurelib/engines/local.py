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


class LocalEngine(Engine):
    """Runs tasks in a ``spawn`` process pool.

    Spawned workers start from the driver's environment as it is when the pool
    starts, which :func:`featurelib.worker.prepare_driver` has prepared (glibc
    reads its malloc settings at process start). A ``forkserver`` would hand
    every later pool the environment of the first one: a long-lived driver
    (a notebook, a test session) would lose settings changed after it.

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
        context = multiprocessing.get_context("spawn")
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
