"""Engines against each other and against a plain loop (issue #13): steady-state throughput per
spec, scaling with the number of workers, and the fixed cost of a short run.

    .venv/bin/python benchmarks/bench_engines.py [--spec photos|cheap|bundle|vgg16] [--workers 2 | 1,2]
                                                 [--plain] [--scale K] [--repeats R] [--rows-per-shard R]
                                                 [--engines local,beam,spark] [--data DIR] [--json OUT]
    .venv/bin/python benchmarks/bench_engines.py --fixed-cost [--spec cheap] [--images 10] [--repeats R] ...

Same corpus, same spec, same two cores, one run, per engine and worker count W:

    local  LocalEngine(W)                              (the baseline of the engine ratios)
    beam   FnApiRunner, --direct_num_workers=W --direct_running_mode=multi_processing
    spark  SparkEngine(master="local[W]", conf={"spark.ui.enabled": "false"})
    standalone  (only when --engines names it) SparkEngine on a standalone cluster of W single-core
           workers (deploy/spark_standalone.py: master and workers on 127.0.0.1, 127.0.0.2, ...),
           started in the configuration's process and stopped with it
    plain  (--plain) a multiprocessing Pool(W) running a plain OpenCV loop: the same decode, resize and
           histograms written directly, with the same glibc malloc thresholds (mallopt and the
           MALLOC_* environment) and thread limits (one OpenCV / OpenMP thread) featurelib.worker
           gives the engines' workers; each pool task is a chunk of --rows-per-shard files (every
           n-th file, so large JPEGs spread as the hash assignment spreads them) and writes its rows
           as one .npy file. Specs photos and cheap only. With --workers 1,2 its 2 / 1 ratio is the
           machine's own scaling for this work, the ceiling of the engines'.

Specs (``--spec``): ``photos`` (default: deploy/specs/photos.yaml without augmentation, Parquet +
HDF5), ``cheap`` (two colour histograms, HSV 8x4x4 and Lab 4x4x4, Parquet: the per-record overhead
shows most there), ``bundle`` (the exact hand-crafted bundle of issue #5, ``BUNDLE`` of
bench_descriptors.py: colour_hist 8x8x8 HSV + hu_moments + lbp (8, 1, uniform) + hog (9, 16x16, 2x2),
Parquet + HDF5, default decoding) and ``vgg16`` (block5_pool flattened, random weights: the
ImageNet file cannot be downloaded here and costs the same time; written once to
``DATA/vgg16-random-seed0.weights.h5`` with ``keras.applications.VGG16(weights=None)``; corpora of
8 / ``--vgg16-images``/2 / ``--vgg16-images`` 500x375 photos, 4 images per shard). photos, cheap and
plain decode at full size (``decode.reduce: false``), so the plain loop does the same work.

Method. For each repeat and configuration, one fresh process (as ``featurize run``
starts one) builds the engine and runs ``featurelib.driver.execute`` three
times with it: a warm-up on the ``photos`` sample at scale 1 (120 images; it
pays the cold start: JVM, gateway, first workers), then the sample at scale
``K`` (N = 120*K images) and at scale ``2K`` (2N images). Start-up is excluded
by the steady-state rate ``(2N - N) / (t_2N - t_N)``, where ``t`` is the wall
time of ``execute`` (plan, per-run engine start-up, shard tasks, commit); the
warm-up keeps the cold start's large variance out of ``t_N``. The order of the
configurations rotates between repeats; every ratio is the median of per-repeat
ratios, each against the baseline measured in the same repeat (printed too):

  * engine / local, both with 2 workers (target >= 0.85);
  * scaling, with ``--workers 1,2``: the same engine's 2-worker / 1-worker rate (target >= 1.8);
  * local / plain, with ``--plain``, the same number of workers (target >= 0.9, with 2).

Shards hold about ``--rows-per-shard`` images, so per-task costs stay in the steady state.

Profile, per configuration, steady state (2N minus N, per image):
  * task ms/img: sum of the shard tasks' own seconds (ShardResult metrics),
    i.e. the time spent inside ``process_shard``, summed over the workers, and
    its stages (read incl. sha256, decode, preprocess, augment, extract,
    dataset statistics, write);
  * CPU ms/img: user + system CPU of the whole process tree (driver, JVM,
    workers), sampled from /proc; "sys" and "java" are parts of it;
  * busy: task seconds / (W cores x processing window), the window running
    from the first task's start to the last task's end (shard file times), so
    idle cores between and after tasks show up as busy < 1.
An engine whose task ms/img matches local's but whose rate does not loses time
outside the tasks (scheduling, imbalance, per-task start-up); one whose task
ms/img is higher is slower inside the tasks (threads, allocator, ...).
Finally each engine's worker processes are probed for the settings that
decide the kernel's speed (glibc malloc variables, OpenCV threads).

``--fixed-cost``: per repeat and engine (2 workers), one fresh process runs ``execute`` once on
``--images`` photos (one of each class first) and exits: the wall time from starting the process
to its exit, and its parts: Python start, the benchmark's own imports (numpy), importing
featurelib.driver and the engine's module, building the engine, ``execute`` until the first shard
task starts (manifest ``metrics.first_task_s``: planning, pool / workers / JVM start), the rest of
``execute`` (tasks, commit), ``engine.close()`` and the process's exit. Medians of the repeats, the
order rotating; ratio to local per repeat.
"""

from __future__ import annotations

import time

_T0 = time.time()  # --fixed-cost: when this interpreter started running the script

import argparse  # noqa: E402
import glob  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_kernel import (  # noqa: E402
    FEATURES,
    TreeCpu,
    foreign_cores,
    log,
    machine,
    photos_corpus,
    scratch_dirs,
    wait_quiet,
)

