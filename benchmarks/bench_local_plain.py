"""The local engine against a plain multi-process OpenCV loop, paired run by run in one process (issue #13).

    .venv/bin/python benchmarks/bench_local_plain.py [--workers 2] [--scale 4] [--pairs 8] [--data DIR] [--json OUT]

``bench_engines.py --plain`` runs each configuration in its own process, one after the other:
on this host the speed of a core moves by up to 2x within minutes, so its per-repeat ratios
spread from 0.6 to 1.3 and three repeats cannot decide a 0.9 target. Here one process holds both
sides and interleaves them run by run (ABBA: local N, plain N, plain 2N, local 2N, then the mirror),
so the two sides of a pair run within seconds of each other:

    local  featurelib.driver.execute(cheap spec, LocalEngine(W)): plan, shard tasks, commit
    plain  a forkserver multiprocessing.Pool(W) running bench_engines' plain OpenCV loop (the same
           decode, INTER_AREA aspect crop and two histograms, equal features; one .npy per chunk)

Both pools fork from the same forkserver (one per process: featurelib's modules are preloaded
there for both sides) with the same malloc thresholds and one OpenCV thread. Per pair and side:
the steady rate ``N / (t_2N - t_N)`` (start-up and commit cancel), the task time per image, and the
CPU time per image of every process below this one (sampled from /proc), for the 2N run.
The figure is the median of the per-pair ratios local / plain (target >= 0.9), with their range.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_engines as engines  # noqa: E402
from benchmarks.bench_kernel import log, machine, photos_corpus  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, float]]:
    """``{pid: (parent pid, user + system CPU seconds)}`` of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return table


class DescendantCPU:
    """CPU seconds used by this process and the processes below it while the block runs (those
    sampled every 0.1 s, so a worker that lives less than that is missed: pools here live for seconds)."""

    def __enter__(self) -> DescendantCPU:
        self.root, self.before, self.last = os.getpid(), _process_table(), {}
        self.own = time.process_time()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.done.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        table = _process_table()
        for pid, (_, cpu) in table.items():
            ancestor = table[pid][0]
            while ancestor in table and ancestor != self.root and ancestor > 1:
                ancestor = table[ancestor][0]
            if ancestor == self.root:
                self.last[pid] = cpu

    def __exit__(self, *_exc) -> None:
        self.done.set()
        self.thread.join()
        self._sample()
        below = sum(cpu - self.before.get(pid, (0, 0.0))[1] for pid, cpu in self.last.items())
        self.seconds = below + time.process_time() - self.own  # the driver's (or the pool's parent's) own CPU too


def run_local(workers: int, data: str, output: str) -> dict:
    from featurelib.driver import execute
    from featurelib.engines.local import LocalEngine

    spec = engines.make_spec("cheap", data, output, 60)
    started = time.perf_counter()
    with DescendantCPU() as cpu:
        report = execute(spec, LocalEngine(workers), overwrite=True, log=lambda _m: None)
    shards = report.manifest["metrics"]["shards"]
    return {"wall_s": time.perf_counter() - started, "task_s": sum(s["seconds"] for s in shards),
            "cpu_s": cpu.seconds, "images": report.manifest["counts"]["written_sources"]}


def run_plain(workers: int, data: str, output: str) -> dict:
    paths = sorted(glob.glob(os.path.join(data, "*", "*.jpg")))
    n = max(1, math.ceil(len(paths) / 60))
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    context = multiprocessing.get_context("forkserver")
    started = time.perf_counter()
    with DescendantCPU() as cpu:
        with context.Pool(workers, initializer=engines._plain_init) as pool:
            results = pool.map(engines._plain_task, [(i, paths[i::n], output, engines.PLAIN_COLUMNS["cheap"])
                                                     for i in range(n)], chunksize=1)
    return {"wall_s": time.perf_counter() - started, "task_s": sum(r["seconds"] for r in results),
            "cpu_s": cpu.seconds, "images": len(paths)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=int, default=4, help="photos scale of the N corpus (N = 120*K)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--data", help="folder to build/reuse the corpora in (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    from featurelib.worker import WorkerSettings, environment

    os.environ.update(environment(WorkerSettings(threads=1)))  # read by glibc when the forkserver starts
    scratch = tempfile.mkdtemp(prefix="featurelib-bench-local-plain-")
    base = args.data or os.path.join(scratch, "data")
    try:
        (small, n_small), (large, n_large) = (photos_corpus(base, s, log) for s in (args.scale, 2 * args.scale))
        for path in glob.glob(os.path.join(base, "photos-s*", "*", "*.jpg")):
            with open(path, "rb") as handle:  # page cache: neither side pays the first read from disk
                handle.read()
        sides = {"local": run_local, "plain": run_plain}
        run_local(args.workers, small, os.path.join(scratch, "warm-local"))  # starts the forkserver, warms caches
        run_plain(args.workers, small, os.path.join(scratch, "warm-plain"))
        pairs = []
        for k in range(args.pairs):
            order = ("local", "plain") if k % 2 == 0 else ("plain", "local")
            runs: dict = {name: {} for name in sides}
            for label, data, names in (("N", small, order), ("2N", large, order[::-1])):
                for name in names:
                    runs[name][label] = sides[name](args.workers, data, os.path.join(scratch, f"{name}-{label}"))
            pair = {}
            for name, r in runs.items():
                pair[name] = {"steady_img_s": (n_large - n_small) / (r["2N"]["wall_s"] - r["N"]["wall_s"]),
                              "task_ms_per_img": 1000 * r["2N"]["task_s"] / n_large,
                              "cpu_ms_per_img": 1000 * r["2N"]["cpu_s"] / n_large, "runs": r}
            pair["ratio"] = pair["local"]["steady_img_s"] / pair["plain"]["steady_img_s"]
            pairs.append(pair)
            log(f"pair {k + 1}/{args.pairs}: local {pair['local']['steady_img_s']:6.1f} img/s, "
                f"plain {pair['plain']['steady_img_s']:6.1f} img/s -> {pair['ratio']:.3f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = sorted(p["ratio"] for p in pairs)
    median = {side: {m: statistics.median(p[side][m] for p in pairs)
                     for m in ("steady_img_s", "task_ms_per_img", "cpu_ms_per_img")} for side in sides}
    report = {"benchmark": "bench_local_plain", "workers": args.workers, "n_small": n_small, "n_large": n_large,
              "pairs": pairs, "median": median, "ratio_median": statistics.median(ratios),
              "target": engines.TARGET_PLAIN, "machine": machine()}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    print(f"local engine vs plain loop, {args.workers} workers, cheap spec, N = {n_small}, 2N = {n_large}, "
          f"{args.pairs} interleaved pairs (medians)")
    for side in sides:
        m = median[side]
        print(f"  {side:<6} steady {m['steady_img_s']:7.1f} img/s   task {m['task_ms_per_img']:5.2f} ms/img   "
              f"CPU {m['cpu_ms_per_img']:5.2f} ms/img (this process and all below it)")
    verdict = "met" if report["ratio_median"] >= engines.TARGET_PLAIN else "MISSED"
    print(f"  local / plain: {report['ratio_median']:.3f} (per pair {min(ratios):.3f} .. {max(ratios):.3f}; "
          f"quartiles {statistics.quantiles(ratios, n=4)[0]:.3f} .. {statistics.quantiles(ratios, n=4)[2]:.3f}) "
          f"target >= {engines.TARGET_PLAIN}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
