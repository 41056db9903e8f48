"""The driver side of a run: check the output, plan, run the passes on an engine, commit.

:func:`execute` is what ``featurize run`` (and the Beam and Spark entry points)
call for every engine. A run is a list of passes over the same shard tasks,
each mapped by the engine (:meth:`featurelib.engines.base.Engine.map`): the
pre-passes (content dedup, artefact samples: :mod:`featurelib.passes`), then
the main pass (:func:`featurelib.shard.process_shard`); the driver merges their
results in shard order and commits (:func:`featurelib.commit.commit`), the same
way on every engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow.parquet as pq

from featurelib import logs, worker
from featurelib.commit import Ledger, commit, commit_generation, failed_generation, remove_work, write_failed
from featurelib.errors import PolicyError, Terminated, UserError
from featurelib.exits import received_signal
from featurelib.io import files as layout
from featurelib.io import outfs
from featurelib.io.lock import acquire as acquire_lock
from featurelib.io.outfs import Output, is_remote, output_of
from featurelib.passes import apply_dedup, check_saved_artifacts, hash_shard, prepare_artifacts
from featurelib.plan import ShardTask, plan, resolve_paths
from featurelib.progress import PassProgress
from featurelib.shard import ShardResult, process_shard
from featurelib.spec import RunSpec


def existing_run_fingerprint(out: Output) -> str | None:
    """The spec's part of the run fingerprint of whatever featurelib output is in `out` (None if none).

    The spec's part is what ``--resume`` compares: it is known before any pass,
    while the final fingerprint also holds the hashes of fitted artefacts.
    """
    for name in (layout.MANIFEST, layout.FAILED):
        if out.exists(name):
            try:
                document = json.loads(out.read_bytes(name))
            except (OSError, ValueError):
                return "unreadable"
            return document.get("spec_fingerprints", {}).get("run") or document.get("run_fingerprint")
    for name in out.listdir("parquet"):
        if name.endswith(".parquet") and not name.startswith("."):
            try:
                with out.reading(f"parquet/{name}") as source:
                    meta = pq.read_schema(source).metadata or {}
            except Exception:  # an unreadable shard: not a run this spec can resume
                return "unreadable"
            found = meta.get(b"featurelib.spec_run_fingerprint") or meta.get(b"featurelib.run_fingerprint")
            return (found or b"unreadable").decode()
    return None


def _clear_layout(out: Output, *, training: bool = False) -> None:
    """Delete featurelib's own entries of `out` (never anything else); with `training`, also
    the models and predictions trained on the run being replaced."""
    for name in layout.LAYOUT_ENTRIES + (layout.TRAINING_ENTRIES if training else ()):
        out.remove(name)
    remove_work(out.root)


def _remove_temporaries(root: str) -> None:
    """Delete the temporary files a killed task left in a local output (an object store has none:
    its files are staged on the workers' disks and appear whole)."""
    if is_remote(root):
        return
    # Only where the run writes: the root's own files and featurelib's folders (an output also
    # holds models and predictions, which a run never writes temporaries into).
    folders = [root] + [os.path.join(root, name) for name in layout.LAYOUT_ENTRIES if name != layout.WORK]
    for folder in folders:
        with contextlib.suppress(NotADirectoryError, FileNotFoundError):
            for name in os.listdir(folder):
                if layout.TMP_MARK in name:
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.remove(os.path.join(folder, name))


def refuse_output(spec: RunSpec, *, overwrite: bool) -> str | None:
    """The read-only part of :func:`check_output`: refuse an output this run may not use; return the
    run found there. Creates and changes nothing (``featurize validate`` asks it too).

    Raises
    ------
    UserError
        A remote output, a file, a foreign non-empty folder, or another run without ``overwrite``.
    """
    root = spec.output.path
    out = _open_checked(spec)
    if not out.remote and os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"output {root!r} exists and is not a folder")
    try:
        present = out.isdir()
        found = existing_run_fingerprint(out) if present else None
        listing = out.listdir() if present and found is None else []
    except Exception as exc:  # an object store that cannot be reached or read (credentials, endpoint, bucket)
        if not out.remote:
            raise
        raise UserError(f"output {root!r} cannot be read: {type(exc).__name__}: {exc}") from None
    if present and found is None:
        ours = (*layout.LAYOUT_ENTRIES, *layout.TRAINING_ENTRIES, layout.LOCK)
        foreign = sorted(n for n in listing if n not in ours and layout.TMP_MARK not in n)
        if foreign:
            raise UserError(f"output folder {root!r} is not empty and holds no featurelib run "
                            f"(found {foreign[:3]}); choose an empty or new folder")
    wanted = spec.run_fingerprint() if found is not None else None  # the spec's part (no artefacts yet)
    if found is not None and found != wanted and not overwrite:
        raise UserError(f"output {root!r} holds a different run (run_fingerprint {found[:12]}..., this spec "
                        f"{wanted[:12]}...); pass --overwrite to replace it, or choose another --output")
    return found


