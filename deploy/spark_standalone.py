"""A real Spark standalone cluster on this machine, from the pip ``pyspark`` package alone.

    python deploy/spark_standalone.py start  [--dir D]   # prints the master URL (spark://127.0.0.1:PORT)
    python deploy/spark_standalone.py status [--dir D]
    python deploy/spark_standalone.py stop   [--dir D]

    from deploy.spark_standalone import start_cluster, stop_cluster, standalone_cluster
    with standalone_cluster(tmp_dir) as cluster:
        ...  # spark-submit --master cluster.master_url ...

One master bound to 127.0.0.1 and N workers (default 2), worker i bound to
127.0.0.i: two addresses, so speculative execution can run copies of a task on
another worker (it never does between workers on one address, measured). The
pip package has no ``sbin/start-master.sh``: every daemon is
``$SPARK_HOME/bin/spark-class org.apache.spark.deploy.{master.Master,worker.Worker}``
in its own session (process group), with ``SPARK_HOME`` = the installed
``pyspark`` folder and ``SPARK_LOCAL_IP`` = its address.

Ports are free ones chosen at start (never the fixed 7077/8080/8081, so CI and
parallel runs do not collide); the master's REST submission server (fixed port
6066 otherwise) is turned off. Everything lives in the state dir (default
``spark-cluster/`` at the repo root): ``master.log``, ``worker-N.log``,
``*.pid``, ``master_url``, ``cluster.json`` and the workers' ``work-N/``
folders (executor logs: ``work-N/<app-id>/<executor-id>/stderr``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / "spark-cluster"
MASTER_HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
#: JVM options of the master and workers (not executors) unless SPARK_DAEMON_JAVA_OPTS is set.
DAEMON_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

#: Popen objects of the daemons this process started (so stop can reap them: no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


class ClusterError(RuntimeError):
    """The cluster did not start, or its state dir is not usable."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A running standalone cluster.

    Attributes
    ----------
    master_url : str
        ``spark://127.0.0.1:PORT``, for ``spark-submit --master``.
    webui_url : str
        The master's web UI; ``webui_url + "/json/"`` is its state as JSON.
    pids : dict
        ``{"master": pid, "worker-1": pid, ...}``; each is a process group leader.
    state_dir : pathlib.Path
        Logs, pid files, worker work dirs.
    """

    master_url: str
    webui_url: str
    pids: dict[str, int]
    state_dir: pathlib.Path
    worker_hosts: tuple[str, ...] = ()

    def master_state(self, timeout_s: float = 5.0) -> dict:
        """The master's JSON (``aliveworkers``, ``activeapps``, ``completedapps``, ...)."""
        return _get_json(self.webui_url + "/json/", timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_cluster(self, timeout_s=timeout_s)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spark_home() -> pathlib.Path:
    """The installed pyspark package folder (it holds ``bin/spark-class`` and ``jars/``)."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("pyspark is not installed in this interpreter (run `make install`)")
    home = pathlib.Path(next(iter(spec.submodule_search_locations)))
    if not (home / "bin" / "spark-class").exists():
        raise ClusterError(f"{home} has no bin/spark-class: not a full pyspark package")
    return home


def free_port(host: str = MASTER_HOST) -> int:
    """A port free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _get_json(url: str, timeout_s: float) -> dict:
    # No proxy: an http_proxy in the environment must not see 127.0.0.x.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        return json.loads(response.read().decode("utf-8"))


def _tail(path: pathlib.Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path}: (no log)"
    return f"--- last {min(lines, len(text))} lines of {path}:\n" + "\n".join(text[-lines:])


def _logs_tail(state_dir: pathlib.Path, lines: int = 25) -> str:
    return "\n".join(_tail(p, lines) for p in sorted(state_dir.glob("*.log")))


def _is_spark_daemon(pid: int) -> bool:
    """True if `pid` is alive (not a zombie) and is a Spark deploy daemon (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"org.apache.spark.deploy." in handle.read()
    except (OSError, IndexError):
        return False


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    return _is_spark_daemon(pid)


def _read_state(state_dir: pathlib.Path) -> dict | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _launch(name: str, args: list[str], host: str, state_dir: pathlib.Path, env_extra: dict[str, str]) -> int:
    home = spark_home()
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": host,
        # Executors run this interpreter (the venv: featurelib importable). A driver's
        # own PYSPARK_PYTHON, when set, still decides (it travels with the job).
        "PYSPARK_PYTHON": sys.executable,
        **env_extra,
    })
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    log = open(state_dir / f"{name}.log", "ab")
    try:
        child = subprocess.Popen([str(home / "bin" / "spark-class"), *args], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, env=env, cwd=state_dir,
                                 start_new_session=True)
    finally:
        log.close()
    _CHILDREN[child.pid] = child
    (state_dir / f"{name}.pid").write_text(f"{child.pid}\n")
    return child.pid


def start_cluster(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, workers: int = 2, cores_per_worker: int = 1,
                  memory: str = "2g", timeout_s: float = 120.0, master_port: int | None = None,
                  webui_port: int | None = None) -> Cluster:
    """Start a master and `workers` workers; return when all are registered with the master.

    Raises
    ------
    ClusterError
        No Java, a cluster already running from `state_dir`, or the workers not
        registered within `timeout_s` (the message holds the tail of the logs;
        whatever was started is stopped).
    """
    if not 1 <= workers <= 254:
        raise ClusterError(f"workers must be in 1..254, got {workers}")
    state_dir = pathlib.Path(state_dir).resolve()
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        from jobs.session import use_bundled_java

        # The spark extra's Java 21 runtime, in a folder of the cluster's state that outlives this
        # command (the daemons launch executors with it later).
        if use_bundled_java(persist_in=state_dir / "java") is None:
            raise ClusterError("no Java: Spark needs Java 17+ (java on PATH or JAVA_HOME), or the spark extra's "
                               "runtime: pip install 'featurelib[spark]'")
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_state(state_dir)
    if previous and any(_alive(pid) for pid in previous.get("pids", {}).values()):
        raise ClusterError(f"a cluster is already running from {state_dir} (master {previous.get('master_url')}); "
                           f"stop it first: python deploy/spark_standalone.py stop --dir {state_dir}")
    for stale in [*state_dir.glob("*.log"), *state_dir.glob("*.pid"), state_dir / STATE_FILE,
                  state_dir / "master_url"]:
        stale.unlink(missing_ok=True)

    hosts = tuple(f"127.0.0.{i + 1}" for i in range(workers))
    for host in hosts:
        try:
            free_port(host)
        except OSError as exc:
            raise ClusterError(f"cannot bind {host} ({exc.strerror or exc}): on Linux all of 127.0.0.0/8 is "
                               f"loopback; elsewhere add an alias (macOS: sudo ifconfig lo0 alias {host})") from None
    master_port = master_port or free_port(MASTER_HOST)
    webui_port = webui_port or free_port(MASTER_HOST)
    master_url = f"spark://{MASTER_HOST}:{master_port}"
    webui_url = f"http://{MASTER_HOST}:{webui_port}"
    # The REST submission server listens on fixed port 6066 unless turned off.
    master_opts = " ".join(filter(None, [os.environ.get("SPARK_MASTER_OPTS"), "-Dspark.master.rest.enabled=false"]))
    # The daemons only schedule: the C1 compiler alone and the serial GC start them
    # in about 0.6x the time on 2 cores (executors are not affected).
    daemon_env = {"SPARK_DAEMON_JAVA_OPTS": os.environ.get("SPARK_DAEMON_JAVA_OPTS", DAEMON_JAVA_OPTS)}
    started = time.monotonic()
    pids: dict[str, int] = {}
    try:
        pids["master"] = _launch("master", [
            "org.apache.spark.deploy.master.Master", "--host", MASTER_HOST, "--port", str(master_port),
            "--webui-port", str(webui_port)], MASTER_HOST, state_dir, {**daemon_env, "SPARK_MASTER_OPTS": master_opts})
        # Workers start at once: they retry connecting until the master is up.
        for index, host in enumerate(hosts, start=1):
            work_dir = state_dir / f"work-{index}"
            work_dir.mkdir(exist_ok=True)
            pids[f"worker-{index}"] = _launch(f"worker-{index}", [
                "org.apache.spark.deploy.worker.Worker", "--host", host, "--cores", str(cores_per_worker),
                "--memory", memory, "--webui-port", str(free_port(host)), "--work-dir", str(work_dir),
                master_url], host, state_dir, daemon_env)
        cluster = Cluster(master_url, webui_url, pids, state_dir, hosts)
        _write_state(cluster)
        _wait_registered(cluster, workers, started + timeout_s)
    except BaseException:
        _stop_pids(pids, timeout_s=15)
        _remove_state(state_dir, pids)  # the logs stay
        raise
    return cluster


def _write_state(cluster: Cluster) -> None:
    doc = {"master_url": cluster.master_url, "webui_url": cluster.webui_url, "pids": cluster.pids,
           "worker_hosts": list(cluster.worker_hosts), "state_dir": str(cluster.state_dir)}
    (cluster.state_dir / STATE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    (cluster.state_dir / "master_url").write_text(cluster.master_url + "\n")


def _wait_registered(cluster: Cluster, workers: int, deadline: float) -> None:
    last = "master not answering yet"
    while True:
        dead = [name for name, pid in cluster.pids.items() if not _alive(pid)]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited during start-up\n{_logs_tail(cluster.state_dir)}")
        try:
            state = cluster.master_state(timeout_s=2)
            if state.get("url") != cluster.master_url:
                # Another master answered on our web UI port (ours moved to the next port).
                raise ClusterError(f"the web UI at {cluster.webui_url} belongs to {state.get('url')}, "
                                   f"not {cluster.master_url}: a port was taken during start-up; retry")
            alive = state.get("aliveworkers", 0)
            last = f"{alive} of {workers} workers registered (master status {state.get('status')})"
            if alive >= workers:
                return
        except ClusterError:
            raise
        except (OSError, ValueError) as exc:
            last = f"master web UI not answering: {exc}"
        if time.monotonic() > deadline:
            raise ClusterError(f"cluster not ready in time: {last}\n{_logs_tail(cluster.state_dir)}")
        time.sleep(0.25)


def _stop_pids(pids: dict[str, int], timeout_s: float = 30.0) -> list[str]:
    """SIGTERM each daemon's process group (executors included), then SIGKILL what is left; wait."""
    targets = {name: pid for name, pid in pids.items() if _alive(pid)}
    # Workers first: a master going away first makes them log reconnection errors.
    order = sorted(targets, key=lambda n: n == "master")
    for name in order:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(targets[name], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in targets.values()) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.1)
    killed = [name for name, pid in targets.items() if _alive(pid)]
    for name in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(targets[name], signal.SIGKILL)
    for pid in targets.values():
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_is_spark_daemon(pid) for pid in targets.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed


