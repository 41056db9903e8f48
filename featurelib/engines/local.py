"""The ``local`` engine: a process pool, one worker per core. The baseline every engine is measured against.

    featurize run --engine local --spec spec.yaml [--workers N]
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

#: glibc settings that stop fresh worker processes paying page faults on every
#: decoded image (STACK.md: decode 1.1 ms -> 0.6 ms). Read by glibc at start-up,
#: so they must be in the environment before the workers exist.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "134217728"}

#: One thread per worker for every native library: the parallelism is the pool's.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def set_worker_environment() -> None:
    """Put the malloc and thread settings into this process's environment (unless the user set them),
    so worker processes started from now on inherit them: the local pool, Beam's multi-processing
    workers and anything else that starts workers from the driver's environment."""
    for key, value in {**MALLOC_ENV, **THREAD_ENV}.items():
        os.environ.setdefault(key, value)


def worker_init() -> None:
    """Per-worker setup: single-threaded OpenCV (the pool already uses every core)."""
    import cv2

    cv2.setNumThreads(1)


class LocalEngine(Engine):
    """Runs shard tasks in a ``forkserver`` process pool.

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

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[function(item) for item in items]`` in worker processes, in order.

        The first failure cancels what has not started and propagates; a dead
        worker raises ``BrokenProcessPool`` rather than hanging.
        """
        if not items:
            return []
        set_worker_environment()
        context = multiprocessing.get_context("forkserver")
        results: list[Any] = [None] * len(items)
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(self.workers, len(items)), mp_context=context, initializer=worker_init
        ) as pool:
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