ENGINES = ("local", "beam", "spark")
#: Engines run only when --engines names them: ``standalone`` is Spark on a standalone cluster of W
#: single-core workers (127.0.0.1, 127.0.0.2, ...: deploy/spark_standalone.py) started in the child.
OPTIONAL_ENGINES = ("standalone",)
SPECS = ("photos", "cheap", "bundle", "vgg16")
TARGET = 0.85
TARGET_SCALING = 1.8
TARGET_PLAIN = 0.9
_RESULT = "BENCH_RESULT "
_MARK = "BENCH_MARK "
_SPARK_CONF_ENV = "FEATURELIB_BENCH_SPARK_CONF"
_WEIGHTS_ENV = "FEATURELIB_BENCH_VGG16_WEIGHTS"
_STAGES = ("read_s", "decode_s", "preprocess_s", "augment_s", "extract_s", "stats_s", "write_s")

#: --spec cheap: colour histograms only (the plain loop's hsv_hist and lab_hist).
CHEAP = [
    {"name": "color_hist", "params": {"bins": [8, 4, 4], "color_space": "hsv"}, "column": "hsv_hist"},
    {"name": "color_hist", "params": {"bins": 4, "color_space": "lab"}, "column": "lab_hist"},
]
#: columns of the plain loop per spec (benchmarks.bench_kernel.plain_columns)
PLAIN_COLUMNS = {"photos": ("color_stats", "hsv_hist", "lab_hist", "intensity_hist"), "cheap": ("hsv_hist", "lab_hist")}
DEFAULT_ROWS = {"photos": 60, "cheap": 60, "bundle": 60, "vgg16": 4}


def config_name(engine: str, workers: int) -> str:
    return f"{engine}-{workers}"


def parse_config(name: str) -> tuple[str, int]:
    engine, workers = name.rsplit("-", 1)
    return engine, int(workers)


def make_engine(name: str, workers: int = 2):
    if name == "local":
        from featurelib.engines.local import LocalEngine

        return LocalEngine(workers)
    if name == "beam":
        from pipelines.extract_features import BeamEngine

        return BeamEngine([f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
    if name == "spark":
        from jobs.extract_features import SparkEngine

        extra = json.loads(os.environ.get(_SPARK_CONF_ENV, "{}"))  # --spark-conf: to try a fix, not the default
        return SparkEngine(master=f"local[{workers}]", conf={"spark.ui.enabled": "false", **extra})
    if name == "standalone":
        return _standalone_engine(workers)
    raise ValueError(name)


def _standalone_engine(workers: int):
    """A SparkEngine on a standalone cluster of `workers` single-core workers it starts; its close()
    stops the session, then the cluster (whichever mode built it: runs, --fixed-cost, the probe)."""
    from deploy.spark_standalone import start_cluster, stop_cluster
    from jobs.extract_features import SparkEngine

    class StandaloneEngine(SparkEngine):
        def close(self) -> None:
            try:
                super().close()
            finally:
                stop_cluster(cluster)

    cluster = start_cluster(tempfile.mkdtemp(prefix="featurelib-bench-cluster-"), workers=workers,
                            cores_per_worker=1, timeout_s=180)
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # the driver, reachable from the workers' executors
    # Schedule only once every executor is up, so the first tasks spread over the workers.
    conf = {"spark.ui.enabled": "false", "spark.executor.cores": "1",
            "spark.scheduler.minRegisteredResourcesRatio": "1.0", "spark.cores.max": str(workers)}
    return StandaloneEngine(master=cluster.master_url, conf=conf)


def make_spec(name: str, data: str, output: str, rows_per_shard: int):
    """The RunSpec of ``--spec name`` on `data`, writing to `output`."""
    from featurelib.spec import RunSpec

    image = {"size": [224, 224], "resize": "aspect_crop", "interpolation": "area"}
    out: dict = {"path": output, "rows_per_shard": rows_per_shard}
    spec: dict = {"spec_version": 1, "input": {"path": data}, "seed": 7, "image": image, "output": out}
    if name == "photos":
        spec |= {"features": FEATURES, "decode": {"reduce": False}}
        out["formats"] = ["parquet", "hdf5"]
    elif name == "cheap":
        spec |= {"features": CHEAP, "decode": {"reduce": False}}
        out["formats"] = ["parquet"]
    elif name == "bundle":
        from benchmarks.bench_descriptors import BUNDLE

        spec["features"] = BUNDLE
        out["formats"] = ["parquet", "hdf5"]
    elif name == "vgg16":
        spec["features"] = [{"name": "vgg16", "params": {"weights": os.environ[_WEIGHTS_ENV]}}]
        out["formats"] = ["parquet"]
    else:
        raise ValueError(name)
    return RunSpec.from_dict(spec)


# --- child side: runs in a fresh process per (repeat, configuration) -----------------------


def window_figures(spans: list[tuple[int, float, float]], workers: int) -> dict:
    """Idle time of `workers` cores from the tasks' (pid, start, end) spans."""
    first_start = min(s for _, s, _ in spans)
    last_end = max(e for _, _, e in spans)
    window = last_end - first_start
    # Where the cores idle inside the window: before a worker's first task, between its
    # tasks, after its last task (a worker that ran nothing idles the whole window).
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for pid, start, end in spans:
        by_worker.setdefault(pid, []).append((start, end))
    head = gaps = tail = 0.0
    for items in by_worker.values():
        items.sort()
        head += items[0][0] - first_start
        gaps += sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(items))
        tail += last_end - items[-1][1]
    idle_workers = max(0, workers - len(by_worker))
    return {"first_start": first_start, "last_end": last_end, "window_s": window,
            "idle_s": {"head": head, "between_tasks": gaps, "tail": tail, "no_task": idle_workers * window}}


def one_run(engine, spec_name: str, workers: int, data: str, output: str, rows_per_shard: int) -> dict:
    from featurelib.driver import execute
    from featurelib.io.files import shard_relpath

    spec = make_spec(spec_name, data, output, rows_per_shard)
    started, started_clock = time.perf_counter(), time.time()
    report = execute(spec, engine, overwrite=True, log=lambda _m: None)
    wall, ended_clock = time.perf_counter() - started, time.time()
    manifest = report.manifest
    shards = manifest["metrics"]["shards"]  # in shard order, all fresh (overwrite)
    n_shards = manifest["n_shards"]
    # A task's end: its rejects file, renamed into place last; its start: end - its own seconds.
    ends = [os.stat(os.path.join(output, shard_relpath("rejects", i, n_shards))).st_mtime for i in range(n_shards)]
    win = window_figures([(s["pid"], end - s["seconds"], end) for end, s in zip(ends, shards)], workers)
    return {
        "wall_s": wall,
        "images": manifest["counts"]["written_sources"],
        "tasks": len(shards),
        "pids": len({s["pid"] for s in shards}),
        "worker_pids": sorted({s["pid"] for s in shards}),
        "state_builds": sum(bool(s.get("state_built")) for s in shards),
        "task_s": sum(s["seconds"] for s in shards),
        "task_s_max": max(s["seconds"] for s in shards),
        "task_s_median": statistics.median(s["seconds"] for s in shards),
        "window_s": win["window_s"],
        "idle_s": win["idle_s"],
        "lead_s": win["first_start"] - started_clock,  # execute() start -> first task starts
        "tail_s": ended_clock - win["last_end"],  # last task ends -> execute() returns (commit included)
        "first_task_s": manifest["metrics"].get("first_task_s"),
        "stages_s": {k: sum(s.get(k, 0.0) for s in shards) for k in _STAGES},
    }


def child(config: str, spec_name: str, rows_per_shard: int, outbase: str, corpora: list[tuple[str, str]]) -> int:
    engine_name, workers = parse_config(config)
    if engine_name == "plain":
        return plain_child(workers, spec_name, rows_per_shard, outbase, corpora)
    engine = make_engine(engine_name, workers)
    try:
        for label, data in corpora:
            print(_MARK + label, flush=True)
            result = one_run(engine, spec_name, workers, data, os.path.join(outbase, label), rows_per_shard)
            print(_RESULT + json.dumps({"label": label, **result}), flush=True)
    finally:
        engine.close()
    return 0


# --- the plain multi-process loop (--plain) ------------------------------------------------


def _plain_init() -> None:
    """Pool initializer: what featurelib.worker.setup does for the kernel's speed, written directly."""
    import ctypes
    import ctypes.util

    import cv2

    from featurelib.worker import MALLOC_ENV

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt(-3, int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))  # M_MMAP_THRESHOLD
    libc.mallopt(-1, int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]))  # M_TRIM_THRESHOLD
    cv2.setNumThreads(1)


