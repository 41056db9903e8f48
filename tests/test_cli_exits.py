"""Exit codes of the one place that maps errors to them (featurelib.exits)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from featurelib.exits import with_exit_codes

def chatty():
    for i in range(200000):  # far beyond a pipe's buffer: the write fails once the reader is gone
        print(f"line {i}")

sys.exit(with_exit_codes(chatty))
"""


def test_a_closed_stdout_exits_141_without_a_traceback():
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"line 0\n"
    process.stdout.close()  # `featurize inspect OUT | head -1`
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == b""
