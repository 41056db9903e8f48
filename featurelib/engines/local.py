"""The ``local`` engine: a process pool, one worker per core. The baseline every engine is measured against.

    featurize run --spec spec.yaml [--workers N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import concurrent.futures.process
import errno
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from featurelib.engines.base import Engine, task_counts
from featurelib.errors import UserError
from featurelib.processes import process_alive


#: Imported once by the fork server, so every worker forked from it starts with them
#: (a worker that imported them itself would pay about 0.3 s of CPU per pool).
PRELOAD = ["featurelib.shard", "featurelib.passes"]

#: How often a worker checks that its driver is still alive (seconds).
DRIVER_CHECK_S = 0.5

#: How long the driver waits for a terminated worker before it kills it (seconds).
STOP_GRACE_S = 5.0


def _watch_driver(driver_pid: int) -> None:
    while True:
        time.sleep(DRIVER_CHECK_S)
        if not process_alive(driver_pid):
            # The driver is gone (killed, crashed): nobody will commit this work, and writing on
            # into its output would race a rerun. Stop now; temporaries are removed by the next run.
            os._exit(1)


#: Below this many free bytes, the file system of the output counts as full.
FULL_DISK_BYTES = 1 << 20


def _full_disk(work_dir: str | None) -> OSError | None:
    """ENOSPC naming the output, if the file system holding `work_dir` is (nearly) full; else None.

    A worker that dies abruptly leaves no error behind. On a full disk the usual
    culprit is HDF5: a write that fails with ENOSPC can leave the library in a
    state that crashes the process later (measured on a full tmpfs).
    """
    if not work_dir:
        return None
    folder = work_dir
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= FULL_DISK_BYTES:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.dirname(os.path.dirname(work_dir)))


def _start_worker(driver_pid: int) -> None:
    """Initializer of every pool worker.

    Ctrl-C reaches the whole process group; the driver alone decides what happens
    (it terminates the workers), so workers ignore SIGINT rather than each
    raising in the middle of a shard. A thread stops the worker if the driver dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_driver, args=(driver_pid,), name="featurelib-driver-watch",
                     daemon=True).start()


def stop_workers(pool: concurrent.futures.ProcessPoolExecutor, grace_s: float = STOP_GRACE_S) -> None:
    """Terminate `pool`'s worker processes now, killing any still alive after `grace_s`, and shut it down.

    ``shutdown`` alone waits for running tasks to finish (minutes for a big shard,
    writing all along); on failure or interrupt the driver wants them gone.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    pool.shutdown(wait=True, cancel_futures=True)


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

        The first failure cancels what has not started, lets running tasks
        finish (their shards serve ``--resume``) and propagates; Ctrl-C or
        SIGTERM (:class:`featurelib.errors.Terminated`) terminates every worker
        at once. A dead worker raises ``BrokenProcessPool`` rather than
        hanging; a worker whose driver dies stops on its own.

        Counters (:meth:`counters`): ``tasks``, ``rows`` and ``rejects`` of the tasks that
        finished, summed in the driver as their results come back, and ``retries``, always 0:
        the pool never retries a task (a failed task fails the run; ``--resume`` redoes it).
        """
        self.add_counters(work_dir, {"tasks": 0, "rows": 0, "rejects": 0, "retries": 0})
        if not items:
            return []
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)  # ignored once the server runs: it has them
        results: list[Any] = [None] * len(items)
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=context,
                                                      initializer=_start_worker, initargs=(os.getpid(),))
        try:
            futures = {pool.submit(function, item): index for index, item in enumerate(items)}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                self.add_counters(work_dir, task_counts(results[futures[future]]))
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: stop now
            stop_workers(pool)
            raise
        except concurrent.futures.process.BrokenProcessPool as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            full = _full_disk(work_dir)
            if full is not None:
                raise full from exc
            raise
        except BaseException:
            # A failed task: the tasks already running finish (their shards are kept for --resume),
            # the others never start.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results
