"""``OUT/_LOCK``: one run at a time per output.

A run creates the lock before it changes anything in the output and removes it
when it ends, whatever the outcome. The lock is a small JSON document (host,
pid, start, heartbeat, a token). A second run on the same output is refused
while the first is alive; a lock left by a run that died (killed, machine
lost) is taken over with a message:

* on the same host, when its process no longer runs;
* from another host, when its heartbeat is older than ``stale_after_s``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from featurelib.errors import UserError
from featurelib.io import files as layout
from featurelib.io.outfs import LocalOutput, Output
from featurelib.processes import process_alive

#: Seconds between two heartbeats of a running run.
HEARTBEAT_S = 10.0
#: A lock whose heartbeat is older than this (and whose process cannot be checked) belongs to a dead run.
STALE_AFTER_S = 120.0


def _now() -> float:
    return time.time()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def read_lock(output: Output) -> dict[str, Any] | None:
    """The lock document of `output`; None if there is none, ``{}`` if it cannot be read."""
    try:
        document = json.loads(output.read_bytes(layout.LOCK))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def stale_reason(document: dict[str, Any], *, now: float, host: str, stale_after_s: float = STALE_AFTER_S
                 ) -> str | None:
    """Why the lock `document` belongs to a run that is gone, or None if that run may still be alive.

    Parameters
    ----------
    document : dict
        A lock as :func:`read_lock` returns it.
    now : float
        Current time, seconds since the epoch.
    host : str
        This machine's host name.
    """
    beat = document.get("heartbeat_s")
    age = now - beat if isinstance(beat, (int, float)) else None
    if document.get("host") == host and isinstance(document.get("pid"), int):
        if not process_alive(document["pid"]):
            return f"its process {document['pid']} no longer runs"
        if age is not None and age > stale_after_s:  # the pid was reused, or the run hangs
            return f"its process {document['pid']} has sent no heartbeat for {age:.0f} s"
        return None
    if age is None:
        return "it cannot be read" if not document else "it holds no heartbeat"
    if age > stale_after_s:
        return f"its last heartbeat is {age:.0f} s old"
    return None


def _describe(document: dict[str, Any], now: float) -> str:
    started = document.get("started_s")
    beat = document.get("heartbeat_s")
    parts = [f"pid {document.get('pid', '?')} on host {document.get('host', '?')}"]
    if isinstance(started, (int, float)):
        parts.append(f"started {_iso(started)}")
    if isinstance(beat, (int, float)):
        parts.append(f"last heartbeat {max(0.0, now - beat):.0f} s ago")
    return ", ".join(parts)


@dataclasses.dataclass
class OutputLock:
    """A held ``OUT/_LOCK``; :meth:`release` removes it (only if it is still ours)."""

    output: Output
    document: dict[str, Any]
    heartbeat_s: float = HEARTBEAT_S
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _ours(self) -> bool:
        found = read_lock(self.output)
        return bool(found) and found.get("token") == self.document["token"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._ours():  # taken over (we were judged dead): never write over the new owner
                    return
                self.document["heartbeat_s"] = _now()
                self.output.write_bytes(layout.LOCK, json.dumps(self.document).encode())
            except Exception:  # an object store's network error: a missed beat, the next one may pass
                continue

    def start(self) -> OutputLock:
        self._thread = threading.Thread(target=self._beat, name="featurelib-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # Never fail the run here (this runs in a finally, after a commit or under another error):
        # a lock the store could not delete is taken over as stale by the next run.
        with contextlib.suppress(Exception):
            if self._ours():
                self.output.remove(layout.LOCK)


def acquire(root: str, *, log: Callable[[str], None], heartbeat_s: float = HEARTBEAT_S,
            stale_after_s: float = STALE_AFTER_S, output: Output | None = None) -> OutputLock:
    """Take ``root/_LOCK`` for this process, or refuse.

    The lock is created only if none is there: a hard link of a finished temporary file on a
    local file system, a conditional PUT (``If-None-Match``) on an object store.

    Parameters
    ----------
    root : str
        An existing, writable output folder (or an object-store URI, with `output`).
    log : callable
        Receives the one-line message when a stale lock is taken over.
    output : LocalOutput or RemoteOutput, optional
        The output at `root` (default: the local folder `root`).

    Raises
    ------
    UserError
        Another live run holds the output.
    """
    output = output or LocalOutput(root)
    path = output.path(layout.LOCK)
    host = socket.gethostname()
    for _ in range(3):  # a race with another run taking over the same stale lock: look again
        now = _now()
        document = {"host": host, "pid": os.getpid(), "started_s": now, "started_at": _iso(now),
                    "heartbeat_s": now, "token": uuid.uuid4().hex}
        if output.create_exclusive(layout.LOCK, json.dumps(document).encode()):
            if not output.exclusive:
                log(f"featurize: warning: the store of {root!r} has no conditional create: two runs started at "
                    f"the same moment could both take its lock")
            return OutputLock(output, document, heartbeat_s).start()
        found = read_lock(output)
        if found is None:
            continue  # released meanwhile
        reason = stale_reason(found, now=now, host=host, stale_after_s=stale_after_s)
        if reason is None:
            raise UserError(f"output {root!r} is in use by another run ({_describe(found, now)}); wait for it to "
                            f"end or choose another --output (a lock left by a dead run is taken over by itself: "
                            f"at once on the same host, after {stale_after_s:.0f} s without heartbeat from another)")
        log(f"featurize: taking over the lock of {root!r} from a run that is gone ({_describe(found, now)}; "
            f"{reason})")
        with contextlib.suppress(FileNotFoundError):
            output.remove(layout.LOCK)
    raise UserError(f"output {root!r}: could not take its lock {path!r} (other runs keep taking it)")
