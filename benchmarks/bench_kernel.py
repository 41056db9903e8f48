"""The shard kernel against a plain OpenCV/numpy loop, and local-engine scaling.

    .venv/bin/python benchmarks/bench_kernel.py [--scale K] [--repeats R] [--data DIR] [--json OUT]

Part 1, kernel: :func:`featurelib.shard.process_shard` runs one task over the
whole ``photos`` sample (scale ``K``: ``120 * K`` JPEGs, 500x375 and
2000x1500) in this process, one thread, output (Parquet + HDF5) to a temporary
folder. The baseline, measured in the same run and interleaved with it, is a
plain loop doing the same work directly: read the file, ``cv2.imdecode``,
aspect-preserving resize (``INTER_AREA``) and centre crop to 224x224,
``cvtColor`` + ``calcHist`` for the HSV [8, 4, 4] and Lab 4x4x4 histograms,
a 64-bin gray histogram, and per-channel mean/std/skewness from each channel's
256-bin ``calcHist`` (exact moments, numpy on 256 values); it writes its
(n, 265) float32 matrix as one plain ``.npy`` file. The loop's features are
checked against the kernel's Parquet output, so both sides provably do the
same work.

Part 2, scaling: ``featurelib.driver.execute(spec, LocalEngine(n))`` for
n = 1 and 2 on the ``photos`` sample at scale ``4 * K`` (8 shards), wall time
of the whole run (pool start-up and commit included).

Every figure is the median of ``R`` repeats (kernel and loop alternate, as do
1 and 2 workers, so background load hits both sides alike); each ratio is the
median of the per-repeat ratios, each against the baseline measured right next
to it (this VM's speed drifts with the host's load, which no in-VM counter
sees). Part 1's img/s per core divide by the process's CPU time (one thread:
OpenCV is set to one thread, as in every engine worker), with wall-clock img/s
printed next to them; part 2 is wall clock by nature. The process re-executes
itself once with the glibc malloc settings the engines give their workers
(``featurelib.worker.environment``) and one native thread. The kernel's time
includes the dataset statistics it folds in as it writes (``stats_s`` in its
metrics, reported as a share of the kernel's time).

Part 3, batching: a stand-in network (a float32 matrix product, 64x64x3 pixels
to 512 values) declared as a batched extractor handler; the kernel's extraction
path (:meth:`featurelib.compute.FeatureComputer.extract`: bounded batches,
stacking, shape and finiteness checks) against calling the same function once
on the whole (N, 64, 64, 3) array, alternated, CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from featurelib.registry import Handler  # noqa: E402  (light: numpy only)

_REEXEC_MARK = "FEATURELIB_BENCH_REEXEC"


def _ensure_worker_env() -> None:
    """Re-execute with the environment every engine gives its workers (read by glibc at start-up)."""
    from featurelib import worker

    wanted = worker.environment(worker.WorkerSettings(threads=1))
    if os.environ.get(_REEXEC_MARK) or all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    env = {**os.environ, **wanted, _REEXEC_MARK: "1"}
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


# --- shared helpers (bench_engines.py imports these) ------------------------------

#: photos.yaml without augmentation: the same image geometry and feature columns.
FEATURES = [
    {"name": "color_stats"},
    {"name": "color_hist", "params": {"bins": [8, 4, 4], "color_space": "hsv"}, "column": "hsv_hist"},
    {"name": "color_hist", "params": {"bins": 4, "color_space": "lab"}, "column": "lab_hist"},
    {"name": "intensity_hist", "params": {"bins": 64}},
]


def photos_spec(data: str, output: str, *, shards: int | None = None, rows_per_shard: int | None = None):
    """deploy/specs/photos.yaml minus ``augment``, on `data`, writing to `output`.

    ``decode.reduce: false``: the plain loop this kernel is compared with decodes at full size, so
    both do the same work (reduced decoding is measured on its own by ``bench_decode.py``).
    """
    from featurelib.spec import RunSpec

    out: dict = {"path": output, "formats": ["parquet", "hdf5"]}
    if rows_per_shard is not None:
        out["rows_per_shard"] = rows_per_shard
    else:
        out["shards"] = shards or 1
    return RunSpec.from_dict({
        "spec_version": 1,
        "input": {"path": data},
        "seed": 7,
        "image": {"size": [224, 224], "resize": "aspect_crop", "interpolation": "area"},
        "decode": {"reduce": False},
        "features": FEATURES,
        "output": out,
    })


def photos_corpus(base: str, scale: int, log=print) -> tuple[str, int]:
    """``base/photos-s{scale}``, built with :func:`make_sample` unless already complete there."""
    from featurelib.sample_data import LARGE_PER_CLASS, PHOTO_CLASSES, PHOTOS_PER_CLASS, make_sample

    root = os.path.join(base, f"photos-s{scale}")
    expected = len(PHOTO_CLASSES) * (PHOTOS_PER_CLASS + LARGE_PER_CLASS) * scale
    present = glob.glob(os.path.join(root, "*", "*.jpg"))
    if len(present) == expected:
        return root, expected
    if os.path.isdir(root):  # a partial build (interrupted): make_sample refuses non-empty folders
        shutil.rmtree(root)
    started = time.perf_counter()
    summary = make_sample("photos", root, seed=0, scale=scale)
    log(f"built photos scale={scale}: {summary.n_images} images, {summary.bytes / 1e6:.1f} MB "
        f"in {time.perf_counter() - started:.1f} s -> {root}")
    return root, summary.n_images


def log(message: str) -> None:
    """Progress goes to stderr; the figures go to stdout."""
    print(message, file=sys.stderr, flush=True)


def scratch_dirs(prefix: str, data: str | None) -> tuple[str, str]:
    """(temporary scratch folder, folder to build or reuse the corpora in)."""
    scratch = tempfile.mkdtemp(prefix=prefix)
    base = data or os.path.join(scratch, "data")
    os.makedirs(base, exist_ok=True)
    return scratch, base


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        flags = next((line for line in handle if line.startswith("flags")), "")
    import cv2
    import numpy

    return {
        "cpu": model,
        "avx512": " avx512f" in flags,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg()[0],
    }


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat)."""
    with open("/proc/stat", encoding="utf-8") as handle:
        fields = [int(x) for x in handle.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def foreign_cores(cpu: dict[str, float], wall: float) -> float:
    """Cores other processes used on average during a measurement (from two snapshot() deltas)."""
    return max(0.0, cpu["machine_s"] - cpu["user_s"] - cpu["sys_s"]) / wall if wall > 0 else 0.0


def wait_quiet(log, *, idle: float = 0.9, probe_s: float = 2.0, max_wait_s: float = 60.0) -> float:
    """Wait (at most `max_wait_s`) until the machine is `idle` over `probe_s`; returns the seconds waited.

    Other work on a shared machine comes in bursts; starting a measurement in a
    quiet moment makes it less likely to share the cores. It does not make it
    certain: every measurement also records the cores others used during it.
    """
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    while True:
        before = machine_busy_s()
        time.sleep(probe_s)
        busy = (machine_busy_s() - before) / (probe_s * cores)
        waited = time.perf_counter() - started
        if busy <= 1.0 - idle or waited >= max_wait_s:
            if waited > probe_s + 0.5:
                log(f"  (waited {waited:.0f} s for a quiet machine; busy {busy:.0%} at start)")
            return waited


#: Environment settings that decide the kernel's speed in a worker process.
WATCHED_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def proc_stats() -> dict[int, tuple[str, int, int, int]]:
    """Every process now: pid -> (comm, ppid, utime ticks, stime ticks), from /proc/<pid>/stat."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            stats[int(name)] = (text[text.index("(") + 1:text.rindex(")")], int(fields[1]),
                                int(fields[11]), int(fields[12]))
    return stats


def process_tree(root: int, stats: dict[int, tuple[str, int, int, int]]) -> set[int]:
    """`root` and all its descendants among `stats` (:func:`proc_stats`)."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        for kid in children.get(frontier.pop(), []):
            if kid not in tree:
                tree.add(kid)
                frontier.append(kid)
    return tree


class TreeCpu:
    """CPU time (user, sys) of a process and all its descendants, sampled from /proc.

    A background thread samples every `interval` s; :meth:`snapshot` samples now.
    A process that exits between samples loses at most its last interval.
    """

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root, self.interval = root_pid, interval
        self.ticks: dict[int, tuple[str, int, int]] = {}
        #: pid -> the settings in its environment at start (what glibc and OpenCV read then)
        self.environ: dict[int, dict[str, str | None]] = {}
        self.hz = os.sysconf("SC_CLK_TCK")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        stats = proc_stats()
        tree = process_tree(self.root, stats)
        for pid in tree & stats.keys():
            comm, _, utime, stime = stats[pid]
            self.ticks[pid] = (comm, utime, stime)
            if pid not in self.environ:
                try:
                    with open(f"/proc/{pid}/environ", "rb") as handle:
                        pairs = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
                except OSError:
                    continue
                self.environ[pid] = {name: pairs[name.encode()].decode() if name.encode() in pairs else None
                                     for name in WATCHED_ENV}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                self._sample()

    def snapshot(self) -> dict[str, float]:
        """Seconds so far: user, sys, java (part of both), and machine (every process, /proc/stat)."""
        with self._lock:
            self._sample()
            out = {"user_s": 0.0, "sys_s": 0.0, "java_s": 0.0, "machine_s": machine_busy_s()}
            for comm, utime, stime in self.ticks.values():
                out["user_s"] += utime / self.hz
                out["sys_s"] += stime / self.hz
                if comm.startswith("java"):
                    out["java_s"] += (utime + stime) / self.hz
            return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def median(values):
    return statistics.median(values)


# --- part 1: kernel vs plain loop ---------------------------------------------------


def _plain_color_stats(image):
    """Per-channel mean, std, skewness from each channel's 256-bin histogram (exact moments, O(256))."""
    import cv2
    import numpy as np

    values = np.arange(256, dtype=np.float64)
    n = float(image.shape[0] * image.shape[1])
    out = np.empty((3, 3))
    for channel in range(3):
        hist = cv2.calcHist([image], [channel], None, [256], [0, 256]).reshape(-1).astype(np.float64)
        mean = hist @ values / n
        centred = values - mean
        m2 = hist @ (centred * centred) / n
        m3 = hist @ (centred * centred * centred) / n
        out[channel] = (mean, np.sqrt(m2), m3 / m2 ** 1.5 if m2 > 1e-12 else 0.0)
    return out.reshape(-1)


def _plain_hist(image, conversion, bins, ranges):
    import cv2

    converted = cv2.cvtColor(image, conversion)
    channels = [0] if converted.ndim == 2 else [0, 1, 2]
    return cv2.calcHist([converted], channels, None, bins, ranges).reshape(-1) / float(image.shape[0] * image.shape[1])


def plain_columns() -> dict:
    """column -> (dim, function of a 224x224 RGB image): the loop's direct OpenCV/numpy versions."""
    import cv2

    return {
        "color_stats": (9, _plain_color_stats),
        "hsv_hist": (128, lambda im: _plain_hist(im, cv2.COLOR_RGB2HSV, [8, 4, 4], [0, 180, 0, 256, 0, 256])),
        "lab_hist": (64, lambda im: _plain_hist(im, cv2.COLOR_RGB2LAB, [4, 4, 4], [0, 256, 0, 256, 0, 256])),
        "intensity_hist": (64, lambda im: _plain_hist(im, cv2.COLOR_RGB2GRAY, [64], [0, 256])),
    }


def plain_centre_crop(pixels, side: int):
    """Aspect-preserving ``INTER_AREA`` resize so the shorter side is `side`, then the centre `side` x `side`
    crop: ``image.resize: aspect_crop`` written directly with OpenCV (the plain loops' preprocessing)."""
    import cv2
    import numpy as np

    h, w = pixels.shape[:2]
    scale = max(side / h, side / w)
    new_h, new_w = max(side, round(h * scale)), max(side, round(w * scale))
    scaled = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_AREA)
    top, left = (new_h - side) // 2, (new_w - side) // 2
    return np.ascontiguousarray(scaled[top:top + side, left:left + side])