def check_output(spec: RunSpec, *, overwrite: bool) -> str | None:
    """Refuse an output this run may not use, make sure it exists and is writable; return the run found there.

    Rules (docs/CONTRACT.md, :func:`refuse_output`): an output holding a run with another run
    fingerprint is refused unless ``overwrite``; a folder holding anything but featurelib's own
    entries is refused. Changes nothing but creating the folder.

    Returns
    -------
    str or None
        The spec part of the run fingerprint of the output found (None: none).

    Raises
    ------
    UserError
        Refused output, or an output that cannot be written.
    """
    root = spec.output.path
    found = refuse_output(spec, overwrite=overwrite)
    out = output_of(spec)
    try:
        out.makedirs()
        probe = f"_write_probe{layout.TMP_MARK}{uuid.uuid4().hex}"
        out.write_bytes(probe, b"ok")
        out.remove(probe)
    except OSError as exc:
        raise UserError(f"output {root!r} is not writable: {exc.strerror or exc}") from None
    except Exception as exc:  # an object store's own errors (credentials, endpoint)
        raise UserError(f"output {root!r} is not writable: {type(exc).__name__}: {exc}") from None
    return found


def _open_checked(spec: RunSpec) -> Output:
    """The spec's output, or one clear line when its URI cannot be opened (an unknown protocol,
    its fsspec package missing).

    Raises
    ------
    UserError
    """
    try:
        return output_of(spec)
    except (ImportError, ValueError) as exc:
        raise UserError(f"output {spec.output.path!r} cannot be opened: {exc}") from None


def prepare_output(spec: RunSpec, tasks: list[ShardTask], *, resume: bool, overwrite: bool) -> set[int]:
    """Make the output ready (:func:`check_output` first); return the shards a resumed run can reuse.

    ``resume`` keeps the complete shards of the same run; otherwise the same run
    is rewritten from scratch (deterministic names: a rerun overwrites, never
    duplicates). Only featurelib's own entries are ever deleted. The caller holds
    the output's lock (:mod:`featurelib.io.lock`).

    Raises
    ------
    UserError
        Refused output, or an output that cannot be written.
    """
    root = spec.output.path
    found = check_output(spec, overwrite=overwrite)
    out = output_of(spec)
    wanted = spec.run_fingerprint()
    if not resume or found != wanted:
        _clear_layout(out, training=found is not None and found != wanted)
        return set()
    _refuse_resume_of_generations(out)
    # Resume: no stale commit point, scratch or temporaries; keep the complete shards of
    # this run and its fitted artefacts (a resumed run never refits).
    for name in (layout.MANIFEST, layout.FAILED, layout.STATS):
        out.remove(name)
    remove_work(root)
    _remove_temporaries(root)
    n_shards = tasks[0].n_shards
    kinds = layout.shard_kinds(spec.output.formats)
    expected = {t.shard: [layout.shard_relpath(k, t.shard, n_shards) for k in kinds] for t in tasks}
    present = {f"{kind}/{name}" for kind in kinds for name in out.listdir(kind)}
    keep = {s for s, paths in expected.items() if all(p in present for p in paths)}
    wanted_paths = {p for s in keep for p in expected[s]}
    for rel in sorted(present - wanted_paths):
        out.remove(rel)
    return keep


