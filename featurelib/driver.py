"""The driver side of a run: check the output, plan, hand tasks to an engine, commit.

:func:`execute` is what ``featurize run`` calls for every engine; an engine
only decides *where* shard tasks run (see :mod:`featurelib.engines.base`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from featurelib.errors import PolicyError, UserError
from featurelib.io import files as layout
from featurelib.run import (ShardResult, ShardTask, apply_dedup, commit, hash_shard, plan,
                            resolve_paths, write_failed)
from featurelib.spec import RunSpec

_LAYOUT_ENTRIES = ("_manifest.json", "_FAILED.json", "parquet", "hdf5", "rejects", "stats.json", "artifacts")


def existing_run_fingerprint(root: str) -> str | None:
    """The run fingerprint of whatever featurelib output is in `root` (None if none)."""
    import json

    for name in (layout.MANIFEST, layout.FAILED):
        path = os.path.join(root, name)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    return json.load(handle).get("run_fingerprint")
            except (OSError, ValueError):
                return "unreadable"
    folder = os.path.join(root, "parquet")
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".parquet") and not name.startswith("."):
                try:
                    meta = pq.read_schema(os.path.join(folder, name)).metadata or {}
                    return meta.get(b"featurelib.run_fingerprint", b"unreadable").decode()
                except Exception:
                    return "unreadable"
    return None


def _clear_layout(root: str) -> None:
    """Delete featurelib's own entries under `root` (never anything else)."""
    for name in _LAYOUT_ENTRIES:
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _remove_temporaries(root: str) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            if layout.TMP_MARK in name:
                os.remove(os.path.join(directory, name))


def prepare_output(spec: RunSpec, tasks: list[ShardTask], *, resume: bool, overwrite: bool) -> set[int]:
    """Make the output ready; return the shards a resumed run can reuse.

    Rules (CONTRACT.md): an output holding a run with another run fingerprint is
    refused unless ``overwrite``; ``resume`` keeps the complete shards of the
    same run; otherwise the same run is rewritten from scratch (deterministic
    names: a rerun overwrites, never duplicates). Only featurelib's own entries
    are ever deleted; a folder holding anything else is refused.

    Raises
    ------
    UserError
        Refused output, or an output that cannot be written.
    """
    root = spec.output.path
    if "://" in root and not root.startswith("file://"):
        raise UserError(f"output {root!r}: only local or mounted file systems are supported as outputs")
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"output {root!r} exists and is not a folder")
    found = existing_run_fingerprint(root) if os.path.isdir(root) else None
    if os.path.isdir(root) and found is None:
        foreign = sorted(n for n in os.listdir(root) if n not in _LAYOUT_ENTRIES)
        if foreign:
            raise UserError(f"output folder {root!r} is not empty and holds no featurelib run "
                            f"(found {foreign[:3]}); choose an empty or new folder")
    wanted = spec.run_fingerprint()
    if found is not None and found != wanted and not overwrite:
        raise UserError(f"output {root!r} holds a different run (run_fingerprint {found[:12]}..., this spec "
                        f"{wanted[:12]}...); pass --overwrite to replace it, or choose another --output")
    try:
        os.makedirs(root, exist_ok=True)
        probe = layout.temp_path(os.path.join(root, "_write_probe"))
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"output {root!r} is not writable: {exc.strerror or exc}") from None
    if not resume or found != wanted:
        _clear_layout(root)
        return set()
    # Resume: no stale commit point, no temporaries; keep complete shards of this run.
    for name in (layout.MANIFEST, layout.FAILED):
        if os.path.exists(os.path.join(root, name)):
            os.remove(os.path.join(root, name))
    _remove_temporaries(root)
    n_shards = tasks[0].n_shards
    expected = {t.shard: [layout.shard_relpath(k, t.shard, n_shards) for k in (*spec.output.formats, "rejects")]
                for t in tasks}
    keep = {s for s, paths in expected.items() if all(os.path.exists(os.path.join(root, p)) for p in paths)}
    wanted_paths = {p for s in keep for p in expected[s]}
    for kind in ("parquet", "hdf5", "rejects"):
        folder = os.path.join(root, kind)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if f"{kind}/{name}" not in wanted_paths:
                    os.remove(os.path.join(folder, name))
    return keep


