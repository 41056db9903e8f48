"""One progress line for a pass, on every engine, from the reports the tasks write.

Workers report how many records of their task are done (:func:`featurelib.worker.report_progress`)
as small files under ``OUT/_work/<pass>/progress/``; the driver polls that folder,
which works alike for the local pool, Beam's runners and Spark executors (every
worker can write the output). On a terminal the line is redrawn in place; in a
log (stderr not a terminal) a plain line is written every ``LOG_EVERY_S`` seconds.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable

from featurelib import logs
from featurelib.logs import LogLine

#: Seconds between two progress lines when stderr is not a terminal.
LOG_EVERY_S = 10.0
#: Seconds between two redraws on a terminal.
LIVE_EVERY_S = 0.5


def read_reports(folder: str) -> tuple[int, int]:
    """``(records done, records rejected)`` summed over the task reports in `folder` (0, 0 if none yet)."""
    done = rejected = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0, 0
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                report = json.load(handle)
        except (OSError, ValueError):  # being replaced right now: the next poll reads it
            continue
        done += int(report.get("done", 0))
        rejected += int(report.get("rejected", 0))
    return done, rejected


def describe(label: str, done: int, total: int, rejected: int, elapsed: float) -> LogLine:
    """``featurize: main: 812/1,797 images (45%), 120.3 images/s, 3 rejected, ETA 8 s``.

    The line also carries its fields for ``--log-format json`` (:mod:`featurelib.logs`, event
    ``progress``): pass, done, total, rate (images/s), eta_s (when known), rejected.
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = [f"featurize: {label}: {done:,}/{total:,} images ({100 * done / total:.0f}%)" if total
             else f"featurize: {label}: {done:,} images"]
    parts.append(f"{rate:.1f} images/s")
    if rejected:
        parts.append(f"{rejected:,} rejected")
    fields = {"pass": label, "done": done, "total": total, "rate": round(rate, 2), "rejected": rejected}
    if rate > 0 and total > done:
        parts.append(f"ETA {(total - done) / rate:.0f} s")
        fields["eta_s"] = round((total - done) / rate, 1)
    return LogLine(", ".join(parts), "progress", **fields)


class PassProgress:
    """Context manager: polls `folder` in a thread and prints progress until the block ends.

    Parameters
    ----------
    folder : str
        Where the pass's tasks write their reports.
    total : int
        Records in the pass's tasks.
    label : str
        The pass's name.
    log : callable
        Receives plain lines (logs, non-terminals).
    live : bool
        Redraw one line in place on stderr (a terminal) instead of logging; never with
        ``--log-format json`` (:func:`featurelib.logs.is_json`), which logs a line each time.
    """

    def __init__(self, folder: str, total: int, label: str, log: Callable[[str], None], *, live: bool) -> None:
        self.folder, self.total, self.label, self.log = folder, total, label, log
        self.live = live and not logs.is_json()  # JSON lines are never redrawn in place
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    def _line(self) -> LogLine:
        done, rejected = read_reports(self.folder)
        return describe(self.label, min(done, self.total) if self.total else done, self.total, rejected,
                        time.monotonic() - self.started)

    def _run(self) -> None:
        every = LIVE_EVERY_S if self.live else LOG_EVERY_S
        while not self._stop.wait(every):
            if self.live:
                sys.stderr.write("\r" + self._line() + "\033[K")
                sys.stderr.flush()
            else:
                self.log(self._line())

    def __enter__(self) -> PassProgress:
        os.makedirs(self.folder, exist_ok=True)
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="featurelib-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.live:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