def _refuse_resume_of_generations(out: Output) -> None:
    """``--resume`` completes a failed first run; an output with incremental generations (or a failed
    incremental run next to its still valid manifest) continues with ``--incremental`` instead."""
    root = out.root
    documents = {}
    for name in (layout.MANIFEST, layout.FAILED):
        with contextlib.suppress(OSError, ValueError):
            documents[name] = json.loads(out.read_bytes(name))
    generations = len(documents.get(layout.MANIFEST, {}).get("generations") or [])
    if generations > 1 or documents.get(layout.FAILED, {}).get("incremental"):
        raise UserError(f"output {root!r} holds a committed run with incremental generations (or a failed "
                        f"--incremental run): --resume continues a failed first run only; run again with "
                        f"--incremental to add what is new, or without flags to rewrite the output from scratch")


def reused_result(spec: RunSpec, task: ShardTask) -> ShardResult:
    """Rebuild a kept shard's result from its files on disk (resume)."""
    from featurelib.io.readers import shard_file_info

    out = output_of(spec)
    infos = [shard_file_info(out, layout.shard_relpath(kind, task.shard, task.n_shards), kind=kind,
                             shard=task.shard).to_json() for kind in layout.shard_kinds(spec.output.formats)]
    return ShardResult(task.shard, tuple(infos), {"reused": True})


@dataclasses.dataclass
class RunReport:
    manifest: dict[str, Any]
    seconds: float


def log_to_stderr(message: str) -> None:
    """The default log of a run: one line on stderr, as text or, with ``--log-format json``
    (:func:`featurelib.logs.using`), one JSON object (:func:`featurelib.logs.write`). On a
    terminal progress redraws in place, in text only."""
    logs.write(message)


def _map_pass(engine, settings: worker.WorkerSettings, root: str, log: Callable[[str], None]):
    """``map_pass(function, tasks, name)``: one pass on `engine`, every worker set up the same way.

    The engine's counters start from zero here: :func:`_metrics` reads them at commit.
    """
    if hasattr(engine, "reset_counters"):
        engine.reset_counters()  # this run's counts only (an engine object may run several)

    def map_pass(function, tasks, name):
        started = time.time()
        work_dir = os.path.join(outfs.work_dir(root), name)
        progress_dir = os.path.join(work_dir, "progress")
        total = sum(len(getattr(t, "records", ())) for t in tasks)
        live = log is log_to_stderr and sys.stderr.isatty()  # never in JSON: PassProgress says so
        with PassProgress(progress_dir, total, name, log, live=live):
            results = engine.map(worker.WorkerCall(function, settings, progress_dir), list(tasks), work_dir=work_dir)
        # Every task has succeeded once; a killed duplicate (a speculative copy's loser, a retried
        # attempt) may have left half-written temporaries that no one will rename.
        _remove_temporaries(root)
        seconds = time.time() - started
        log(logs.LogLine(f"featurize: pass {name!r}: {len(tasks)} tasks in {seconds:.1f} s", "pass_finished",
                         **{"pass": name, "tasks": len(tasks), "seconds": round(seconds, 3)}))
        return results

    return map_pass


def _engine_counters(engine) -> dict[str, dict[str, int]]:
    """`engine`'s counters by pass (:meth:`featurelib.engines.base.Engine.counters`); {} if it keeps none."""
    counters = getattr(engine, "counters", None)
    return counters() if callable(counters) else {}


