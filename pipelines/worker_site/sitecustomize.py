"""Quiet logging for Beam's SDK-harness worker subprocesses (``--direct_running_mode=multi_processing``).

Unless ``featurize run --verbose``, :class:`pipelines.extract_features.BeamEngine` puts this folder
first on the PYTHONPATH the workers inherit, so Python imports this module at start-up (``site``),
before the worker (``python -m apache_beam.runners.worker.sdk_worker_main``) imports Beam. Left alone,
that worker logs from INFO up, and Beam's own import logs a warning on the root logger while it has no
handler ("apitools not found"), whose implicit ``logging.basicConfig()`` sends every record to stderr:
a dozen INFO lines per worker start and stop. The FnApiRunner gives its workers no pipeline options, so
``--default_sdk_harness_log_level`` cannot reach them. Here the root logger gets a stderr handler first:
warnings and errors only, in ``basicConfig``'s format, less the two warnings every start-up logs
(the missing optional Google Cloud clients; no ``semi_persistent_directory``, which only Beam's
container workers have). Any other ``sitecustomize`` on the path then runs as it would have.
"""

import importlib.machinery
import importlib.util
import logging
import os
import sys

#: Start-up warnings of every worker that say nothing about the run.
NOISE = ("apitools not found", "semi_persistent_directory")


def _not_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(text in message for text in NOISE)


def _install() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    handler.addFilter(_not_noise)
    logging.getLogger().addHandler(handler)


def _run_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_install()
_run_next_sitecustomize()