def plain_loop(paths: list[str], npy_path: str):
    """The same work as the kernel, written directly with OpenCV/numpy. Returns (features, stage seconds)."""
    import cv2
    import numpy as np

    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    side = 224
    columns = plain_columns()
    bounds, lo = [], 0
    for dim, function in columns.values():
        bounds.append((lo, lo + dim, function))
        lo += dim
    rows = np.empty((len(paths), lo), dtype=np.float32)
    t_read = t_decode = t_resize = t_extract = 0.0
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        with open(path, "rb") as handle:
            data = handle.read()
        t1 = time.perf_counter()
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        t2 = time.perf_counter()
        image = plain_centre_crop(pixels, side)
        t3 = time.perf_counter()
        for start, stop, function in bounds:
            rows[i, start:stop] = function(image)
        t4 = time.perf_counter()
        t_read += t1 - t0
        t_decode += t2 - t1
        t_resize += t3 - t2
        t_extract += t4 - t3
    t5 = time.perf_counter()
    np.save(npy_path, rows)
    t_write = time.perf_counter() - t5
    return rows, {"read_s": t_read, "decode_s": t_decode, "preprocess_s": t_resize,
                  "extract_s": t_extract, "write_s": t_write}


def bench_columns(task, repeats: int) -> dict:
    """CPU ms per image of each feature column: featurelib's extractor vs the loop's version."""
    import cv2
    import numpy as np

    from featurelib.shard import shard_state

    state, _ = shard_state(task)
    computer, decoder = state.computer, state.decoder
    images = []
    for record in sorted(task.records, key=lambda r: r.source_key):
        with open(record.uri.removeprefix("file://"), "rb") as handle:
            images.append(computer.preprocess(decoder(handle.read()).pixels))
    stacks = {"rgb": np.stack(images), "gray": np.stack([cv2.cvtColor(i, cv2.COLOR_RGB2GRAY) for i in images])}
    plain = plain_columns()
    out = {}
    for column, handler, view in zip(computer.columns, computer.handlers, computer.views):
        times = {"kernel": [], "plain": []}
        for _ in range(repeats):
            c0 = time.process_time()
            handler.extract_batch(stacks[view])  # the handler over the whole batch, as the kernel calls it
            times["kernel"].append((time.process_time() - c0) * 1e3 / len(images))
            c0 = time.process_time()
            for image in images:
                plain[column][1](image)
            times["plain"].append((time.process_time() - c0) * 1e3 / len(images))
        out[column] = {side: round(median(v), 3) for side, v in times.items()}
    return out