def execute(spec: RunSpec, engine, *, resume: bool = False, overwrite: bool = False, incremental: bool = False,
            prune: bool = False, log: Callable[[str], None] | None = None) -> RunReport:
    """Run a spec end to end on `engine` (see :mod:`featurelib.engines`): passes, then commit.

    With ``incremental``, only the inputs the committed output does not hold yet are
    processed, as a new generation of shard files (:mod:`featurelib.incremental`).

    Raises
    ------
    UserError
        The user's mistake, before any image is read.
    PolicyError
        Too many rejects (``_FAILED.json`` written).
    Exception
        Anything else, after ``_FAILED.json`` is written.
    """
    log = log or log_to_stderr
    check_modes(resume=resume, overwrite=overwrite, incremental=incremental, prune=prune)
    started = time.time()
    spec = resolve_paths(spec)
    check_saved_artifacts(spec)
    if incremental:
        return _execute_incremental(spec, engine, prune=prune, log=log, started=started)
    _check_engine_output(engine, spec)
    tasks = plan(spec, log=log)
    warn_unused_labels(spec, tasks, log)
    check_output(spec, overwrite=overwrite)
    # before anything in the output changes
    lock = acquire_lock(spec.output.path, log=log, output=output_of(spec))
    try:
        return _execute_locked(spec, tasks, engine, resume=resume, overwrite=overwrite, log=log, started=started)
    finally:
        lock.release()


def _check_engine_output(engine, spec: RunSpec) -> None:
    """The engine's own refusal of this output (:meth:`featurelib.engines.base.Engine.check_output`);
    engines that do not derive from Engine have none."""
    check = getattr(engine, "check_output", None)
    if check is not None:
        check(remote=is_remote(spec.output.path))


def check_modes(*, resume: bool, overwrite: bool, incremental: bool, prune: bool) -> None:
    """Refuse combinations of run modes that make no sense (the command lines refuse them too).

    Raises
    ------
    UserError
    """
    if incremental and (resume or overwrite):
        raise UserError("--incremental cannot be combined with --resume or --overwrite")
    if prune and not incremental:
        raise UserError("--prune works with --incremental only")


def _execute_incremental(spec: RunSpec, engine, *, prune: bool, log: Callable[[str], None],
                         started: float) -> RunReport:
    from featurelib import incremental

    _check_engine_output(engine, spec)
    incremental.committed_manifest(spec)  # refuse before taking the lock: no output, another spec
    check_output(spec, overwrite=False)
    lock = acquire_lock(spec.output.path, log=log, output=output_of(spec))
    try:
        previous = incremental.committed_manifest(spec)  # what is committed now that the output is ours
        root = spec.output.path
        removed = incremental.remove_unlisted(output_of(spec), previous)
        remove_work(root)
        _remove_temporaries(root)
        if removed:
            log(f"featurize: removed {len(removed)} file(s) of an incremental run that did not complete")
        generation = incremental.plan_generation(spec, previous, prune=prune)
        incremental.report_missing(generation.missing, log, pruned=prune)
        if not generation.new and not generation.redone:
            log(f"featurize: nothing new to add: all {generation.listed} listed inputs are in the output "
                f"(generation {generation.generation - 1}); the output is unchanged")
            incremental.forget_failed_attempt(output_of(spec))
            return RunReport(previous, time.time() - started)
        again = (f" (and {generation.again} inputs of the {len(generation.redone)} shard(s) --prune redoes)"
                 if generation.redone else "")
        log(f"featurize: incremental generation {generation.generation}: {generation.new - generation.again} new "
            f"of {generation.listed} listed inputs{again} in {previous['n_shards']} shards on engine {engine.name}")
        extra = failed_generation(previous, generation.generation)
        tasks = generation.tasks
        check_list_stage_budget(spec, tasks, extra=extra)
        map_pass = _start_passes(spec, engine, log)
        artifacts: dict[str, str] | None = None
        try:
            if spec.dedup == "content":
                hashes = map_pass(hash_shard, tasks, "dedup")
                tasks, rest = incremental.mark_existing_duplicates(tasks, hashes, generation.existing,
                                                                   redone=generation.redone)
                tasks = apply_dedup(tasks, [rest])
            incremental.check_artifacts(spec, previous)
            refs = prepare_artifacts(spec, tasks, map_pass, reuse=True)
            incremental.check_reused(refs, previous)
            artifacts = {ref.column: ref.sha256 for ref in refs}
            tasks = [dataclasses.replace(t, artifacts=refs) for t in tasks]
            pending = sorted(tasks, key=lambda t: (-len(t.records), t.shard))
            fresh = map_pass(process_shard, pending, "main")
            manifest = commit_generation(tasks, sorted(fresh, key=lambda r: r.shard), previous, engine=engine.name,
                                         metrics=_metrics(started, fresh, [], engine),
                                         missing_inputs=0 if prune else len(generation.missing),
                                         redone=generation.redone, pruned=len(generation.missing) if prune else 0)
        except (PolicyError, UserError):
            raise
        except BaseException as exc:
            _record_failure(spec, exc, artifacts, extra=extra)
            raise
        finally:
            remove_work(root)
        return RunReport(manifest, time.time() - started)
    finally:
        lock.release()