def _reap() -> None:
    for child in list(_CHILDREN.values()):
        child.poll()


def stop_cluster(state_dir_or_cluster: Cluster | str | os.PathLike = DEFAULT_STATE_DIR, *,
                 timeout_s: float = 30.0) -> bool:
    """Stop the cluster (a :class:`Cluster` or its state dir) and wait; False if nothing was running."""
    if isinstance(state_dir_or_cluster, Cluster):
        state_dir, pids = state_dir_or_cluster.state_dir, dict(state_dir_or_cluster.pids)
    else:
        state_dir = pathlib.Path(state_dir_or_cluster).resolve()
        state = _read_state(state_dir) or {}
        pids = dict(state.get("pids", {}))
        for pid_file in state_dir.glob("*.pid"):  # a start interrupted before cluster.json
            with contextlib.suppress(ValueError, OSError):
                pids.setdefault(pid_file.stem, int(pid_file.read_text().strip()))
    running = any(_alive(pid) for pid in pids.values())
    _stop_pids(pids, timeout_s=timeout_s)
    _remove_state(state_dir, pids)
    return running


def _remove_state(state_dir: pathlib.Path, pids: dict[str, int]) -> None:
    for name in pids:
        (state_dir / f"{name}.pid").unlink(missing_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    (state_dir / "master_url").unlink(missing_ok=True)


@contextlib.contextmanager
def standalone_cluster(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, **kwargs) -> Iterator[Cluster]:
    """``with standalone_cluster(d) as cluster:`` start, then always stop (see :func:`start_cluster`)."""
    cluster = start_cluster(state_dir, **kwargs)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def cluster_status(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict:
    """What runs from `state_dir`: pids alive, and the master's view when it answers."""
    state_dir = pathlib.Path(state_dir).resolve()
    state = _read_state(state_dir)
    if not state:
        return {"running": False, "state_dir": str(state_dir)}
    alive = {name: _alive(pid) for name, pid in state["pids"].items()}
    report = {"running": any(alive.values()), "state_dir": str(state_dir), "master_url": state["master_url"],
              "webui_url": state["webui_url"], "alive": alive}
    try:
        master = _get_json(state["webui_url"] + "/json/", 3)
        report.update(master_status=master.get("status"), aliveworkers=master.get("aliveworkers"),
                      workers=[f"{w['host']}:{w['port']} {w['state']} cores {w['cores']}"
                               for w in master.get("workers", [])],
                      activeapps=len(master.get("activeapps", [])),
                      completedapps=len(master.get("completedapps", [])))
    except (OSError, ValueError) as exc:
        report["master_error"] = str(exc)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spark_standalone.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--dir", default=str(DEFAULT_STATE_DIR), help="state dir (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="memory per worker")
    parser.add_argument("--master-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--webui-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            status = cluster_status(args.dir)
            if status["running"]:
                print(status["master_url"])
                print(f"already running from {status['state_dir']} (web UI {status['webui_url']})", file=sys.stderr)
                return 0
            t0 = time.monotonic()
            cluster = start_cluster(args.dir, workers=args.workers, cores_per_worker=args.cores,
                                    memory=args.memory, timeout_s=args.timeout, master_port=args.master_port,
                                    webui_port=args.webui_port)
            print(cluster.master_url)
            print(f"{len(cluster.worker_hosts)} workers ({', '.join(cluster.worker_hosts)}) registered in "
                  f"{time.monotonic() - t0:.1f} s; web UI {cluster.webui_url}; logs and state in "
                  f"{cluster.state_dir}; master URL also in {cluster.state_dir / 'master_url'}", file=sys.stderr)
            return 0
        if args.command == "stop":
            was_running = stop_cluster(args.dir)
            print("stopped" if was_running else f"nothing running from {pathlib.Path(args.dir).resolve()}")
            return 0
        status = cluster_status(args.dir)
        print(json.dumps(status, indent=2))
        return 0 if status["running"] else 3
    except ClusterError as exc:
        print(f"spark_standalone: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