def _plain_task(item: tuple[int, list[str], str, tuple[str, ...]]) -> dict:
    """Decode, resize + centre crop to 224x224 (area), the histograms; one .npy of the chunk's rows."""
    import cv2
    import numpy as np

    from benchmarks.bench_kernel import plain_centre_crop, plain_columns

    index, paths, outdir, names = item
    start_clock, started = time.time(), time.perf_counter()
    columns = plain_columns()
    functions = [columns[n][1] for n in names]
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION

    def read(path):
        with open(path, "rb") as handle:
            return handle.read()

    steps = (("read_s", read), ("decode_s", lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), flags)),
             ("preprocess_s", lambda pixels: plain_centre_crop(pixels, 224)),
             ("extract_s", lambda image: np.concatenate([f(image) for f in functions])))
    seconds = dict.fromkeys((name for name, _ in steps), 0.0)
    rows = []
    for path in paths:
        value = path
        for name, step in steps:
            t0 = time.perf_counter()
            value = step(value)
            seconds[name] += time.perf_counter() - t0
        rows.append(value)
    t0 = time.perf_counter()
    np.save(os.path.join(outdir, f"chunk-{index:05d}.npy"), np.stack(rows).astype(np.float32))
    seconds["write_s"] = time.perf_counter() - t0
    total = time.perf_counter() - started
    return {"pid": os.getpid(), "start": start_clock, "end": start_clock + total, "seconds": total, **seconds}


def plain_child(workers: int, spec_name: str, rows_per_shard: int, outbase: str,
                corpora: list[tuple[str, str]]) -> int:
    import multiprocessing

    from featurelib.worker import WorkerSettings, environment

    if spec_name not in PLAIN_COLUMNS:
        raise SystemExit(f"--plain has a loop for the specs {sorted(PLAIN_COLUMNS)} only")
    os.environ.update(environment(WorkerSettings(threads=1)))  # read by glibc when the pool's server starts
    names = PLAIN_COLUMNS[spec_name]
    context = multiprocessing.get_context("forkserver")
    with context.Pool(workers, initializer=_plain_init) as pool:
        for label, data in corpora:
            print(_MARK + label, flush=True)
            outdir = os.path.join(outbase, label)
            shutil.rmtree(outdir, ignore_errors=True)
            os.makedirs(outdir)
            started, started_clock = time.perf_counter(), time.time()
            paths = sorted(glob.glob(os.path.join(data, "*", "*.jpg")))
            n = max(1, math.ceil(len(paths) / rows_per_shard))
            results = pool.map(_plain_task, [(i, paths[i::n], outdir, names) for i in range(n)], chunksize=1)
            wall, ended_clock = time.perf_counter() - started, time.time()
            win = window_figures([(r["pid"], r["start"], r["end"]) for r in results], workers)
            result = {
                "wall_s": wall, "images": len(paths), "tasks": n, "pids": len({r["pid"] for r in results}),
                "worker_pids": sorted({r["pid"] for r in results}), "state_builds": 0,
                "task_s": sum(r["seconds"] for r in results),
                "task_s_max": max(r["seconds"] for r in results),
                "task_s_median": statistics.median(r["seconds"] for r in results),
                "window_s": win["window_s"], "idle_s": win["idle_s"],
                "lead_s": win["first_start"] - started_clock, "tail_s": ended_clock - win["last_end"],
                "first_task_s": win["first_start"] - started_clock,
                "stages_s": {k: sum(r.get(k, 0.0) for r in results) for k in _STAGES},
            }
            print(_RESULT + json.dumps({"label": label, **result}), flush=True)
    return 0