def _start_passes(spec: RunSpec, engine, log: Callable[[str], None]):
    settings = worker.WorkerSettings(threads=spec.execution.threads_per_worker)
    worker.prepare_driver(settings)  # before any worker starts: pools inherit the environment
    return _map_pass(engine, settings, spec.output.path, log)


def _metrics(started: float, fresh: Sequence[ShardResult], reused: Sequence[ShardResult], engine) -> dict[str, Any]:
    """The manifest's ``metrics``: timings, and ``engine_counters``, what `engine` counted by pass in
    this run (:func:`_engine_counters`): for monitoring, never the ledger's counts."""
    elapsed = time.time() - started
    rows = sum(r.metrics.get("written_rows", 0) for r in fresh)
    first = min((r.metrics["started_at"] for r in fresh if "started_at" in r.metrics), default=None)
    return {"wall_s": round(elapsed, 3), "fresh_shards": len(fresh), "reused_shards": len(reused),
            "fresh_rows": rows, "rows_per_s": round(rows / elapsed, 2) if elapsed > 0 else None,
            "first_task_s": round(first - started, 3) if first is not None else None,
            "engine_counters": _engine_counters(engine)}


def _record_failure(spec: RunSpec, exc: BaseException, artifacts: dict[str, str] | None, *,
                    extra: dict[str, Any] | None = None) -> None:
    """``_FAILED.json`` for a run that failed or was interrupted, and no temporaries left.

    The engine has stopped its tasks by now (engines stop them before re-raising): what they
    left half-written goes; complete shards stay for --resume (or, for an incremental run,
    until the next one removes them)."""
    signum = exc.signum if isinstance(exc, Terminated) else received_signal()
    interrupted = isinstance(exc, KeyboardInterrupt) or signum is not None
    error = (f"interrupted by {signal.Signals(signum).name}" if signum not in (None, signal.SIGINT)
             else "interrupted (Ctrl-C)" if interrupted else f"{type(exc).__name__}: {exc}")
    write_failed(output_of(spec), spec, error, kind="interrupted" if interrupted else "error",
                 artifacts=artifacts, extra=extra)
    with contextlib.suppress(OSError):
        _remove_temporaries(spec.output.path)


def _execute_locked(spec: RunSpec, tasks: list[ShardTask], engine, *, resume: bool, overwrite: bool,
                    log: Callable[[str], None], started: float) -> RunReport:
    keep = prepare_output(spec, tasks, resume=resume, overwrite=overwrite)
    check_list_stage_budget(spec, tasks)
    listed = sum(len(t.records) for t in tasks)
    log(f"featurize: {listed} inputs in {len(tasks)} shards on engine {engine.name}"
        + (f"; resuming, {len(keep)} shards already complete" if keep else ""))
    map_pass = _start_passes(spec, engine, log)
    artifacts: dict[str, str] | None = None
    try:
        if spec.dedup == "content":
            tasks = apply_dedup(tasks, map_pass(hash_shard, tasks, "dedup"))
        refs = prepare_artifacts(spec, tasks, map_pass, reuse=resume)
        artifacts = {ref.column: ref.sha256 for ref in refs}
        tasks = [dataclasses.replace(t, artifacts=refs) for t in tasks]
        # Biggest shards first: fewer stragglers at the end of the run.
        pending = sorted((t for t in tasks if t.shard not in keep), key=lambda t: (-len(t.records), t.shard))
        fresh = map_pass(process_shard, pending, "main")
        reused = [reused_result(spec, t) for t in tasks if t.shard in keep]
        manifest = commit(tasks, sorted([*fresh, *reused], key=lambda r: r.shard), engine=engine.name,
                          metrics=_metrics(started, fresh, reused, engine))
        if fresh:
            log(f"featurize: first shard task started {manifest['metrics']['first_task_s']} s after the run did")
    except (PolicyError, UserError):
        raise
    except BaseException as exc:
        _record_failure(spec, exc, artifacts)
        raise
    finally:
        remove_work(spec.output.path)
    return RunReport(manifest, time.time() - started)


