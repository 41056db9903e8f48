"""Small facts about processes on this machine, shared by the local engine and the output lock."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine: it exists and is not a zombie (dead, not yet reaped).

    A killed driver stays a zombie until its parent (a shell, a scheduler) reaps it,
    and ``kill(pid, 0)`` still succeeds on a zombie: procfs tells them apart.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):  # no procfs: kill's answer stands
        return True
    return state not in (b"Z", b"X")
