"""Peak worker memory against dataset size, with rows as wide as VGG16's (25,088 float32 values).

    .venv/bin/python benchmarks/bench_memory.py [--small 1000] [--large 10000] [--engines local,beam,spark]
                                                [--json OUT]

The ``digits`` sample (real scans, 32x32 PNGs) copied until it holds ``--large`` files,
and its first ``--small``; each engine runs the same spec over both: the
``wide_standin`` extractor (``benchmarks/standin_wide.py``: a batched handler
returning 25,088 values per image, the width of ``block5_pool`` flattened, without
the network's half hour per engine), Parquet and HDF5, a FIXED 8 shards, so a
shard of the large run holds 10x the rows of the small one (the harder case for
a writer that would buffer a shard). Engines: ``local`` (2 workers), ``beam``
(multi-processing, 2 workers), ``spark`` (``local[2]``).

A sampler reads ``VmHWM`` (peak resident memory) of every process of the run's
tree from /proc every 0.2 s. Reported per run: the largest peak among the worker
processes (Python processes other than the driver; Spark's JVM separately), the
driver's peak, the output size, and the ratio large / small of the worker peak
(the target: at most 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ENGINES = {
    "local": ["--engine", "local", "--workers", "2"],
    "beam": ["--engine", "beam", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "spark": ["--engine", "spark", "--master", "local[2]", "--conf", "spark.ui.enabled=false"],
}


class PeakMemory:
    """Peak resident memory (``VmHWM``, kB) of a process and its descendants, sampled from /proc."""

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root, self.interval = root_pid, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        from benchmarks.bench_kernel import proc_stats, process_tree

        tree = process_tree(self.root, proc_stats())
        for pid in tree:
            try:
                with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
                    fields = dict(line.split(":", 1) for line in handle if ":" in line)
            except OSError:
                continue
            if "VmHWM" in fields:
                peak = int(fields["VmHWM"].split()[0])
                comm = fields["Name"].strip()
                self.peaks[pid] = (comm, max(peak, self.peaks.get(pid, (comm, 0))[1]))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, float]:
        """MB: ``worker`` (largest Python process other than the driver), ``driver``, ``jvm``."""
        self._stop.set()
        self._thread.join()
        driver = self.peaks.get(self.root, ("", 0))[1]
        workers = [kb for pid, (comm, kb) in self.peaks.items() if pid != self.root and comm.startswith("python")]
        jvm = [kb for comm, kb in self.peaks.values() if comm == "java"]
        return {"worker_mb": max(workers, default=0) / 1024, "workers": len(workers),
                "driver_mb": driver / 1024, "jvm_mb": max(jvm, default=0) / 1024}


def corpus(base: str, small: int, large: int) -> dict[int, str]:
    """Input folders of `small` and `large` digit PNGs (hard links into one copy of the sample)."""
    from featurelib.sample_data import make_sample

    sample = os.path.join(base, "sample")
    make_sample("digits", sample, scale=-(-large // 1797))
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(sample) for f in names)
    folders = {}
    for n in (small, large):
        folder = os.path.join(base, f"in-{n}")
        for path in files[:n]:
            target = os.path.join(folder, os.path.relpath(path, sample))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(path, target)
        folders[n] = folder
    return folders


def write_spec(base: str) -> str:
    import yaml

    spec = os.path.join(base, "wide.yaml")
    with open(spec, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"spec_version": 1, "image": {"size": [32, 32]}, "features": [{"name": "wide_standin"}],
                        "output": {"formats": ["parquet", "hdf5"], "shards": 8}}, handle)
    return spec


def run(spec: str, folder: str, out: str, engine: str) -> dict:
    env = {**os.environ, "FEATURELIB_PLUGINS": "benchmarks.standin_wide",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    featurize = os.path.join(os.path.dirname(sys.executable), "featurize")
    started = time.perf_counter()
    process = subprocess.Popen([featurize, "run", "--spec", spec, "--input", folder, "--output", out, "--overwrite",
                                *ENGINES[engine]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = PeakMemory(process.pid)
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    peaks = sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"{engine} failed ({process.returncode}):\n{stderr[-3000:]}")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(out) for f in names)
    with open(os.path.join(out, "_manifest.json"), encoding="utf-8") as handle:
        rows = json.load(handle)["counts"]["written_rows"]
    return {**peaks, "wall_s": wall, "output_mb": size / 1e6, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--engines", default="local,beam,spark")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; known: {sorted(ENGINES)}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="featurelib-bench-memory-") as base:
        folders = corpus(base, args.small, args.large)
        spec = write_spec(base)
        for engine in engines:
            for n in (args.small, args.large):
                out = os.path.join(base, "out")
                result = run(spec, folders[n], out, engine)
                shutil.rmtree(out)
                results.setdefault(engine, {})[n] = result
                print(f"{engine:<6} {n:>6} images ({result['rows']} rows): worker peak {result['worker_mb']:7.1f} MB "
                      f"({result['workers']} worker processes), driver {result['driver_mb']:6.1f} MB, "
                      f"JVM {result['jvm_mb']:6.1f} MB, output {result['output_mb']:7.1f} MB, {result['wall_s']:5.1f} s",
                      flush=True)
    print(f"\nPeak worker memory, 25,088-wide rows, 8 shards: {args.large} images against {args.small}")
    for engine, by_n in results.items():
        ratio = by_n[args.large]["worker_mb"] / by_n[args.small]["worker_mb"]
        by_n["ratio"] = ratio
        print(f"  {engine:<6} {by_n[args.small]['worker_mb']:7.1f} MB -> {by_n[args.large]['worker_mb']:7.1f} MB: "
              f"{ratio:.2f}x (target <= 1.1)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"small": args.small, "large": args.large, "results": results}, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
