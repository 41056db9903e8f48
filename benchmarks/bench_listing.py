"""How long a run takes to list and plan 10,000 and 100,000 inputs: folder and manifests, against a plain walk.

    .venv/bin/python benchmarks/bench_listing.py [--sizes 10000,100000] [--repeats 5] [--former REV] [--json OUT]

Trees of tiny PNGs (hard links to one 1x1 PNG per class: 10 class folders) and a
CSV and a Parquet manifest naming the same files are generated in a temporary
folder (about 4 s for 100,000 files). For each size, each repeat times, in an
order that alternates between repeats:

- ``scandir``: the baseline, a plain recursive ``os.scandir`` walk collecting
  (relative key, path) of every file: the least any folder listing can do;
- ``folder``, ``csv``, ``parquet``: :func:`featurelib.plan.plan` of a spec over
  the folder or the manifest (listing, labels, splits, hashing into 8 shards, the
  tasks): all a run does before its first shard task;
- ``former-folder``, ``former-csv``: with ``--former REV``, the listing of
  ``featurelib/sources.py`` at git revision REV (the code before issue #13)
  grouped into the same tasks.

Reported per size and way: wall and CPU (process) seconds of the median repeat,
and the median over repeats of the ratio to the same repeat's baseline, wall and
CPU. Nothing is written but the temporary trees.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CLASSES = 10


def make_tree(base: str, count: int) -> tuple[str, str, str]:
    """A folder of `count` hard links in CLASSES class folders, and CSV and Parquet manifests of them."""
    import cv2
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    root = os.path.join(base, f"tree{count}")
    sources = []
    for c in range(CLASSES):  # one source per class: a file takes at most 65,000 links on ext4
        path = os.path.join(base, f"one-{count}-{c}.png")
        cv2.imwrite(path, np.full((1, 1, 3), c, np.uint8))
        sources.append(path)
        os.makedirs(os.path.join(root, f"class_{c}"))
    uris, labels = [], []
    for i in range(count):
        c = i % CLASSES
        path = os.path.join(root, f"class_{c}", f"img_{i:07d}.png")
        os.link(sources[c], path)
        uris.append(path)
        labels.append(f"class_{c}")
    table = pa.table({"uri": uris, "label": labels})
    pacsv.write_csv(table, root + ".csv")
    pq.write_table(table, root + ".parquet")
    return root, root + ".csv", root + ".parquet"


def scandir_walk(root: str) -> list[tuple[str, str]]:
    """The baseline: every file under `root`, (relative key, path), with nothing else done."""
    found, pending = [], [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, prefix + entry.name + "/"))
                else:
                    found.append((prefix + entry.name, entry.path))
    return found


def former_sources(rev: str):
    """featurelib/sources.py as it was at git revision `rev`, imported as a module of its own."""
    text = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:featurelib/sources.py"], capture_output=True,
                          text=True, check=True).stdout
    folder = tempfile.mkdtemp(prefix="former-sources-")
    path = os.path.join(folder, "former_sources.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    spec = importlib.util.spec_from_file_location("former_sources", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["former_sources"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def planner(path: str, former=None):
    """A function planning a run over `path` (with the former listing when `former` is given)."""
    from featurelib.plan import group, plan, resolve_paths
    from featurelib.spec import RunSpec

    spec = resolve_paths(RunSpec.from_dict({"features": [{"name": "color_stats"}], "input": {"path": path},
                                            "output": {"path": os.path.join(os.path.dirname(path), "out"),
                                                       "shards": 8}}))
    if former is None:
        return lambda: plan(spec)

    def former_plan():
        listing = former.list_inputs(spec.input.path, labels=spec.labels, seed=spec.seed,
                                     fractions=spec.split.fractions())
        return group(spec, listing.records, listing.label_names, 8)

    return former_plan


def timed(function) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    count = len(result) if not isinstance(result, list) or not result or not hasattr(result[0], "records") \
        else sum(len(t.records) for t in result)
    return time.perf_counter() - wall, time.process_time() - cpu, count


def bench_size(base: str, count: int, repeats: int, former) -> dict:
    started = time.perf_counter()
    root, csv, parquet = make_tree(base, count)
    generated = time.perf_counter() - started
    ways = {"scandir": lambda: scandir_walk(root), "folder": planner(root), "csv": planner(csv),
            "parquet": planner(parquet)}
    if former is not None:
        ways["former-folder"] = planner(root, former)
        ways["former-csv"] = planner(csv, former)
    names = list(ways)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]  # alternate, so drift hits every way alike
        for name in order:
            wall, cpu, listed = timed(ways[name])
            assert listed == count, (name, listed, count)
            runs[name].append((wall, cpu))
    base_runs = runs["scandir"]
    out = {"files": count, "generate_s": round(generated, 2), "ways": {}}
    for name in names:
        walls = [w for w, _ in runs[name]]
        cpus = [c for _, c in runs[name]]
        out["ways"][name] = {
            "wall_s": round(statistics.median(walls), 4), "cpu_s": round(statistics.median(cpus), 4),
            "wall_ratio": round(statistics.median(w / b[0] for w, b in zip(walls, base_runs)), 2),
            "cpu_ratio": round(statistics.median(c / max(b[1], 1e-9) for c, b in zip(cpus, base_runs)), 2),
            "per_repeat_wall_s": [round(w, 4) for w in walls],
        }
    shutil.rmtree(root)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--former", default=None, help="git revision whose featurelib/sources.py to compare with")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    former = former_sources(args.former) if args.former else None
    results = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "sizes": []}
    base = tempfile.mkdtemp(prefix="bench-listing-")
    try:
        for count in (int(s) for s in args.sizes.split(",")):
            result = bench_size(base, count, args.repeats, former)
            results["sizes"].append(result)
            print(f"{count} files (generated in {result['generate_s']} s), median of {args.repeats} repeats:")
            print(f"  {'way':<14}{'wall s':>9}{'cpu s':>9}{'wall/scandir':>14}{'cpu/scandir':>13}")
            for name, way in result["ways"].items():
                print(f"  {name:<14}{way['wall_s']:>9.3f}{way['cpu_s']:>9.3f}{way['wall_ratio']:>14.2f}"
                      f"{way['cpu_ratio']:>13.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f} "
          f"on {results['cpus']} CPUs")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
