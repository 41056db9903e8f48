"""An independent reader of the ledger invariant, straight from the files on disk.

Deliberately does not use featurelib's own readers: it is the test's view.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re

import pyarrow.parquet as pq


def read_output(out: pathlib.Path) -> dict:
    """Manifest, written rows and rejects of an output directory."""
    out = pathlib.Path(out)
    manifest = json.loads((out / "_manifest.json").read_text())
    written = [row for p in sorted((out / "parquet").glob("part-*.parquet"))
               for row in pq.read_table(p, columns=["key", "source_key", "aug_index"]).to_pylist()]
    rejects = [row for p in sorted((out / "rejects").glob("part-*.parquet")) for row in pq.read_table(p).to_pylist()]
    return {"manifest": manifest, "written": written, "rejects": rejects}


def assert_ledger(out: pathlib.Path, listed: set[str]) -> dict:
    """Check W ∪ R == I, W ∩ R == ∅, no duplicates, reasons present, counts match, no temp files.

    Returns {source_key: reason} of the rejects.
    """
    out = pathlib.Path(out)
    got = read_output(out)
    originals = [r["source_key"] for r in got["written"] if r["aug_index"] == 0]
    assert len(originals) == len(set(originals)), "a source written twice"
    keys = [r["key"] for r in got["written"]]
    assert len(keys) == len(set(keys)), "a key written twice"
    reject_keys = [r["source_key"] for r in got["rejects"]]
    assert len(reject_keys) == len(set(reject_keys)), "a source rejected twice"
    written, rejected = set(originals), set(reject_keys)
    assert not written & rejected, f"written and rejected: {sorted(written & rejected)[:5]}"
    assert written | rejected == listed, (
        f"missing {sorted(listed - written - rejected)[:5]}, extra {sorted((written | rejected) - listed)[:5]}")
    for row in got["rejects"]:
        assert row["reason"] and row["stage"], row
    counts = got["manifest"]["counts"]
    assert counts == {"listed": len(listed), "written_sources": len(written),
                      "written_rows": len(keys), "rejected": len(rejected)}
    by_reason = collections.Counter(r["reason"] for r in got["rejects"])
    assert got["manifest"]["rejects_by_reason"] == dict(by_reason)
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, f"temporary files left: {leftovers}"
    # every file the manifest lists exists with its size
    for info in got["manifest"]["files"]:
        assert (out / info["path"]).stat().st_size == info["bytes"], info
    return {r["source_key"]: r["reason"] for r in got["rejects"]}


GENERATION = re.compile(r"part-\d{5}-of-\d{5}(?:\.g(\d{4}))?\.(?:parquet|h5|json)")


def generation_of(path: str) -> int:
    """1 for ``part-00003-of-00008.parquet``, g for ``part-00003-of-00008.g000g.parquet``."""
    match = GENERATION.fullmatch(pathlib.PurePosixPath(path).name)
    assert match, path
    return int(match.group(1)) if match.group(1) else 1


def assert_ledger_across_generations(out: pathlib.Path, listed: set[str]) -> dict:
    """:func:`assert_ledger` over the union of an incremental output's generations, plus: every shard
    file on disk is listed in the manifest, each generation has every shard's files, no source is in
    two generations, and each ``generations`` entry of the manifest counts its own files.

    `listed` is every source key ever listed (all generations). Returns {source_key: reason} of the rejects.
    """
    out = pathlib.Path(out)
    rejected = assert_ledger(out, listed)
    manifest = json.loads((out / "_manifest.json").read_text())
    on_disk = {p.relative_to(out).as_posix() for kind in ("parquet", "hdf5", "rejects", "stats")
               for p in (out / kind).glob("part-*")}
    listed_files = {f["path"] for f in manifest["files"] if f["shard"] is not None}
    assert on_disk == listed_files, (sorted(on_disk - listed_files)[:5], sorted(listed_files - on_disk)[:5])
    per_generation: dict[int, dict[str, set]] = collections.defaultdict(lambda: {"w": set(), "r": set(), "rows": 0})
    n = manifest["n_shards"]
    shards_per_generation: dict[int, set[int]] = collections.defaultdict(set)
    for info in manifest["files"]:
        if info["shard"] is None:
            continue
        generation = generation_of(info["path"])
        shards_per_generation[generation].add(info["shard"])
        if info["kind"] == "parquet":
            rows = pq.read_table(out / info["path"], columns=["source_key", "aug_index"]).to_pylist()
            per_generation[generation]["w"] |= {r["source_key"] for r in rows if r["aug_index"] == 0}
            per_generation[generation]["rows"] += len(rows)
        elif info["kind"] == "rejects":
            per_generation[generation]["r"] |= {r["source_key"] for r in pq.read_table(out / info["path"]).to_pylist()}
    assert all(shards == set(range(n)) for shards in shards_per_generation.values()), shards_per_generation
    seen: set[str] = set()
    for generation in sorted(per_generation):
        keys = per_generation[generation]["w"] | per_generation[generation]["r"]
        assert not keys & seen, f"generation {generation} repeats {sorted(keys & seen)[:5]}"
        seen |= keys
    entries = {g["generation"]: g for g in manifest["generations"]}
    assert sorted(entries) == sorted(per_generation)
    for generation, got in per_generation.items():
        entry = entries[generation]
        assert (entry["listed"], entry["written_sources"], entry["written_rows"], entry["rejected"]) == (
            len(got["w"]) + len(got["r"]), len(got["w"]), got["rows"], len(got["r"])), (generation, entry)
    return rejected