def reused_result(spec: RunSpec, task: ShardTask) -> ShardResult:
    """Rebuild a kept shard's result from its files on disk (resume)."""
    infos = []
    for kind in (*spec.output.formats, "rejects"):
        rel = layout.shard_relpath(kind, task.shard, task.n_shards)
        path = os.path.join(spec.output.path, rel)
        if kind == "hdf5":
            import h5py

            with h5py.File(path, "r") as h5:
                rows = int(h5["features"].shape[0])
        else:
            rows = pq.ParquetFile(path).metadata.num_rows
        infos.append(layout.FileInfo.of(spec.output.path, rel, kind=kind, shard=task.shard, rows=rows).to_json())
    return ShardResult(task.shard, tuple(infos), {"reused": True})


def finish(all_tasks: list[ShardTask], reused: list[ShardResult], engine: str, started: float,
           results: list[ShardResult]) -> dict[str, Any]:
    """Commit step shared by every engine: merge fresh and reused results, then :func:`commit`."""
    combined = sorted([*results, *reused], key=lambda r: r.shard)
    images = sum(r.metrics.get("written_rows", 0) for r in results)
    elapsed = time.time() - started  # wall clock: the commit may run in another process or machine
    metrics = {"wall_s": round(elapsed, 3), "fresh_shards": len(results), "reused_shards": len(reused),
               "fresh_rows": images, "rows_per_s": round(images / elapsed, 2) if elapsed > 0 else None}
    return commit(all_tasks, combined, engine=engine, metrics=metrics)


@dataclasses.dataclass
class RunReport:
    manifest: dict[str, Any]
    seconds: float


def execute(spec: RunSpec, engine, *, resume: bool = False, overwrite: bool = False,
            log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> RunReport:
    """Run a spec end to end on `engine` (see :mod:`featurelib.engines`).

    Raises
    ------
    UserError
        The user's mistake, before any image is read.
    PolicyError
        Too many rejects (``_FAILED.json`` written).
    Exception
        Anything else, after ``_FAILED.json`` is written.
    """
    started = time.time()
    spec = resolve_paths(spec)
    tasks = plan(spec)
    keep = prepare_output(spec, tasks, resume=resume, overwrite=overwrite)
    listed = sum(len(t.records) for t in tasks)
    log(f"featurize: {listed} inputs in {len(tasks)} shards on engine {engine.name}"
        + (f"; resuming, {len(keep)} shards already complete" if keep else ""))
    try:
        if spec.dedup == "content":
            hashes = engine.map(hash_shard, tasks)
            tasks = apply_dedup(tasks, hashes)
        pending = [t for t in tasks if t.shard not in keep]
        # Biggest shards first: fewer stragglers at the end of the run.
        pending.sort(key=lambda t: (-len(t.records), t.shard))
        reused = [reused_result(spec, t) for t in tasks if t.shard in keep]
        manifest = engine.run(pending, functools.partial(finish, tasks, reused, engine.name, started))
    except (PolicyError, UserError):
        raise
    except BaseException as exc:
        write_failed(spec.output.path, spec, f"{type(exc).__name__}: {exc}", kind="error")
        raise
    return RunReport(manifest, time.time() - started)


def format_summary(manifest: dict[str, Any], root: str, seconds: float | None = None) -> str:
    """Human summary of a committed run (``make demo`` and ``featurize run`` print it)."""
    counts = manifest["counts"]
    lines = [
        f"output           {root}",
        f"engine           {manifest['engine']}",
        f"listed           {counts['listed']}",
        f"written sources  {counts['written_sources']}  (rows: {counts['written_rows']})",
        f"rejected         {counts['rejected']}",
    ]
    for reason, n in manifest["rejects_by_reason"].items():
        lines.append(f"  {reason:<15}{n}")
    lines.append(f"shards           {manifest['n_shards']}")
    lines.append(f"labels           {len(manifest['label_names'])}: {', '.join(manifest['label_names'][:12])}")
    lines.append("columns          " + ", ".join(f"{c['name']}[{c['dim']}]" for c in manifest["columns"]))
    if seconds:
        lines.append(f"time             {seconds:.2f} s, {counts['written_rows'] / seconds:.1f} rows/s overall")
    lines.append(f"feature_fp       {manifest['feature_fingerprint']}")
    lines.append(f"run_fp           {manifest['run_fingerprint']}")
    return "\n".join(lines)


__all__ = ["execute", "prepare_output", "format_summary", "RunReport"]
