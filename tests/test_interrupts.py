"""Interrupted, killed and concurrent runs (issue: reliability): signals, dead drivers, the output's lock.

Each run here is a real ``featurize run`` process on real digits, slowed by the
test extractor ``sleepy`` (tests/plugins) so that signals land mid-run on time.
What is checked comes from the files on disk and the process table: exit code
and message, ``_FAILED.json``, no temporaries, no lock, no worker left, and a
``--resume`` (or a rerun) that completes with the ledger invariant.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import copy_digits, write_spec
from featurelib.errors import UserError
from featurelib.io import lock as output_lock
from featurelib.processes import process_alive
from ledger import assert_ledger

FEATURIZE = str(pathlib.Path(sys.executable).parent / "featurize")
RESUME_LINE = "run again with --resume to continue"


@pytest.fixture(scope="module")
def corpus(digits_dir, tmp_path_factory) -> pathlib.Path:
    """120 real digits in their class folders."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("interrupts") / "digits", step=15, limit=120)


def sleepy_spec(path: pathlib.Path, corpus: pathlib.Path, out: pathlib.Path, *, seconds: float = 0.1,
                shards: int = 6, **sections) -> pathlib.Path:
    """About `seconds` x 120 / 2 seconds of work on the local engine's two workers."""
    return write_spec(path, input={"path": str(corpus)}, features=[{"name": "sleepy", "params": {"seconds": seconds}}],
                      output={"path": str(out), "shards": shards, "formats": ["parquet", "hdf5"]}, **sections)