def warn_unused_labels(spec: RunSpec, tasks: Sequence[ShardTask], log: Callable[[str], None]) -> None:
    """One line naming the spec's ``labels`` that no listed input carries (a typo, or a missing folder)."""
    if not spec.labels:
        return
    seen = {r.label_name for t in tasks for r in t.records}
    unused = [name for name in spec.labels if name not in seen]
    if unused:
        log(f"featurize: warning: {len(unused)} of the spec's labels match no input (no folder or manifest "
            f"label of that name): {', '.join(map(repr, unused[:10]))}{', ...' if len(unused) > 10 else ''}")


def check_list_stage_budget(spec: RunSpec, tasks: Sequence[ShardTask], *, extra: dict[str, Any] | None = None) -> None:
    """Fail by policy before any image is read when list-stage rejects alone exceed the error budget.

    Labels outside the spec's ``labels`` and manifest rows the spec cannot take
    are known once the inputs are listed: a run they doom fails now, not after
    decoding everything. ``_FAILED.json`` holds the counts and top reasons.

    Raises
    ------
    PolicyError
        If ``list-stage rejects / listed > failures.max_reject_fraction``.
    """
    rejected = [(r.source_key, *r.reject) for t in tasks for r in t.records if r.reject is not None]
    listed = sum(len(t.records) for t in tasks)
    budget = spec.failures.max_reject_fraction
    if not listed or len(rejected) / listed <= budget:
        return
    by_reason = Counter(reason for _, reason, _ in rejected)
    examples = {}
    for key, reason, detail in rejected:
        examples.setdefault(reason, f"{key!r}: {detail}")
    top = "; ".join(f"{reason} {n} (e.g. {examples[reason]})" for reason, n in by_reason.most_common(3))
    error = (f"{len(rejected)} of {listed} inputs rejected when listed, before any image was read "
             f"({len(rejected) / listed:.1%}), over failures.max_reject_fraction = {budget}; top reasons: {top}")
    ledger = Ledger(listed, 0, 0, len(rejected), dict(sorted(by_reason.items())))
    write_failed(output_of(spec), spec, error, kind="policy", ledger=ledger, extra=extra)
    raise PolicyError(error)


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
    generations = manifest.get("generations") or []
    if len(generations) > 1:
        lines.append(f"generations      {len(generations)} (--incremental)")
        for entry in generations:
            lines.append(f"  g{entry['generation']:<4} {entry['created_at']}  listed {entry['listed']}, written "
                         f"{entry['written_sources']}, rejected {entry['rejected']} ({entry['engine']})")
    if manifest.get("missing_inputs"):
        lines.append(f"missing inputs   {manifest['missing_inputs']} (in the output, no longer listed; rows kept)")
    lines.append(f"labels           {len(manifest['label_names'])}: {', '.join(manifest['label_names'][:12])}")
    lines.append("columns          " + ", ".join(f"{c['name']}[{c['dim']}]" for c in manifest["columns"]))
    if seconds:
        lines.append(f"time             {seconds:.2f} s, {counts['written_rows'] / seconds:.1f} rows/s overall")
    lines.append(f"feature_fp       {manifest['feature_fingerprint']}")
    lines.append(f"run_fp           {manifest['run_fingerprint']}")
    return "\n".join(lines)


__all__ = ["execute", "check_output", "prepare_output", "format_summary", "RunReport"]
