"""Steady-state throughput of the Beam and Spark engines against the local engine.

    .venv/bin/python benchmarks/bench_engines.py [--scale K] [--repeats R] [--data DIR] [--json OUT]

Same corpus, same spec (deploy/specs/photos.yaml without augmentation), same
two cores, one run:

    local  LocalEngine(2)                              (the baseline)
    beam   FnApiRunner, --direct_num_workers=2 --direct_running_mode=multi_processing
    spark  SparkEngine(master="local[2]", conf={"spark.ui.enabled": "false"})

Method. For each repeat and engine, one fresh process (as ``featurize run``
starts one) builds the engine and runs ``featurelib.driver.execute`` three
times with it: a warm-up on the ``photos`` sample at scale 1 (120 images; it
pays the cold start: JVM, gateway, first workers), then the sample at scale
``K`` (N = 120*K images) and at scale ``2K`` (2N images). Start-up is excluded
by the steady-state rate ``(2N - N) / (t_2N - t_N)``, where ``t`` is the wall
time of ``execute`` (plan, per-run engine start-up, shard tasks, commit); the
warm-up keeps the cold start's large variance out of ``t_N``. The engines'
order rotates between repeats; medians over repeats are reported, and each
repeat's ratio is printed too. Shards hold about ``--rows-per-shard`` images,
so per-task costs stay in the steady state. Target (issue): every engine
>= 0.85x the local engine.

Profile, per engine, steady state (2N minus N, per image):
  * task ms/img: sum of the shard tasks' own seconds (ShardResult metrics),
    i.e. the time spent inside ``process_shard``, summed over both workers;
  * CPU ms/img: user + system CPU of the whole process tree (driver, JVM,
    workers), sampled from /proc; "sys" and "java" are parts of it;
  * busy: task seconds / (2 cores x processing window), the window running
    from the first task's start to the last task's end (shard file times), so
    idle cores between and after tasks show up as busy < 1.
An engine whose task ms/img matches local's but whose rate does not loses time
outside the tasks (scheduling, imbalance, per-task start-up); one whose task
ms/img is higher is slower inside the tasks (threads, allocator, ...).
Finally each engine's worker processes are probed for the settings that
decide the kernel's speed (glibc malloc variables, OpenCV threads).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_kernel import (  # noqa: E402
    TreeCpu,
    foreign_cores,
    log,
    machine,
    photos_corpus,
    photos_spec,
    scratch_dirs,
    wait_quiet,
)

ENGINES = ("local", "beam", "spark")
TARGET = 0.85
_RESULT = "BENCH_RESULT "
_MARK = "BENCH_MARK "
_SPARK_CONF_ENV = "FEATURELIB_BENCH_SPARK_CONF"
_STAGES = ("read_s", "decode_s", "preprocess_s", "augment_s", "extract_s", "stats_s", "write_s")


def make_engine(name: str):
    if name == "local":
        from featurelib.engines.local import LocalEngine

        return LocalEngine(2)
    if name == "beam":
        from pipelines.extract_features import BeamEngine

        return BeamEngine(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    if name == "spark":
        from jobs.extract_features import SparkEngine

        extra = json.loads(os.environ.get(_SPARK_CONF_ENV, "{}"))  # --spark-conf: to try a fix, not the default
        return SparkEngine(master="local[2]", conf={"spark.ui.enabled": "false", **extra})
    raise ValueError(name)


# --- child side: runs in a fresh process per (repeat, engine) ---------------------------


def one_run(engine, data: str, output: str, rows_per_shard: int) -> dict:
    from featurelib.driver import execute
    from featurelib.io.files import shard_relpath

    spec = photos_spec(data, output, rows_per_shard=rows_per_shard)
    started, started_clock = time.perf_counter(), time.time()
    report = execute(spec, engine, overwrite=True, log=lambda _m: None)
    wall, ended_clock = time.perf_counter() - started, time.time()
    manifest = report.manifest
    shards = manifest["metrics"]["shards"]  # in shard order, all fresh (overwrite)
    n_shards = manifest["n_shards"]
    # A task's end: its rejects file, renamed into place last; its start: end - its own seconds.
    ends = [os.stat(os.path.join(output, shard_relpath("rejects", i, n_shards))).st_mtime for i in range(n_shards)]
    first_start = min(end - s["seconds"] for end, s in zip(ends, shards))
    window = max(ends) - first_start
    # Where the cores idle inside the window: before a worker's first task, between its
    # tasks, after its last task (a worker that ran nothing idles the whole window).
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for end, s in zip(ends, shards):
        by_worker.setdefault(s["pid"], []).append((end - s["seconds"], end))
    head = gaps = tail = 0.0
    for spans in by_worker.values():
        spans.sort()
        head += spans[0][0] - first_start
        gaps += sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(spans))
        tail += max(ends) - spans[-1][1]
    idle_workers = max(0, 2 - len(by_worker))
    return {
        "wall_s": wall,
        "images": manifest["counts"]["written_sources"],
        "tasks": len(shards),
        "pids": len({s["pid"] for s in shards}),
        "worker_pids": sorted({s["pid"] for s in shards}),
        "state_builds": sum(bool(s.get("state_built")) for s in shards),
        "task_s": sum(s["seconds"] for s in shards),
        "window_s": window,
        "idle_s": {"head": head, "between_tasks": gaps, "tail": tail, "no_task": idle_workers * window},
        "lead_s": first_start - started_clock,  # execute() start -> first task starts
        "tail_s": ended_clock - max(ends),  # last task ends -> execute() returns (commit included)
        "stages_s": {k: sum(s.get(k, 0.0) for s in shards) for k in _STAGES},
    }


def child(engine_name: str, rows_per_shard: int, outbase: str, corpora: list[tuple[str, str]]) -> int:
    engine = make_engine(engine_name)
    try:
        for label, data in corpora:
            print(_MARK + label, flush=True)
            result = one_run(engine, data, os.path.join(outbase, label), rows_per_shard)
            print(_RESULT + json.dumps({"label": label, **result}), flush=True)
    finally:
        engine.close()
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


def analyse(runs: dict, n_warm: int, n_small: int, n_large: int, repeats: int) -> dict:
    """Steady-state figures per engine from each repeat's (N, 2N) pair."""
    delta = n_large - n_small
    out = {}

    def steady(pairs, get):
        return median([(get(b) - get(a)) * 1e3 / delta for a, b in pairs])

    for engine in ENGINES:
        triples = [runs[(engine, r)] for r in range(repeats)]
        pairs = [(t["N"], t["2N"]) for t in triples]
        rates = [delta / (b["wall_s"] - a["wall_s"]) for a, b in pairs]
        rate = median(rates)
        out[engine] = {
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
            "busy_2N": round(median([b["task_s"] / (2 * b["window_s"]) for _, b in pairs]), 3),
            "idle_share_2N": {k: round(median([b["idle_s"][k] / (2 * b["window_s"]) for _, b in pairs]), 3)
                              for k in pairs[0][1]["idle_s"]},
            "idle_ms_per_task_between_2N": round(median([b["idle_s"]["between_tasks"] * 1e3
                                                         / max(1, b["tasks"] - b["pids"]) for _, b in pairs]), 1),
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
    base = out["local"]
    for engine in ENGINES:
        e = out[engine]
        e["ratio_vs_local_runs"] = [round(x / y, 3) for x, y in zip(e["steady_img_s_runs"], base["steady_img_s_runs"])]
        e["ratio_vs_local"] = round(median(e["ratio_vs_local_runs"]), 3)  # paired: the same repeat's local run
        e["ratio_of_medians"] = round(e["steady_img_s"] / base["steady_img_s"], 3)
        e["window_ratio_vs_local"] = round(e["window_img_s_2N"] / base["window_img_s_2N"], 3)
        e["meets_target"] = e["ratio_vs_local"] >= TARGET
    return out


def median(values):
    return statistics.median(values)


def format_report(report: dict) -> str:
    m, res = report["machine"], report["engines"]
    lines = [
        (f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
        f"{m['loadavg_start']:.2f} -> {m.get('loadavg_end', float('nan')):.2f} (other work was "
        f"{'running' if max(m['loadavg_start'], m.get('loadavg_end', 0)) > 0.5 else 'idle'}); {m['date']}"),
        "cores used by other processes during the N / 2N runs (median): "
        + "; ".join(f"{e} {res[e]['foreign_cores_N_2N']}" for e in ENGINES),
        (f"corpus: photos N = {report['n_small']} (scale {report['scale']}), 2N = {report['n_large']}, warm-up "
        f"{report['n_warmup']}; ~{report['rows_per_shard']} images per shard; median of {report['repeats']} repeats"),
        *([f"spark runs with extra settings: {report['spark_conf_extra']}"] if report.get("spark_conf_extra") else []),
        "",
        (f"{'engine':<7}{'steady img/s':>13}{'ratio':>7}{'>=0.85':>7}{'window':>8}{'ratio':>7}"
        f"{'cold s':>8}{'warm s':>8}{'task ms':>9}{'CPU ms':>8}{'sys':>6}{'java':>6}{'busy':>6}"
        f"{'tasks':>7}{'pids':>5}{'builds':>7}"),
    ]
    for engine in ENGINES:
        r = res[engine]
        lines.append(
            f"{engine:<7}{r['steady_img_s']:13.1f}{r['ratio_vs_local']:7.3f}{'ok' if r['meets_target'] else 'MISS':>7}"
            f"{r['window_img_s_2N']:8.1f}{r['window_ratio_vs_local']:7.3f}{r['cold_overhead_s']:8.2f}"
            f"{r['warm_overhead_s']:8.2f}{r['task_ms_per_image']:9.2f}{r['cpu_ms_per_image']:8.2f}"
            f"{r['cpu_sys_ms_per_image']:6.2f}{r['cpu_java_ms_per_image']:6.2f}{r['busy_2N']:6.2f}"
            f"{'/'.join(map(str, r['tasks_N_2N'])):>7}{r['worker_pids_2N']:>5}{r['state_builds_first_run']:>7}")
    lines += [
        "",
        "steady img/s = (2N - N) / (t_2N - t_N); ratio = median over repeats of engine / local (2 workers) "
         "in the same repeat, target >= 0.85. Per repeat: "
        + "; ".join(f"{e} {res[e]['ratio_vs_local_runs']}" for e in ENGINES if e != "local"),
        ("window = 2N images / (last task end - first task start), no start-up or commit; cold s / warm s = "
        "a run's time beyond images/steady rate (first run in the process / later runs);"),
        ("task ms, CPU ms (sys, java parts) per image, steady state, both cores summed; busy = task time / "
        "(2 x window); builds = most worker-state builds in one worker during the process's first run."),
        "lead s (execute start -> first task) N/2N: " + "; ".join(f"{e} {res[e]['lead_s_N_2N']}" for e in ENGINES)
        + "   tail s (last task -> commit done) N/2N: " + "; ".join(f"{e} {res[e]['tail_s_N_2N']}" for e in ENGINES),
        "idle share of the 2 cores in the 2N window (head / between tasks / tail / no task), ms idle per "
        "task switch: " + "; ".join(
            f"{e} {'/'.join(str(v) for v in res[e]['idle_share_2N'].values())}, {res[e]['idle_ms_per_task_between_2N']}"
            for e in ENGINES),
        "task-side ms per image by stage: " + "".join(f"{s.removesuffix('_s'):>11}" for s in _STAGES),
    ]
    for engine in ENGINES:
        lines.append(f"  {engine:<6}" + " " * 26
                     + "".join(f"{res[engine]['stage_ms_per_image'][s.removesuffix('_s')]:11.3f}" for s in _STAGES))
    lines.append("task worker processes of the last 2N run, environment at their start (/proc/PID/environ):")
    for engine in ENGINES:
        for pid, env in sorted(res[engine]["worker_env_2N"].items()):
            shown = " ".join(f"{k}={v}" for k, v in (env or {}).items()) if env else "(exited before it was seen)"
            lines.append(f"  {engine:<6} pid {pid}: {shown}")
    if report.get("worker_probe"):
        lines.append("worker processes of engine.map (a probe through featurelib.worker.WorkerCall, "
                     "as every pass):")
        for engine, workers in report["worker_probe"].items():
            for pid, seen in sorted(workers.items()):
                lines.append(f"  {engine:<6} pid {pid}: mallopt={seen['mallopt']} "
                             f"OMP_NUM_THREADS={seen['OMP_NUM_THREADS']} cv2 threads={seen['cv2_threads']} "
                             f"python threads={seen['python_threads']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_child"]:
        _, engine, rows, outbase, *pairs = argv
        return child(engine, int(rows), outbase, [tuple(p.split("=", 1)) for p in pairs])
    if argv[:1] == ["--_probe"]:
        return probe(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=8, help="photos scale of the N corpus (N = 120*K)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per engine (median reported)")
    parser.add_argument("--rows-per-shard", type=int, default=60, help="output.rows_per_shard of every run")
    parser.add_argument("--data", help="folder to build/reuse the corpora in (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT", help="also write every figure to OUT as JSON")
    parser.add_argument("--no-probe", action="store_true", help="skip the worker-environment probe")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark setting for the spark runs (to measure a proposed fix)")
    args = parser.parse_args(argv)
    if args.spark_conf:
        os.environ[_SPARK_CONF_ENV] = json.dumps(dict(item.split("=", 1) for item in args.spark_conf))
    scratch, base = scratch_dirs("featurelib-bench-engines-", args.data)
    try:
        info = machine()
        warm, n_warm = photos_corpus(base, 1, log)
        small, n_small = photos_corpus(base, args.scale, log)
        large, n_large = photos_corpus(base, 2 * args.scale, log)
        for path in glob.glob(os.path.join(base, "photos-s*", "*", "*.jpg")):
            with open(path, "rb") as handle:  # page cache: no engine pays the first read from disk
                handle.read()
        runs: dict = {}
        for rep in range(args.repeats):
            for engine in ENGINES[rep % 3:] + ENGINES[:rep % 3]:
                wait_quiet(log)
                _, results = spawn(["--_child", engine, str(args.rows_per_shard), os.path.join(scratch, f"out-{engine}"),
                                    f"cold={warm}", f"N={small}", f"2N={large}"],
                                   os.path.join(scratch, f"{engine}-{rep}.log"))
                runs[(engine, rep)] = {r["label"]: r for r in results}
                t = runs[(engine, rep)]
                log(f"  repeat {rep + 1}/{args.repeats} {engine:<5} warm-up {t['cold']['wall_s']:6.2f} s, "
                    f"N {t['N']['wall_s']:6.2f} s, 2N {t['2N']['wall_s']:6.2f} s -> "
                    f"{(n_large - n_small) / (t['2N']['wall_s'] - t['N']['wall_s']):6.1f} img/s "
                    f"(other processes used {t['N']['foreign_cores']:.2f} / {t['2N']['foreign_cores']:.2f} cores)")
        probes = {}
        if not args.no_probe:
            for engine in ENGINES:
                probes[engine] = spawn(["--_probe", engine], os.path.join(scratch, f"probe-{engine}.log"))[1][0]["workers"]
        info["loadavg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "benchmark": "bench_engines",
        "command": ("python benchmarks/bench_engines.py " + " ".join(argv)).strip(),
        "machine": info,
        "scale": args.scale,
        "n_warmup": n_warm,
        "n_small": n_small,
        "n_large": n_large,
        "rows_per_shard": args.rows_per_shard,
        "repeats": args.repeats,
        "target_ratio": TARGET,
        "spark_conf_extra": dict(item.split("=", 1) for item in args.spark_conf),
        "engines": analyse(runs, n_warm, n_small, n_large, args.repeats),
        "worker_probe": probes,
        "runs": [{"engine": e, "repeat": r, **v} for (e, r), v in runs.items()],
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