def check_same_work(output: str, task, plain_rows) -> dict:
    """Largest |kernel - plain loop| per column, from the kernel's Parquet shard."""
    import numpy as np
    import pyarrow.parquet as pq

    from featurelib.io.files import shard_relpath

    table = pq.read_table(os.path.join(output, shard_relpath("parquet", 0, 1)))
    keys = table.column("key").to_pylist()
    order = {r.source_key: i for i, r in enumerate(sorted(task.records, key=lambda r: r.source_key))}
    out = {}
    for name, lo, hi in (("color_stats", 0, 9), ("hsv_hist", 9, 137), ("lab_hist", 137, 201),
                         ("intensity_hist", 201, 265)):
        kernel = np.array(table.column(name).to_pylist(), dtype=np.float64)
        plain = plain_rows[[order[k] for k in keys], lo:hi].astype(np.float64)
        out[name] = float(np.abs(kernel - plain).max())
    return out


def bench_kernel(data: str, n_images: int, repeats: int, scratch: str, log) -> dict:
    from featurelib import worker
    from featurelib.plan import plan
    from featurelib.shard import process_shard

    worker.setup(worker.WorkerSettings(threads=1))  # one core, as in every engine's worker
    output = os.path.join(scratch, "kernel-out")
    os.makedirs(output, exist_ok=True)
    spec = photos_spec(data, output, shards=1)
    (task,) = plan(spec)
    paths = [r.uri.removeprefix("file://") for r in sorted(task.records, key=lambda r: r.source_key)]
    npy = os.path.join(scratch, "plain.npy")
    # Warm-up: worker state, page cache, both code paths once.
    process_shard(task)
    plain_rows, _ = plain_loop(paths, npy)
    diffs = check_same_work(output, task, plain_rows)
    kernel_s, plain_s, kernel_cpu, plain_cpu, kernel_metrics, plain_stages = [], [], [], [], [], []
    foreign = []
    for rep in range(repeats):
        wait_quiet(log)
        m0, c0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
        result = process_shard(task)
        kernel_s.append(time.perf_counter() - t0)
        kernel_cpu.append(time.process_time() - c0)
        kernel_metrics.append(result.metrics)
        c0, t0 = time.process_time(), time.perf_counter()
        _, stages = plain_loop(paths, npy)
        plain_s.append(time.perf_counter() - t0)
        plain_cpu.append(time.process_time() - c0)
        plain_stages.append(stages)
        foreign.append(max(0.0, machine_busy_s() - m0 - kernel_cpu[-1] - plain_cpu[-1])
                       / (kernel_s[-1] + plain_s[-1]))
        log(f"  repeat {rep + 1}/{repeats}: kernel {n_images / kernel_cpu[-1]:.1f} img/s per CPU-s "
            f"({n_images / kernel_s[-1]:.1f} wall), plain loop {n_images / plain_cpu[-1]:.1f} "
            f"({n_images / plain_s[-1]:.1f} wall)")
    columns = bench_columns(task, repeats)
    stage_names = ("read_s", "decode_s", "preprocess_s", "augment_s", "extract_s", "stats_s", "write_s")
    kernel_ms = {k: median([m.get(k, 0.0) for m in kernel_metrics]) * 1e3 / n_images for k in stage_names}
    kernel_ms["other_s"] = median([m["seconds"] - sum(m.get(k, 0.0) for k in stage_names)
                                   for m in kernel_metrics]) * 1e3 / n_images
    plain_ms = {k: median([s[k] for s in plain_stages]) * 1e3 / n_images for k in stage_names
                if k not in ("augment_s", "stats_s")}
    stats_share = median([m.get("stats_s", 0.0) / m["seconds"] for m in kernel_metrics])
    paired = median([p / c for c, p in zip(kernel_cpu, plain_cpu)])  # kernel img/s / plain img/s, per repeat
    paired_wall = median([p / c for c, p in zip(kernel_s, plain_s)])
    k_ips, p_ips = n_images / median(kernel_cpu), n_images / median(plain_cpu)
    k_wall, p_wall = n_images / median(kernel_s), n_images / median(plain_s)
    return {
        "images": n_images,
        "repeats": repeats,
        "kernel_img_s": round(k_ips, 2),
        "plain_img_s": round(p_ips, 2),
        "ratio_kernel_over_plain": round(paired, 3),
        "ratio_kernel_over_plain_runs": [round(p / c, 3) for c, p in zip(kernel_cpu, plain_cpu)],
        "ratio_of_medians": round(k_ips / p_ips, 3),
        "kernel_img_s_wall": round(k_wall, 2),
        "plain_img_s_wall": round(p_wall, 2),
        "ratio_kernel_over_plain_wall": round(paired_wall, 3),
        "kernel_ms_per_image": {k.removesuffix("_s"): round(v, 3) for k, v in kernel_ms.items()},
        "plain_ms_per_image": {k.removesuffix("_s"): round(v, 3) for k, v in plain_ms.items()},
        "kernel_runs_cpu_s": [round(x, 3) for x in kernel_cpu],
        "plain_runs_cpu_s": [round(x, 3) for x in plain_cpu],
        "kernel_runs_wall_s": [round(x, 3) for x in kernel_s],
        "plain_runs_wall_s": [round(x, 3) for x in plain_s],
        "max_abs_diff_kernel_vs_plain": diffs,
        "stats_share_of_kernel_time": round(stats_share, 4),
        "foreign_cores_runs": [round(x, 2) for x in foreign],
        "extract_cpu_ms_per_image_by_column": columns,
        "plain_loop_writes": "one .npy of the (n, 265) float32 features per pass",
    }


