"""An independent reader of the ledger invariant, straight from the files on disk.

Deliberately does not use featurelib's own readers: it is the test's view.
"""

from __future__ import annotations

import collections
import json
import pathlib

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
