"""Exit codes and the one place that turns featurelib's errors into them.

Shared by ``featurize``, ``python -m pipelines.extract_features`` and the Spark
job, so every entry point answers the same mistake with the same code and message:
0 done; 2 the user's mistake (spec, arguments, input, output); 3 failed by
policy (error budget); 130 interrupted (Ctrl-C); 143 stopped by SIGTERM (129 by
SIGHUP); 1 anything else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

from featurelib import logs
from featurelib.errors import PolicyError, Terminated, UserError
from featurelib.logs import LogLine

EXIT_OK, EXIT_ERROR, EXIT_USER, EXIT_POLICY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: stdout closed by its reader (``featurize inspect OUT | head``): 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 141


RESUME_HINT = "run again with --resume to continue"

#: Signals that stop a run the way Ctrl-C does (clean-up, ``_FAILED.json``, exit 128 + signum).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


_RECEIVED: list[int] = []


def received_signal() -> int | None:
    """The first stop signal (SIGINT, SIGTERM, SIGHUP) received inside :func:`stop_signals_raise`, if any.

    Engines may wrap the exception a signal raised (Beam turns it into a pipeline
    error): the driver and the exit code ask this rather than the exception's type.
    """
    return _RECEIVED[0] if _RECEIVED else None


def _raise_interrupt(signum: int, frame) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`~featurelib.errors.Terminated` in the main thread.

    Python's default for SIGTERM is to die on the spot: no ``finally`` runs, so the
    workers, temporaries and the output's lock would be left behind. Raising
    lets the same clean-up as Ctrl-C run. SIGINT raises KeyboardInterrupt as
    usual; every one of them is recorded (:func:`received_signal`). Outside the main thread (a library
    caller's worker thread) signals cannot be handled, and nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _RECEIVED.clear()
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _interrupted(signum: int, hint: str) -> int:
    name = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    logs.write(LogLine(f"featurize: interrupted{name}; {hint}", "interrupted", "error",
                       signal=signal.Signals(signum).name, exit_code=128 + signum))
    return 128 + signum


def with_exit_codes(action: Callable[[], int | None], *, interrupted: str = RESUME_HINT) -> int:
    """Run `action`, turning featurelib's errors into the contract's exit codes and one message.

    A user's mistake or a policy failure is one line; anything else (a bug, a
    broken extractor, a failed task) prints its traceback, then one line.
    `interrupted` follows ``featurize: interrupted;`` on Ctrl-C, SIGTERM or SIGHUP (what the user
    can do next); the exit code is then 128 + the signal's number (130, 143, 129). Within
    :func:`featurelib.logs.using` ``("json")`` each of these is one JSON line with its ``exit_code``
    (events ``error``, ``policy_failure``, ``interrupted``, ``failed``; a traceback is a field).
    """
    try:
        with stop_signals_raise():
            return action() or EXIT_OK
    except UserError as exc:
        logs.write(LogLine(f"featurize: error: {exc}", "error", "error", exit_code=EXIT_USER))
        return EXIT_USER
    except PolicyError as exc:
        logs.write(LogLine(f"featurize: failed by policy: {exc}", "policy_failure", "error",
                           exit_code=EXIT_POLICY))
        return EXIT_POLICY
    except BrokenPipeError:
        # The reader of stdout went away: nothing left to tell it. Point stdout at /dev/null so
        # the interpreter's final flush does not raise the same error again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as exc:
        return _interrupted(exc.signum if isinstance(exc, Terminated) else signal.SIGINT, interrupted)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or received_signal() is not None:
            return _failed(exc, interrupted)
        # A full disk or quota is the machine's state, not a bug: no traceback.
        where = f": {exc.filename}" if exc.filename else ""
        # os.strerror, not exc.strerror: HDF5 puts a multi-line report there.
        logs.write(LogLine(f"featurize: failed: {os.strerror(exc.errno)}{where}; free space first ({interrupted})",
                           "failed", "error", exception=type(exc).__name__, errno=exc.errno, exit_code=EXIT_ERROR))
        return EXIT_ERROR
    except Exception as exc:
        return _failed(exc, interrupted)


def _failed(exc: Exception, interrupted: str) -> int:
    """Anything else: its traceback and one line (exit 1); an interrupt an engine wrapped: as an interrupt."""
    if received_signal() is not None:  # an engine wrapped the interrupt into its own error
        return _interrupted(received_signal(), interrupted)
    fields = {"exception": type(exc).__name__, "exit_code": EXIT_ERROR}
    if logs.is_json():  # one line: the traceback is a field
        fields["traceback"] = "".join(traceback.format_exception(exc))
    else:
        traceback.print_exception(exc, file=sys.stderr)
    logs.write(LogLine(f"featurize: failed: {type(exc).__name__}: {exc}", "failed", "error", **fields))
    return EXIT_ERROR