def write_weights(path: str) -> int:
    """VGG16 without top, random weights (seeded), saved once (the ImageNet file cannot be downloaded)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    model.save_weights(path + ".tmp.weights.h5")
    os.replace(path + ".tmp.weights.h5", path)
    return 0


def cold(config: str, spec_name: str, rows_per_shard: int, data: str, output: str) -> int:
    """--fixed-cost: one run in this fresh process, with the time of each part (epoch seconds)."""
    engine_name, workers = parse_config(config)
    marks = {"script": _T0, "main": time.time()}
    import featurelib.driver  # noqa: F401

    if engine_name == "beam":
        import pipelines.extract_features  # noqa: F401
    elif engine_name == "spark":
        import jobs.extract_features  # noqa: F401
    else:
        import featurelib.engines.local  # noqa: F401
    marks["imported"] = time.time()
    engine = make_engine(engine_name, workers)
    marks["engine"] = time.time()
    result = one_run(engine, spec_name, workers, data, output, rows_per_shard)
    marks["executed"] = time.time()
    engine.close()
    marks["closed"] = time.time()
    print(_RESULT + json.dumps({"marks": marks, "run": result}), flush=True)
    return 0


def worker_probe(_item):
    """What a worker process sees: the settings that decide the kernel's speed."""
    from featurelib import worker

    seen = worker.applied()
    return {"pid": seen["pid"], "mallopt": seen["mallopt"], "OMP_NUM_THREADS": seen["env"]["OMP_NUM_THREADS"],
            "cv2_threads": seen["cv2_threads"], "python_threads": threading.active_count()}


def probe(engine_name: str) -> int:
    """``engine.map(WorkerCall(worker_probe), ...)``: the very path every pass's tasks take."""
    import tempfile

    from featurelib import worker

    engine = make_engine(engine_name)
    settings = worker.WorkerSettings(threads=1)
    worker.prepare_driver(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="featurelib-probe-") as work:
            seen = engine.map(worker.WorkerCall(worker_probe, settings), list(range(4)), work_dir=work)
    finally:
        engine.close()
    print(_RESULT + json.dumps({"workers": {str(s["pid"]): s for s in seen}}), flush=True)
    return 0


# --- parent side ---------------------------------------------------------------------------