# --- part 3: a batched extractor through the kernel vs one call on the whole array -------


class _MatmulHandler(Handler):
    """Stand-in for a network: (N, 64, 64, 3) uint8 -> (N, 512) float32 through one matrix product."""

    batch_size = 64

    def load(self, params, artifacts):
        import numpy as np

        rng = np.random.default_rng(0)
        self.weights = (rng.standard_normal((64 * 64 * 3, 512)) / 64.0).astype(np.float32)

    def extract_batch(self, images):
        import numpy as np

        return (images.reshape(len(images), -1).astype(np.float32) * np.float32(1 / 255)) @ self.weights


BATCHES = (64, 256, 1024)


def bench_batching(data: str, repeats: int, scratch: str, log, n_images: int = 1024) -> dict:
    """A batched extractor three ways, alternated: through the kernel (``FeatureComputer.extract``
    with ``execution.batch_size`` b), the same function called directly on consecutive slices of b
    images, and the function once on the whole array. kernel / direct is what the kernel's batching
    costs; direct / one call is what smaller calls cost the function itself (BLAS packs its weights
    once per call)."""
    import cv2
    import numpy as np

    from featurelib import registry
    from featurelib.compute import FeatureComputer
    from featurelib.spec import RunSpec

    registry.register(registry.ExtractorDef(
        name="bench_matmul", version=1, defaults={}, check=registry.no_params,
        dim=lambda params, size: 512, handler=_MatmulHandler))
    computers = {}
    for batch in BATCHES:
        spec = RunSpec.from_dict({"features": [{"name": "bench_matmul"}], "image": {"size": [64, 64]},
                                  "execution": {"batch_size": batch}})
        computers[batch] = FeatureComputer(spec)
    paths = sorted(glob.glob(os.path.join(data, "*", "*.jpg")))
    images = []
    while len(images) < n_images:
        for path in paths[: n_images - len(images)]:
            images.append(cv2.resize(cv2.imread(path)[:, :, ::-1], (64, 64), interpolation=cv2.INTER_AREA))
    whole = np.stack(images)
    handler = computers[BATCHES[0]].handlers[0]
    for computer in computers.values():
        kernel_out = np.stack([r[0] for r in computer.extract(images)])
        np.testing.assert_allclose(kernel_out, handler.extract_batch(whole), rtol=1e-4, atol=1e-4)
    calls = {"one call": lambda: handler.extract_batch(whole)}
    for batch in BATCHES:
        calls[f"kernel-{batch}"] = lambda b=batch: computers[b].extract(images)
        calls[f"direct-{batch}"] = lambda b=batch: [handler.extract_batch(whole[i : i + b])
                                                    for i in range(0, n_images, b)]
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(repeats):
        wait_quiet(log)
        for side in list(calls) if rep % 2 == 0 else list(reversed(calls)):
            c0 = time.process_time()
            calls[side]()
            cpu[side].append(time.process_time() - c0)
        log(f"  repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {n_images / v[-1]:.0f}" for k, v in cpu.items())
            + " img/s per CPU-s")
    out = {"images": n_images, "repeats": repeats, "one_call_img_s": round(n_images / median(cpu["one call"]), 1)}
    for batch in BATCHES:
        kernel, direct = cpu[f"kernel-{batch}"], cpu[f"direct-{batch}"]
        out[f"batch_{batch}"] = {
            "kernel_img_s": round(n_images / median(kernel), 1),
            "direct_img_s": round(n_images / median(direct), 1),
            "ratio_kernel_over_direct": round(median([d / k for k, d in zip(kernel, direct)]), 3),
            "ratio_kernel_over_one_call": round(median([w / k for k, w in zip(kernel, cpu["one call"])]), 3),
            "ratio_direct_over_one_call": round(median([w / d for d, w in zip(direct, cpu["one call"])]), 3),
        }
    return out