def start(spec: pathlib.Path, *flags: str, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen([FEATURIZE, "run", "--spec", str(spec), *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=new_session)


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def complete_shards(out: pathlib.Path) -> list[str]:
    """Shards whose last file (the rejects file) has its final name: complete."""
    folder = out / "rejects"
    return sorted(p.name for p in folder.glob("part-*.parquet")) if folder.is_dir() else []


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (the forkserver and pool workers of a local run), from procfs."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_bytes().rpartition(b")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def assert_stopped(pids: set[int], within: float) -> None:
    wait_for(lambda: not any(process_alive(p) for p in pids), within, f"processes {sorted(pids)} to stop")


def assert_clean_failure(out: pathlib.Path, error: str) -> None:
    failed = json.loads((out / "_FAILED.json").read_text())
    assert failed["kind"] == "interrupted" and failed["error"] == error, failed
    assert not (out / "_manifest.json").exists()
    assert not (out / "_LOCK").exists() and not (out / "_work").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def listed_keys(corpus: pathlib.Path) -> set[str]:
    return {p.relative_to(corpus).as_posix() for p in corpus.rglob("*.png")}


def test_sigterm_stops_every_worker_cleans_up_and_resume_completes(corpus, tmp_path):
    out = tmp_path / "out"
    spec = sleepy_spec(tmp_path / "spec.yaml", corpus, out)
    process = start(spec)
    wait_for(lambda: complete_shards(out), what="a first complete shard")
    workers = descendants(process.pid)
    assert len(workers) >= 2, workers  # the fork server and at least one worker
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == f"featurize: interrupted by SIGTERM; {RESUME_LINE}"
    assert_stopped(workers, within=10)  # terminated by the driver, not left to finish their shards
    assert_clean_failure(out, "interrupted by SIGTERM")
    kept = complete_shards(out)
    assert kept
    # Nothing writes into the output once the run has ended.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    time.sleep(1.0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    resumed = subprocess.run([FEATURIZE, "run", "--spec", str(spec), "--resume"], capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {len(kept)} shards already complete" in resumed.stderr
    assert_ledger(out, listed_keys(corpus))
    assert not (out / "_FAILED.json").exists() and not (out / "_LOCK").exists()


def test_ctrl_c_reaches_the_process_group_and_the_driver_alone_stops_the_run(corpus, tmp_path):
    out = tmp_path / "out"
    process = start(sleepy_spec(tmp_path / "spec.yaml", corpus, out), new_session=True)
    wait_for(lambda: complete_shards(out), what="a first complete shard")
    workers = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: every process of the group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"featurize: interrupted; {RESUME_LINE}"
    assert "Traceback" not in err  # workers ignore SIGINT: no KeyboardInterrupt trace from each of them
    assert_stopped(workers, within=10)
    assert_clean_failure(out, "interrupted (Ctrl-C)")


def test_workers_of_a_killed_driver_stop_on_their_own_and_a_rerun_takes_over_its_lock(corpus, tmp_path):
    out = tmp_path / "out"
    spec = sleepy_spec(tmp_path / "spec.yaml", corpus, out, seconds=0.25)  # 2.5 s per shard
    process = start(spec)
    wait_for(lambda: complete_shards(out), what="a first complete shard")
    workers = descendants(process.pid)
    process.kill()  # SIGKILL: no clean-up runs in the driver
    process.communicate(timeout=30)
    assert_stopped(workers, within=2.0)  # mid-shard, each notices within about a second that its driver is gone
    stale = json.loads((out / "_LOCK").read_text())
    assert stale["pid"] == process.pid and stale["host"] == socket.gethostname()

    rerun = subprocess.run([FEATURIZE, "run", "--spec", str(spec), "--resume"], capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"taking over the lock of {str(out)!r} from a run that is gone (pid {process.pid} on host" in rerun.stderr
    assert f"its process {process.pid} no longer runs" in rerun.stderr
    assert_ledger(out, listed_keys(corpus))  # the killed workers' temporaries are gone too
    assert not (out / "_LOCK").exists()


def test_a_second_run_on_a_busy_output_is_refused_and_the_first_completes(corpus, tmp_path):
    out = tmp_path / "out"
    spec = sleepy_spec(tmp_path / "spec.yaml", corpus, out, seconds=0.05)
    first = start(spec)
    wait_for((out / "_LOCK").exists, what="the first run's lock")
    for flags in ((), ("--overwrite",), ("--resume",)):
        second = subprocess.run([FEATURIZE, "run", "--spec", str(spec), *flags], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"featurize: error: output {str(out)!r} is in use by another run (pid {first.pid} on host "
            f"{socket.gethostname()}, started ")
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert_ledger(out, listed_keys(corpus))
    assert not (out / "_LOCK").exists()


@pytest.mark.parametrize("engine", ["beam", "spark"])
def test_sigterm_on_beam_and_spark_fails_cleanly_and_leaves_nothing_running(engine, corpus, tmp_path):
    out = tmp_path / "out"
    process = start(sleepy_spec(tmp_path / "spec.yaml", corpus, out, seconds=0.05, shards=8), "--engine", engine)
    wait_for(lambda: complete_shards(out), timeout=120, what="a first complete shard")
    below = descendants(process.pid)  # Spark: its JVM and Python workers; Beam's runner works in-process
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == f"featurize: interrupted by SIGTERM; {RESUME_LINE}"
    assert_stopped(below, within=15)
    assert_clean_failure(out, "interrupted by SIGTERM")


# --- the lock itself ------------------------------------------------------------------------------------------


def test_lock_refuses_a_live_holder_and_releases_only_its_own(tmp_path):
    logged = []
    held = output_lock.acquire(str(tmp_path), log=logged.append, heartbeat_s=0.05)
    document = json.loads((tmp_path / "_LOCK").read_text())
    assert document["pid"] == os.getpid() and document["host"] == socket.gethostname()
    with pytest.raises(UserError, match=rf"is in use by another run \(pid {os.getpid()} on host "):
        output_lock.acquire(str(tmp_path), log=logged.append)
    wait_for(lambda: json.loads((tmp_path / "_LOCK").read_text())["heartbeat_s"] > document["heartbeat_s"],
             timeout=5, what="a heartbeat")
    # Taken over by another run (this one judged dead): releasing must not remove the new owner's lock.
    (tmp_path / "_LOCK").write_text(json.dumps({**document, "token": "someone-else"}))
    held.release()
    assert json.loads((tmp_path / "_LOCK").read_text())["token"] == "someone-else"
    (tmp_path / "_LOCK").unlink()
    output_lock.acquire(str(tmp_path), log=logged.append).release()
    assert not (tmp_path / "_LOCK").exists() and not logged


@pytest.mark.parametrize("document, stale", [
    ({"host": "elsewhere", "pid": 1, "heartbeat_s": 1000.0 - 30}, None),  # another host, recent heartbeat
    ({"host": "elsewhere", "pid": 1, "heartbeat_s": 1000.0 - 500}, "its last heartbeat is 500 s old"),
    ({"host": "here", "pid": os.getpid(), "heartbeat_s": 1000.0 - 30}, None),  # this process, alive
    ({"host": "here", "pid": 2**22 + 12345, "heartbeat_s": 1000.0}, f"its process {2**22 + 12345} no longer runs"),
    ({"host": "here", "pid": os.getpid(), "heartbeat_s": 1000.0 - 500},
     f"its process {os.getpid()} has sent no heartbeat for 500 s"),  # a reused pid, or a hung run
    ({}, "it cannot be read"),
])
def test_a_lock_is_stale_when_its_process_is_gone_or_its_heartbeat_is_old(document, stale):
    assert output_lock.stale_reason(document, now=1000.0, host="here", stale_after_s=120) == stale


def test_an_unreadable_lock_from_a_crash_is_taken_over_with_a_message(tmp_path):
    (tmp_path / "_LOCK").write_text('{"host": "vm", "pi')  # cut short
    logged = []
    output_lock.acquire(str(tmp_path), log=logged.append).release()
    assert len(logged) == 1 and "from a run that is gone" in logged[0] and "it cannot be read" in logged[0]