def spawn(args: list[str], log_path: str, on_line=None) -> tuple[int, list[str]]:
    """Run this script with `args` in a fresh process; returns (rc, result lines)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": ROOT}
    with open(log_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=subprocess.PIPE,
                                stderr=stderr, text=True, cwd=ROOT, env=env)
        cpu = TreeCpu(proc.pid)
        results, mark = [], None
        for line in proc.stdout:
            if line.startswith(_MARK):
                mark = cpu.snapshot()
            elif line.startswith(_RESULT):
                result = json.loads(line[len(_RESULT):])
                if mark is not None:
                    now = cpu.snapshot()
                    result["cpu"] = {k: now[k] - mark[k] for k in now}
                    result["foreign_cores"] = foreign_cores(result["cpu"], result["wall_s"])
                result["worker_env"] = {str(p): cpu.environ.get(p) for p in result.get("worker_pids", [])}
                results.append(result)
        rc = proc.wait()
        cpu.stop()
    if rc != 0:
        with open(log_path) as handle:
            tail = handle.read()[-3000:]
        raise RuntimeError(f"{' '.join(args[:2])} failed (rc {rc}):\n{tail}")
    return rc, results


def analyse(runs: dict, configs: list[str], n_warm: int, n_small: int, n_large: int, repeats: int) -> dict:
    """Steady-state figures per configuration from each repeat's (N, 2N) pair, and the paired ratios."""
    delta = n_large - n_small
    out = {}

    def steady(pairs, get):
        return median([(get(b) - get(a)) * 1e3 / delta for a, b in pairs])

    for config in configs:
        workers = parse_config(config)[1]
        triples = [runs[(config, r)] for r in range(repeats)]
        pairs = [(t["N"], t["2N"]) for t in triples]
        rates = [delta / (b["wall_s"] - a["wall_s"]) for a, b in pairs]
        rate = median(rates)
        out[config] = {
            "workers": workers,
            "steady_img_s": round(rate, 2),
            "steady_img_s_runs": [round(x, 2) for x in rates],
            "t_warmup_s": [round(t["cold"]["wall_s"], 2) for t in triples],
            "t_N_s": [round(a["wall_s"], 2) for a, _ in pairs],
            "t_2N_s": [round(b["wall_s"], 2) for _, b in pairs],
            "cold_overhead_s": round(median([t["cold"]["wall_s"] for t in triples]) - n_warm / rate, 2),
            "warm_overhead_s": round(median([a["wall_s"] for a, _ in pairs]) - n_small / rate, 2),
            "window_img_s_2N": round(median([b["images"] / b["window_s"] for _, b in pairs]), 2),
            "lead_s_N_2N": [round(median([a["lead_s"] for a, _ in pairs]), 2),
                            round(median([b["lead_s"] for _, b in pairs]), 2)],
            "tail_s_N_2N": [round(median([a["tail_s"] for a, _ in pairs]), 2),
                            round(median([b["tail_s"] for _, b in pairs]), 2)],
            "busy_2N": round(median([b["task_s"] / (workers * b["window_s"]) for _, b in pairs]), 3),
            "idle_share_2N": {k: round(median([b["idle_s"][k] / (workers * b["window_s"]) for _, b in pairs]), 3)
                              for k in pairs[0][1]["idle_s"]},
            "idle_ms_per_task_between_2N": round(median([b["idle_s"]["between_tasks"] * 1e3
                                                         / max(1, b["tasks"] - b["pids"]) for _, b in pairs]), 1),
            "task_max_over_median_2N": round(median([b["task_s_max"] / b["task_s_median"] for _, b in pairs]), 2),
            "task_ms_per_image": round(steady(pairs, lambda r: r["task_s"]), 3),
            "cpu_ms_per_image": round(steady(pairs, lambda r: r["cpu"]["user_s"] + r["cpu"]["sys_s"]), 3),
            "cpu_sys_ms_per_image": round(steady(pairs, lambda r: r["cpu"]["sys_s"]), 3),
            "cpu_java_ms_per_image": round(steady(pairs, lambda r: r["cpu"]["java_s"]), 3),
            "stage_ms_per_image": {k.removesuffix("_s"): round(steady(pairs, lambda r, k=k: r["stages_s"][k]), 3)
                                   for k in _STAGES},
            "foreign_cores_N_2N": [round(median([a["foreign_cores"] for a, _ in pairs]), 2),
                                   round(median([b["foreign_cores"] for _, b in pairs]), 2)],
            "tasks_N_2N": [pairs[0][0]["tasks"], pairs[0][1]["tasks"]],
            "worker_pids_2N": pairs[0][1]["pids"],
            "state_builds_first_run": max(t["cold"]["state_builds"] for t in triples),
            "worker_env_2N": triples[-1]["2N"].get("worker_env", {}),
        }

    def paired(config: str, base: str, target: float, key: str) -> None:
        if config not in out or base not in out:
            return
        e, b = out[config], out[base]
        runs_ = [round(x / y, 3) for x, y in zip(e["steady_img_s_runs"], b["steady_img_s_runs"])]
        e[f"{key}_runs"] = runs_
        e[key] = round(median(runs_), 3)  # paired: the baseline's run in the same repeat
        e[f"{key}_of_medians"] = round(e["steady_img_s"] / b["steady_img_s"], 3)
        e[f"{key}_window"] = round(e["window_img_s_2N"] / b["window_img_s_2N"], 3)
        e[f"{key}_target"] = target
        e[f"{key}_met"] = e[key] >= target

    for engine in (*ENGINES, *OPTIONAL_ENGINES):
        paired(config_name(engine, 2), "local-2", TARGET, "ratio_vs_local")
    for engine in (*ENGINES, *OPTIONAL_ENGINES, "plain"):
        paired(config_name(engine, 2), config_name(engine, 1), TARGET_SCALING, "scaling_2_over_1")
    for workers in (1, 2):
        paired(config_name("local", workers), config_name("plain", workers), TARGET_PLAIN, "local_over_plain")
    return out


def median(values):
    return statistics.median(values)