# --- part 2: local engine, 1 vs 2 workers ---------------------------------------------


def bench_scaling(data: str, n_images: int, repeats: int, scratch: str, shards: int, log) -> dict:
    from featurelib.driver import execute
    from featurelib.engines.local import LocalEngine

    walls: dict[int, list[float]] = {1: [], 2: []}
    cpu_ms: dict[int, list[float]] = {1: [], 2: []}
    foreign: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(repeats + 1):  # the first round warms the page cache and is not counted
        for workers in (1, 2) if rep % 2 else (2, 1):
            output = os.path.join(scratch, f"scaling-out-{workers}")
            spec = photos_spec(data, output, shards=shards)
            if rep:
                wait_quiet(log)
            tree = TreeCpu(os.getpid(), interval=0.5)
            before = tree.snapshot()
            with contextlib.redirect_stderr(io.StringIO()):
                report = execute(spec, LocalEngine(workers), overwrite=True, log=lambda _m: None)
            after = tree.snapshot()
            tree.stop()
            assert report.manifest["counts"]["written_sources"] == n_images, report.manifest["counts"]
            if rep:
                delta = {k: after[k] - before[k] for k in after}
                walls[workers].append(report.seconds)
                cpu_ms[workers].append((delta["user_s"] + delta["sys_s"]) * 1e3 / n_images)
                foreign[workers].append(foreign_cores(delta, report.seconds))
                log(f"  repeat {rep}/{repeats}: {workers} worker(s) {n_images / report.seconds:.1f} img/s "
                    f"(other processes used {foreign[workers][-1]:.2f} cores)")
    ips = {w: n_images / median(v) for w, v in walls.items()}
    return {
        "images": n_images,
        "shards": shards,
        "repeats": repeats,
        "img_s_1_worker": round(ips[1], 2),
        "img_s_2_workers": round(ips[2], 2),
        "scaling_2_over_1": round(median([a / b for a, b in zip(walls[1], walls[2])]), 3),
        "scaling_2_over_1_runs": [round(a / b, 3) for a, b in zip(walls[1], walls[2])],
        "scaling_ratio_of_medians": round(ips[2] / ips[1], 3),
        "runs_s": {str(w): [round(x, 3) for x in v] for w, v in walls.items()},
        "cpu_ms_per_image": {str(w): round(median(v), 3) for w, v in cpu_ms.items()},
        "foreign_cores_runs": {str(w): [round(x, 2) for x in v] for w, v in foreign.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1,
                        help="photos scale of the kernel corpus (120*K images); the scaling corpus is 4*K")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    parser.add_argument("--shards", type=int, default=8, help="shards of the scaling runs")
    parser.add_argument("--data", help="folder to build/reuse the corpora in (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT", help="also write every figure to OUT as JSON")
    parser.add_argument("--skip-scaling", action="store_true", help="no part 2 (local engine scaling)")
    parser.add_argument("--only-batching", action="store_true", help="part 3 only")
    args = parser.parse_args(argv)
    _ensure_worker_env()
    scratch, base = scratch_dirs("featurelib-bench-kernel-", args.data)
    try:
        info = machine()
        data, n = photos_corpus(base, args.scale, log)
        log(f"kernel vs plain loop on {n} images, {args.repeats} repeats")
        kernel = None if args.only_batching else bench_kernel(data, n, args.repeats, scratch, log)
        log(f"batched extractor through the kernel vs direct calls, {args.repeats} repeats")
        batching = bench_batching(data, args.repeats, scratch, log)
        scaling = None
        if not (args.skip_scaling or args.only_batching):
            data4, n4 = photos_corpus(base, 4 * args.scale, log)
            log(f"local engine 1 vs 2 workers on {n4} images, {args.repeats} repeats")
            scaling = bench_scaling(data4, n4, args.repeats, scratch, args.shards, log)
        info["loadavg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    command = "python benchmarks/bench_kernel.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"benchmark": "bench_kernel", "command": command.strip(), "machine": info,
              "kernel": kernel, "batching": batching, "scaling": scaling}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    m, k, s = report["machine"], report["kernel"], report["scaling"]
    lines = [
        (f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, numpy {m['numpy']}, OpenCV {m['opencv']}; "
        f"load average {m['loadavg_start']:.2f} -> {m.get('loadavg_end', float('nan')):.2f}; {m['date']}"),
    ]
    if k:
        lines += [
        "",
        (f"kernel (process_shard, 1 thread) vs plain OpenCV/numpy loop, photos {k['images']} images, "
        f"median of {k['repeats']}:"),
        "              img/s per core (CPU time)   img/s (wall)",
        f"  kernel      {k['kernel_img_s']:14.1f}   {k['kernel_img_s_wall']:20.1f}",
        f"  plain loop  {k['plain_img_s']:14.1f}   {k['plain_img_s_wall']:20.1f}   ({k['plain_loop_writes']})",
        (f"  ratio kernel / plain  {k['ratio_kernel_over_plain']:.3f} (CPU time), "
        f"{k['ratio_kernel_over_plain_wall']:.3f} (wall); median of the per-repeat ratios "
        f"{k['ratio_kernel_over_plain_runs']}"),
        "  ms per image (wall)   " + "".join(f"{name:>11}" for name in k["kernel_ms_per_image"]),
        "    kernel              " + "".join(f"{v:11.3f}" for v in k["kernel_ms_per_image"].values()),
        "    plain loop          " + "".join(f"{k['plain_ms_per_image'].get(name, 0.0):11.3f}"
                                     for name in k["kernel_ms_per_image"]),
        "  (kernel: ShardResult metrics; read includes sha256; other = row buffering, batch flushes, loop)",
        "  extract, CPU ms per image by column (featurelib extractor vs the loop's OpenCV/numpy):",
        *(f"    {c:<16} {v['kernel']:7.3f} vs {v['plain']:7.3f}  ({v['kernel'] / v['plain']:.1f}x)"
          for c, v in k["extract_cpu_ms_per_image_by_column"].items()),
        f"  cores used by other processes during the repeats: {k['foreign_cores_runs']}",
        "  same work: max |kernel - plain| " + ", ".join(f"{c} {v:.2g}" for c, v in
                                                       k["max_abs_diff_kernel_vs_plain"].items()),
        f"  dataset statistics: {100 * k['stats_share_of_kernel_time']:.2f}% of the kernel's time",
    ]
    b = report.get("batching")
    if b:
        lines += ["", (f"batched extractor (matrix product, 64x64x3 -> 512), {b['images']} images, CPU time, median "
                       f"of {b['repeats']} (one call on the whole array: {b['one_call_img_s']:.0f} img/s):"),
                  "  batch   kernel img/s   kernel/direct   kernel/one call   direct/one call"]
        for batch in BATCHES:
            r = b[f"batch_{batch}"]
            lines.append(f"  {batch:5d}   {r['kernel_img_s']:12.0f}   {r['ratio_kernel_over_direct']:13.3f}   "
                         f"{r['ratio_kernel_over_one_call']:15.3f}   {r['ratio_direct_over_one_call']:15.3f}")
    if s:
        lines += [
            "",
            (f"local engine, execute() wall incl. start-up and commit, photos {s['images']} images, "
            f"{s['shards']} shards, median of {s['repeats']}:"),
            f"  1 worker   {s['img_s_1_worker']:8.1f} img/s",
            f"  2 workers  {s['img_s_2_workers']:8.1f} img/s",
            (f"  scaling 2 / 1  {s['scaling_2_over_1']:.3f} (median of the per-repeat ratios "
            f"{s['scaling_2_over_1_runs']})"),
            (f"  CPU ms per image (driver + workers): 1 worker {s['cpu_ms_per_image']['1']:.2f}, "
            f"2 workers {s['cpu_ms_per_image']['2']:.2f}"),
            "  cores used by other processes during the runs: "
            + "; ".join(f"{w} worker(s) {v}" for w, v in s["foreign_cores_runs"].items()),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
