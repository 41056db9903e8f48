"""What every engine's worker process does first, and what it keeps between tasks.

One module for the local pool, Beam and Spark workers alike:

* :func:`environment` is the set of environment variables a worker needs
  before it starts (glibc's malloc thresholds are read at process start-up,
  OpenMP and TensorFlow read their thread counts when they initialise); the
  driver puts it into its own environment (:func:`prepare_driver`) so that
  process pools and Beam workers inherit it, and Spark passes it as
  ``spark.executorEnv.*``;
* :func:`setup` applies the settings inside a running worker, once per process
  and setting: glibc's malloc thresholds through ``mallopt`` (so a worker
  forked from a server started with another environment gets them too), and
  the thread limit (OpenCV, already loaded BLAS / OpenMP pools, TensorFlow when
  imported);
* :func:`cached` is the per-process state cache (the parsed spec, loaded
  extractor handlers: CNN weights load once per process, never per task), and
  :func:`teardown` releases it.

Engines never call these directly: they map a :class:`WorkerCall`, which runs
:func:`setup` before the task's function in whatever process the engine chose.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import os
import sys
from collections.abc import Callable
from typing import Any

#: glibc settings that stop fresh worker processes paying page faults on every
#: decoded image (measured: decode 1.1 ms -> 0.6 ms per 500x375 JPEG). Read by glibc
#: at start-up, so they must be in the environment before the workers exist.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "134217728"}

#: Variables that bound each native library's thread pool, set to the run's
#: ``execution.threads_per_worker`` (the engine's parallelism is its processes).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """The run settings a worker applies to itself (from the spec's ``execution`` section)."""

    threads: int = 1


def environment(settings: WorkerSettings) -> dict[str, str]:
    """Environment variables a worker process needs from its start: malloc and thread limits,
    the extractor plugin modules the driver uses (a remote worker must register them too), and
    ``FEATURELIB_VERBOSE`` when the driver has it (``--verbose``: a worker importing TensorFlow
    then lets its start-up lines through, :mod:`featurelib.deep.quiet`; Spark executors get it too)."""
    from featurelib.deep.quiet import VERBOSE_ENV
    from featurelib.registry import PLUGINS_ENV

    threads = str(settings.threads)
    env = {**MALLOC_ENV, **{name: threads for name in THREAD_VARIABLES}}
    for name in (PLUGINS_ENV, VERBOSE_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def prepare_driver(settings: WorkerSettings) -> None:
    """Put :func:`environment` into this (the driver's) environment, so workers started from now
    on inherit it. Malloc settings the user set are kept; thread limits follow the run setting."""
    for key, value in environment(settings).items():
        if key not in THREAD_VARIABLES:
            os.environ.setdefault(key, value)
        else:
            os.environ[key] = value


_APPLIED: WorkerSettings | None = None
_MALLOPT: dict[str, bool] = {}

# mallopt(3) parameter numbers (glibc's malloc.h): the same settings as MALLOC_ENV.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _apply_malloc() -> dict[str, bool]:
    """Set glibc's trim and mmap thresholds in this process (what MALLOC_ENV does at start-up).

    Returns ``{setting: applied}``; everything False where glibc is not the C library.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: the environment variables are all there is
        return {"mmap_threshold": False, "trim_threshold": False}
    return {"mmap_threshold": bool(mallopt(_M_MMAP_THRESHOLD, int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))),
            "trim_threshold": bool(mallopt(_M_TRIM_THRESHOLD, int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"])))}


def setup(settings: WorkerSettings) -> None:
    """Apply `settings` in this process (idempotent; cheap when nothing changed)."""
    global _APPLIED, _MALLOPT
    if _APPLIED == settings:
        return
    import cv2

    if not _MALLOPT:
        _MALLOPT = _apply_malloc()
    for name in THREAD_VARIABLES:  # for libraries initialised later in this process
        os.environ[name] = str(settings.threads)
    cv2.setNumThreads(settings.threads)
    with contextlib.suppress(ImportError):  # BLAS / OpenMP pools already loaded (numpy, scikit-learn)
        from threadpoolctl import threadpool_limits

        threadpool_limits(settings.threads)
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None:  # imported already: its pools may exist; set what can still change
        with contextlib.suppress(RuntimeError):
            tensorflow.config.threading.set_intra_op_parallelism_threads(settings.threads)
            tensorflow.config.threading.set_inter_op_parallelism_threads(settings.threads)
    _APPLIED = settings


def applied(_item: Any = None) -> dict[str, Any]:
    """What this process runs with (mappable: tests read it back from inside each engine's workers)."""
    import cv2

    blas = []
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        blas = sorted({info["num_threads"] for info in threadpool_info()})
    return {"pid": os.getpid(), "cv2_threads": cv2.getNumThreads(), "mallopt": dict(_MALLOPT), "pool_threads": blas,
            "env": {k: os.environ.get(k) for k in (*MALLOC_ENV, *THREAD_VARIABLES)},
            "settings": dataclasses.asdict(_APPLIED) if _APPLIED else None}


@dataclasses.dataclass(frozen=True)
class WorkerCall:
    """A picklable ``function(item)`` that first runs :func:`setup` in the worker process.

    What every engine maps: the same setup whichever process the engine chose.
    """

    function: Callable[[Any], Any]
    settings: WorkerSettings
    #: Where this task reports how many of its records are done (a folder every worker can write,
    #: ``OUT/_work/<pass>/progress``), read by the driver's progress line; None: no reports.
    progress_dir: str | None = None

    def __call__(self, item: Any) -> Any:
        setup(self.settings)
        if self.progress_dir is None:
            return self.function(item)
        global _PROGRESS
        _PROGRESS = _ProgressFile(os.path.join(self.progress_dir, f"task-{_task_id(item)}.json"))
        try:
            result = self.function(item)
            _PROGRESS.write(None, final=True)
            return result
        finally:
            _PROGRESS = None


# --- progress ------------------------------------------------------------------------

#: Seconds between two progress reports of one task (a report is one small file rename).
PROGRESS_EVERY_S = 1.0


def _task_id(item: Any) -> str:
    shard = getattr(item, "shard", None)
    return f"{shard:05d}" if isinstance(shard, int) else f"{abs(hash(item)) % 10**8:08d}"


class _ProgressFile:
    def __init__(self, path: str) -> None:
        self.path, self.done, self.rejected, self.last = path, 0, 0, 0.0

    def write(self, done: int | None, rejected: int | None = None, *, final: bool = False) -> None:
        import json
        import time

        if done is not None:
            self.done = done
        if rejected is not None:
            self.rejected = rejected
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        temp = f"{self.path}.tmp-{os.getpid()}"
        # Progress is advice: a full disk or a vanished folder must never fail the task. The driver
        # makes the folder; a task never does, so a straggler cannot bring back a removed scratch folder.
        with contextlib.suppress(OSError):
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump({"done": self.done, "rejected": self.rejected, "final": final}, handle)
            os.replace(temp, self.path)


_PROGRESS: _ProgressFile | None = None


def report_progress(done: int, rejected: int | None = None) -> None:
    """Tell the driver that `done` records of the current task are finished, `rejected` of them rejected
    (throttled: one small file rename a second at most; a no-op outside a task)."""
    if _PROGRESS is not None:
        _PROGRESS.write(done, rejected)


# --- per-process state ---------------------------------------------------------------

_STATE: dict[Any, Any] = {}


def cached(key: Any, build: Callable[[], Any]) -> tuple[Any, bool]:
    """The state for `key`, built by `build()` the first time in this process.

    One key at a time: a new key tears the previous state down first, so a
    long-lived worker never accumulates models of earlier runs.

    Returns
    -------
    (state, built) : the state, and whether this call built it.
    """
    if key in _STATE:
        return _STATE[key], False
    if not _STATE:
        atexit.register(teardown)  # idempotent: a worker that exits releases what it loaded
    teardown()
    state = build()
    _STATE[key] = state
    # Everything alive now (modules, TensorFlow, the state) lives as long as the process: take it out
    # of the cyclic collector's reach. PySpark's reused workers run a full gc.collect() after every
    # task, which with TensorFlow and VGG16 loaded scans ~400,000 objects: 0.21-0.25 s idle per task
    # (measured; 0.0 s frozen). teardown() unfreezes, so a replaced state's cycles are still collected.
    gc.freeze()
    return state, True


def teardown() -> None:
    """Release the cached state: ``close()`` whatever holds resources, then collect its cycles."""
    if not _STATE:
        return
    _close_all(list(_STATE.values()))
    _STATE.clear()
    gc.unfreeze()
    gc.collect()  # a model's weights live in cycles: free them before the next state is built


def _close_all(states: list[Any]) -> None:
    # A function of its own: no variable of teardown() may still hold a state when it collects.
    for state in states:
        close = getattr(state, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # releasing must not mask the reason we are here
                close()