def format_report(report: dict) -> str:
    m, res = report["machine"], report["configs"]
    configs = list(res)
    lines = [
        (f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
        f"{m['loadavg_start']:.2f} -> {m.get('loadavg_end', float('nan')):.2f} (other work was "
        f"{'running' if max(m['loadavg_start'], m.get('loadavg_end', 0)) > 0.5 else 'idle'}); {m['date']}"),
        "cores used by other processes during the N / 2N runs (median): "
        + "; ".join(f"{c} {res[c]['foreign_cores_N_2N']}" for c in configs),
        (f"spec {report['spec']}; corpus: N = {report['n_small']}, 2N = {report['n_large']}, warm-up "
        f"{report['n_warmup']}; ~{report['rows_per_shard']} images per shard; median of {report['repeats']} repeats"),
        *([f"spark runs with extra settings: {report['spark_conf_extra']}"] if report.get("spark_conf_extra") else []),
        "",
        (f"{'config':<9}{'steady img/s':>13}{'window':>8}{'cold s':>8}{'warm s':>8}{'task ms':>9}{'CPU ms':>8}"
        f"{'sys':>6}{'java':>6}{'busy':>6}{'max/med':>8}{'tasks':>8}{'pids':>5}{'builds':>7}"),
    ]
    for config in configs:
        r = res[config]
        lines.append(
            f"{config:<9}{r['steady_img_s']:13.1f}{r['window_img_s_2N']:8.1f}{r['cold_overhead_s']:8.2f}"
            f"{r['warm_overhead_s']:8.2f}{r['task_ms_per_image']:9.2f}{r['cpu_ms_per_image']:8.2f}"
            f"{r['cpu_sys_ms_per_image']:6.2f}{r['cpu_java_ms_per_image']:6.2f}{r['busy_2N']:6.2f}"
            f"{r['task_max_over_median_2N']:8.2f}{'/'.join(map(str, r['tasks_N_2N'])):>8}{r['worker_pids_2N']:>5}"
            f"{r['state_builds_first_run']:>7}")
    lines += ["", "ratios (median of the per-repeat ratios, each against the baseline of the same repeat):"]
    for key, label in (("ratio_vs_local", "engine / local, 2 workers"),
                       ("scaling_2_over_1", "2 workers / 1 worker"),
                       ("local_over_plain", "local / plain loop")):
        for config in configs:
            r = res[config]
            if key in r:
                lines.append(f"  {label:<30} {config:<8} {r[key]:6.3f}  target >= {r[key + '_target']}: "
                             f"{'met' if r[key + '_met'] else 'MISSED'}; per repeat {r[key + '_runs']}; "
                             f"ratio of medians {r[key + '_of_medians']}; window ratio {r[key + '_window']}")
    lines += [
        "",
        "steady img/s = (2N - N) / (t_2N - t_N); window = 2N images / (last task end - first task start), no "
        "start-up or commit; cold s / warm s = a run's time beyond images/steady rate (first run in the "
        "process / later runs);",
        "task ms, CPU ms (sys, java parts) per image, steady state, all cores summed; busy = task time / "
        "(workers x window); max/med = longest / median task of a 2N run; builds = most worker-state builds "
        "in one worker during the process's first run.",
        "lead s (execute start -> first task) N/2N: " + "; ".join(f"{c} {res[c]['lead_s_N_2N']}" for c in configs),
        "tail s (last task -> commit done) N/2N: " + "; ".join(f"{c} {res[c]['tail_s_N_2N']}" for c in configs),
        "idle share of the cores in the 2N window (head / between tasks / tail / no task), ms idle per "
        "task switch: " + "; ".join(
            f"{c} {'/'.join(str(v) for v in res[c]['idle_share_2N'].values())}, {res[c]['idle_ms_per_task_between_2N']}"
            for c in configs),
        "task-side ms per image by stage: " + "".join(f"{s.removesuffix('_s'):>11}" for s in _STAGES),
    ]
    for config in configs:
        lines.append(f"  {config:<8}" + " " * 24
                     + "".join(f"{res[config]['stage_ms_per_image'][s.removesuffix('_s')]:11.3f}" for s in _STAGES))
    lines.append("task worker processes of the last 2N run, environment at their start (/proc/PID/environ):")
    for config in configs:
        for pid, env in sorted(res[config]["worker_env_2N"].items()):
            shown = " ".join(f"{k}={v}" for k, v in (env or {}).items()) if env else "(exited before it was seen)"
            lines.append(f"  {config:<8} pid {pid}: {shown}")
    if report.get("worker_probe"):
        lines.append("worker processes of engine.map (a probe through featurelib.worker.WorkerCall, "
                     "as every pass):")
        for engine, workers in report["worker_probe"].items():
            for pid, seen in sorted(workers.items()):
                lines.append(f"  {engine:<6} pid {pid}: mallopt={seen['mallopt']} "
                             f"OMP_NUM_THREADS={seen['OMP_NUM_THREADS']} cv2 threads={seen['cv2_threads']} "
                             f"python threads={seen['python_threads']}")
    return "\n".join(lines)


# --- corpora ---------------------------------------------------------------------------------


def subset(base: str, source: str, name: str, paths: list[str]) -> str:
    """``base/name``: hard links to `paths` (files of `source`), class folders kept."""
    folder = os.path.join(base, name)
    if os.path.isdir(folder) and len(glob.glob(os.path.join(folder, "*", "*"))) == len(paths):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for path in paths:
        target = os.path.join(folder, os.path.relpath(path, source))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.link(path, target)
    return folder


def spread(paths: list[str], n: int) -> list[str]:
    """`n` of `paths`, one of each class folder in turn (round robin over the sorted classes)."""
    by_class: dict[str, list[str]] = {}
    for path in sorted(paths):
        by_class.setdefault(os.path.basename(os.path.dirname(path)), []).append(path)
    out = []
    for group in itertools.zip_longest(*by_class.values()):
        out += [p for p in group if p is not None]
    if len(out) < n:
        raise SystemExit(f"{len(out)} images available, {n} asked for")
    return out[:n]


