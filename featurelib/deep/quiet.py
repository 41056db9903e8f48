"""TensorFlow's start-up lines kept off stderr in worker processes, unless ``featurize run --verbose``.

Every process that imports TensorFlow prints lines such as::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796297046.305743 473 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1796297046.348835 473 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...

(and on machines with CUDA libraries, ``E0000 ... Unable to register cuDNN factory`` and the like):
one set per worker process, on every engine. TensorFlow's C++ code writes them straight to file
descriptor 2 through absl, before anything has called ``absl::InitializeLog()``: at that point absl
logs everything and ``TF_CPP_MIN_LOG_LEVEL`` is not consulted (measured with TensorFlow 2.21: level 3
still prints the oneDNN lines), and absl has no environment variable of its own. Python's logging
settings cannot reach them either. So :func:`quiet_import_tensorflow` points file descriptor 2 at a
temporary file while TensorFlow and Keras are imported, and keeps what was written there for an
error report. After the import, TensorFlow's own logging honours ``TF_CPP_MIN_LOG_LEVEL``, which is
set to 3 beforehand (unless the user set it): no INFO lines when the first op creates its devices.

``TF_ENABLE_ONEDNN_OPTS`` is left alone on purpose: ``0`` would silence one line by changing the
kernels TensorFlow runs, hence the features (they must equal bare Keras within 1e-5).

``--verbose`` (``FEATURELIB_VERBOSE``, which the driver's environment passes to every worker,
:func:`featurelib.worker.environment`) changes nothing here: TensorFlow prints what it prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from types import ModuleType

#: Set (to anything) by ``featurize run --verbose``: TensorFlow's lines are left as they come.
VERBOSE_ENV = "FEATURELIB_VERBOSE"

#: TensorFlow's C++ log threshold after its import (3: fatal only; an error also reaches Python as an exception).
LOG_LEVEL_ENV, QUIET_LEVEL = "TF_CPP_MIN_LOG_LEVEL", "3"

#: The most characters of captured stderr an import error carries (its last ones: the error is at the end).
NOTE_CHARS = 6000

#: What TensorFlow's import wrote on stderr in this process while it was captured ("" if nothing or verbose).
captured = ""

_LOCK = threading.Lock()


def verbose() -> bool:
    """Whether TensorFlow's start-up lines are wanted (``FEATURELIB_VERBOSE`` set, as ``--verbose`` does)."""
    return bool(os.environ.get(VERBOSE_ENV))


def quiet_import_tensorflow() -> ModuleType:
    """Import TensorFlow and Keras in this process without TensorFlow's start-up lines; return ``tensorflow``.

    Unless :func:`verbose`: ``TF_CPP_MIN_LOG_LEVEL`` defaults to 3, file descriptor 2 is pointed at
    a temporary file for the import (TensorFlow's C++ code writes there directly, see the module
    docstring) and restored afterwards, and the Python-side loggers of TensorFlow and absl are lowered
    to errors only. What the import wrote is kept in :data:`captured`; on success it is not shown.

    Safe to call from any thread, any number of times: the first call imports (under a lock, so
    no two threads swap file descriptor 2 at once; workers import TensorFlow once per process),
    later calls return the module. While the import runs (seconds), whatever another thread of
    the process writes to stderr goes to the same file.

    Returns
    -------
    module
        ``tensorflow`` (``keras`` is imported too: ``import keras`` is then free).

    Raises
    ------
    ImportError, Exception
        Whatever the import raises, with the captured stderr text (its last
        :data:`NOTE_CHARS` characters) added as a note, so that a real failure still says
        why wherever the worker's error is reported (the driver prints the traceback,
        notes included). A process killed during the import (a fatal C++ check) leaves
        the text in its ``featurelib-tensorflow-import-<pid>-*.log`` in the temporary folder.
    """
    global captured
    with _LOCK:
        if sys.modules.get("tensorflow") is not None and sys.modules.get("keras") is not None:
            return sys.modules["tensorflow"]  # imported already (None: made unimportable, the import says so)
        if verbose():
            import keras  # noqa: F401 - imported for the caller
            import tensorflow

            return tensorflow
        # Read by TensorFlow when it initialises its logging: set before the import, kept if the user chose.
        os.environ.setdefault(LOG_LEVEL_ENV, QUIET_LEVEL)
        text, error = _import_capturing_fd2()
        captured = text
        if error is not None:
            if text.strip():
                error.add_note(f"TensorFlow's output on stderr during its import (featurize run --verbose shows "
                               f"it as it comes):\n{text[-NOTE_CHARS:].rstrip()}")
            raise error
        tensorflow = sys.modules["tensorflow"]
        _lower_python_loggers(tensorflow)
        return tensorflow


def _import_capturing_fd2() -> tuple[str, BaseException | None]:
    """``import tensorflow, keras`` with file descriptor 2 on a temporary file: (its text, the import's error)."""
    handle, path = tempfile.mkstemp(prefix=f"featurelib-tensorflow-import-{os.getpid()}-", suffix=".log")
    error: BaseException | None = None
    _flush_stderr()  # Python's buffered text goes where it was meant to go, before the switch
    saved = os.dup(2)
    try:
        os.dup2(handle, 2)
        try:
            import tensorflow  # noqa: F401
            import keras  # noqa: F401 - Keras 3 with the TensorFlow backend: its import can print too
        except BaseException as exc:  # noqa: BLE001 - handed back and raised by the caller, after the restore
            error = exc
        finally:
            _flush_stderr()  # what Python buffered during the import belongs to the capture
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        os.close(handle)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    return text, error


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):  # a closed or replaced sys.stderr: nothing to flush
        sys.stderr.flush()


def _lower_python_loggers(tensorflow: ModuleType) -> None:
    """TensorFlow's Python logger (``tf.get_logger()``: retracing warnings, deprecations) and absl's:
    errors only, as the C++ side (they are Python loggers, not file descriptor 2)."""
    with contextlib.suppress(Exception):
        tensorflow.get_logger().setLevel(logging.ERROR)
    with contextlib.suppress(Exception):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