def vgg16_corpora(base: str, images: int) -> list[tuple[str, str, int]]:
    """(label, folder, count): 8 / images/2 / images 500x375 photos of photos scale 1."""
    root, _ = photos_corpus(base, 1, log)
    small = [p for p in glob.glob(os.path.join(root, "*", "*.jpg")) if "-large-" not in p]
    chosen = spread(small, images)
    return [(label, subset(base, root, f"vgg16-{n}", chosen[:n]), n)
            for label, n in (("cold", 8), ("N", images // 2), ("2N", images))]


def vgg16_weights(base: str, scratch: str) -> str:
    path = os.path.join(base, "vgg16-random-seed0.weights.h5")
    if not os.path.exists(path):
        log(f"writing random VGG16 weights to {path}")
        spawn(["--_weights", path], os.path.join(scratch, "weights.log"))
    return path


# --- modes -----------------------------------------------------------------------------------


def steady_mode(args, argv, base: str, scratch: str, info: dict) -> dict:
    configs = [config_name(e, w) for w in args.workers for e in args.engines]
    if args.plain:
        if args.spec not in PLAIN_COLUMNS:
            raise SystemExit(f"--plain: a plain loop exists for --spec {' / '.join(PLAIN_COLUMNS)} only")
        configs += [config_name("plain", w) for w in args.workers]  # plain 2 / 1: the machine's own scaling
    rows = args.rows_per_shard or DEFAULT_ROWS[args.spec]
    if args.spec == "vgg16":
        os.environ[_WEIGHTS_ENV] = vgg16_weights(base, scratch)
        corpora = vgg16_corpora(base, args.vgg16_images)
    else:
        corpora = [(label, *photos_corpus(base, scale, log))
                   for label, scale in (("cold", 1), ("N", args.scale), ("2N", 2 * args.scale))]
    (_, _, n_warm), (_, _, n_small), (_, _, n_large) = corpora
    for _, folder, _ in corpora:
        for path in glob.glob(os.path.join(folder, "*", "*.jpg")):
            with open(path, "rb") as handle:  # page cache: no engine pays the first read from disk
                handle.read()
    runs: dict = {}
    for rep in range(args.repeats):
        shift = rep % len(configs)
        for config in configs[shift:] + configs[:shift]:
            wait_quiet(log, max_wait_s=args.max_wait)
            _, results = spawn(["--_child", config, args.spec, str(rows), os.path.join(scratch, f"out-{config}"),
                                *(f"{label}={folder}" for label, folder, _ in corpora)],
                               os.path.join(scratch, f"{config}-{rep}.log"))
            runs[(config, rep)] = {r["label"]: r for r in results}
            t = runs[(config, rep)]
            log(f"  repeat {rep + 1}/{args.repeats} {config:<8} warm-up {t['cold']['wall_s']:6.2f} s, "
                f"N {t['N']['wall_s']:6.2f} s, 2N {t['2N']['wall_s']:6.2f} s -> "
                f"{(n_large - n_small) / (t['2N']['wall_s'] - t['N']['wall_s']):6.1f} img/s "
                f"(other processes used {t['N']['foreign_cores']:.2f} / {t['2N']['foreign_cores']:.2f} cores)")
    probes = {}
    if not args.no_probe:
        for engine in args.engines:
            probes[engine] = spawn(["--_probe", engine], os.path.join(scratch, f"probe-{engine}.log"))[1][0]["workers"]
    return {
        "benchmark": "bench_engines",
        "mode": "steady",
        "spec": args.spec,
        "scale": args.scale,
        "n_warmup": n_warm,
        "n_small": n_small,
        "n_large": n_large,
        "rows_per_shard": rows,
        "repeats": args.repeats,
        "targets": {"engine_vs_local": TARGET, "scaling_2_over_1": TARGET_SCALING, "local_over_plain": TARGET_PLAIN},
        "spark_conf_extra": dict(item.split("=", 1) for item in args.spark_conf),
        "configs": analyse(runs, configs, n_warm, n_small, n_large, args.repeats),
        "worker_probe": probes,
        "runs": [{"config": c, "repeat": r, **v} for (c, r), v in runs.items()],
    }


_PARTS = (("python_start_s", "spawned", "script"), ("base_imports_s", "script", "main"),
          ("featurelib_engine_imports_s", "main", "imported"), ("engine_build_s", "imported", "engine"),
          ("execute_s", "engine", "executed"), ("close_s", "executed", "closed"), ("exit_s", "closed", "exited"))


def fixed_cost_mode(args, argv, base: str, scratch: str, info: dict) -> dict:
    rows = args.rows_per_shard or DEFAULT_ROWS[args.spec]
    if args.spec == "vgg16":
        os.environ[_WEIGHTS_ENV] = vgg16_weights(base, scratch)
    root, _ = photos_corpus(base, 1, log)
    data = subset(base, root, f"first-{args.images}", spread(glob.glob(os.path.join(root, "*", "*.jpg")), args.images))
    for path in glob.glob(os.path.join(data, "*", "*.jpg")):
        with open(path, "rb") as handle:
            handle.read()
    engines = list(args.engines)
    samples: dict[str, list[dict]] = {e: [] for e in engines}
    for rep in range(args.repeats):
        shift = rep % len(engines)
        for engine in engines[shift:] + engines[:shift]:
            wait_quiet(log, max_wait_s=args.max_wait)
            config = config_name(engine, 2)
            spawned = time.time()
            _, (result,) = spawn(["--_cold", config, args.spec, str(rows), data, os.path.join(scratch, f"cold-{engine}")],
                                 os.path.join(scratch, f"cold-{engine}-{rep}.log"))
            exited = time.time()
            marks = result["marks"] | {"spawned": spawned, "exited": exited}
            parts = {name: marks[b] - marks[a] for name, a, b in _PARTS}
            first = result["run"]["first_task_s"]
            parts["execute_to_first_task_s"] = first
            parts["first_task_to_execute_end_s"] = parts["execute_s"] - first if first is not None else None
            parts["total_s"] = exited - spawned
            # inside the tasks, beyond their stages: worker state built on first use (lazy imports, extractors)
            parts["task_setup_s"] = result["run"]["task_s"] - sum(result["run"]["stages_s"].values())
            parts["tasks_s"] = result["run"]["task_s"]
            parts["after_last_task_s"] = result["run"]["tail_s"]  # last task's end -> execute returns (commit)
            for stage, seconds in result["run"]["stages_s"].items():
                parts[f"stage_{stage}"] = seconds
            samples[engine].append(parts)
            log(f"  repeat {rep + 1}/{args.repeats} {engine:<5} {args.images}-image run in a fresh process: "
                f"{parts['total_s']:.2f} s (execute {parts['execute_s']:.2f} s, first task after {first} s)")
    out = {}
    for engine in engines:
        keys = samples[engine][0].keys()
        out[engine] = {k: round(median([s[k] for s in samples[engine] if s[k] is not None]), 3) for k in keys}
        out[engine]["total_s_runs"] = [round(s["total_s"], 2) for s in samples[engine]]
        if "local" in samples:
            ratios = [s["total_s"] / b["total_s"] for s, b in zip(samples[engine], samples["local"])]
            out[engine]["total_vs_local_runs"] = [round(r, 2) for r in ratios]
            out[engine]["total_vs_local"] = round(median(ratios), 2)
            out[engine]["extra_over_local_s"] = round(median([s["total_s"] - b["total_s"] for s, b in
                                                              zip(samples[engine], samples["local"])]), 2)
    return {"benchmark": "bench_engines", "mode": "fixed_cost", "spec": args.spec, "images": args.images,
            "rows_per_shard": rows, "repeats": args.repeats, "engines": out,
            "runs": {e: v for e, v in samples.items()}}


def format_fixed_cost(report: dict) -> str:
    m, res = report["machine"], report["engines"]
    names = [name for name, _, _ in _PARTS] + ["execute_to_first_task_s", "first_task_to_execute_end_s",
                                               "tasks_s", "task_setup_s", "after_last_task_s"]
    short = {"python_start_s": "py start", "base_imports_s": "numpy imp", "featurelib_engine_imports_s": "fl+eng imp",
             "engine_build_s": "engine()", "execute_s": "execute", "close_s": "close", "exit_s": "exit",
             "execute_to_first_task_s": "->1st task", "first_task_to_execute_end_s": "1st->end",
             "tasks_s": "tasks", "task_setup_s": "task setup", "after_last_task_s": "after last"}
    lines = [
        (f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
         f"{m['loadavg_start']:.2f} -> {m.get('loadavg_end', float('nan')):.2f}; {m['date']}"),
        (f"fixed cost: a {report['images']}-image run (spec {report['spec']}) in a fresh process per engine, "
         f"2 workers, median of {report['repeats']} repeats, seconds"),
        f"{'engine':<7}{'total':>8}{'vs local':>9}{'+s':>7}  " + "".join(f"{short[n]:>11}" for n in names),
    ]
    for engine, r in res.items():
        lines.append(f"{engine:<7}{r['total_s']:8.2f}{r.get('total_vs_local', float('nan')):9.2f}"
                     f"{r.get('extra_over_local_s', float('nan')):7.2f}  "
                     + "".join(f"{r.get(n, float('nan')):11.3f}" for n in names))
    lines.append("per repeat, total s: " + "; ".join(f"{e} {r['total_s_runs']}" for e, r in res.items()))
    lines.append("parts: python_start = spawn -> first line of the script; base_imports = the benchmark's imports "
                 "(numpy); featurelib_engine_imports = featurelib.driver and the engine's module; execute = "
                 "execute_to_first_task (manifest metrics.first_task_s: plan, pool / Beam workers / JVM start) + "
                 "first_task_to_execute_end (tasks, commit); close = engine.close(); exit = interpreter exit; tasks = the "
                 "shard tasks' own seconds (summed), task setup = their part beyond the stages (a worker's state built "
                 "on first use: spec, extractors), after last = the last task's end -> execute returns (commit).")
    stages = sorted({k for r in res.values() for k in r if k.startswith("stage_")})
    lines.append("task seconds by stage (first use pays lazy imports inside them): " + "; ".join(
        f"{e} " + ", ".join(f"{k.removeprefix('stage_').removesuffix('_s')} {r[k]:.3f}" for k in stages)
        for e, r in res.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_child"]:
        _, config, spec_name, rows, outbase, *pairs = argv
        return child(config, spec_name, int(rows), outbase, [tuple(p.split("=", 1)) for p in pairs])
    if argv[:1] == ["--_cold"]:
        _, config, spec_name, rows, data, output = argv
        return cold(config, spec_name, int(rows), data, output)
    if argv[:1] == ["--_probe"]:
        return probe(argv[1])
    if argv[:1] == ["--_weights"]:
        return write_weights(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", choices=SPECS, default="photos", help="what every run extracts (default photos)")
    parser.add_argument("--workers", default="2", help="worker counts per engine: 2 (default) or 1,2 (scaling)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to run (default local,beam,spark; also: standalone, Spark on a standalone cluster "
                             "of W single-core workers started for the run)")
    parser.add_argument("--plain", action="store_true", help="also a plain multiprocessing OpenCV loop (2 workers)")
    parser.add_argument("--fixed-cost", action="store_true", help="the wall time of a short run in a fresh process")
    parser.add_argument("--images", type=int, default=10, help="--fixed-cost: images of the run (default 10)")
    parser.add_argument("--vgg16-images", type=int, default=64, help="--spec vgg16: images of the 2N run")
    parser.add_argument("--scale", type=int, default=8, help="photos scale of the N corpus (N = 120*K)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per configuration (median reported)")
    parser.add_argument("--rows-per-shard", type=int, help="output.rows_per_shard (default 60; vgg16: 4)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a quiet machine per run")
    parser.add_argument("--data", help="folder to build/reuse the corpora in (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT", help="also write every figure to OUT as JSON")
    parser.add_argument("--no-probe", action="store_true", help="skip the worker-environment probe")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark setting for the spark runs (to measure a proposed fix)")
    args = parser.parse_args(argv)
    args.workers = sorted({int(w) for w in args.workers.split(",")})
    args.engines = [e for e in args.engines.split(",") if e]
    if unknown := set(args.engines) - set(ENGINES) - set(OPTIONAL_ENGINES):
        parser.error(f"unknown engine(s) {sorted(unknown)}")
    if not args.fixed_cost and ("local" not in args.engines or 2 not in args.workers):
        parser.error("the steady-state ratios need the local engine with 2 workers")
    if args.spark_conf:
        os.environ[_SPARK_CONF_ENV] = json.dumps(dict(item.split("=", 1) for item in args.spark_conf))
    scratch, base = scratch_dirs("featurelib-bench-engines-", args.data)
    try:
        info = machine()
        mode = fixed_cost_mode if args.fixed_cost else steady_mode
        report = mode(args, argv, base, scratch, info)
        info["loadavg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"command": ("python benchmarks/bench_engines.py " + " ".join(argv)).strip(), "machine": info, **report}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    print(format_fixed_cost(report) if args.fixed_cost else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
