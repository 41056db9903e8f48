"""``featurize compare``: what differs between committed outputs (files, rows, columns, values,
rejects, manifests), each one against the first. Small pure functions over manifests and tables;
the CLI only prints :func:`summary_line` and :func:`detail_lines` (``--json``: the dicts)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# Spec settings that cannot change the data (how it ran); the output path is not compared at all.
SETTINGS_ONLY = ("decode.isolation", "execution.")
IGNORED = ("output.path",)
DATA_KINDS = ("parquet", "rejects")
EXAMPLES = 3


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _settings_only(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SETTINGS_ONLY)


def data_hashes(root: str, manifest: dict) -> dict[str, str]:
    """sha256 of the Parquet and reject files as they are on disk (not as the manifest says)."""
    import hashlib

    hashes = {}
    for f in manifest["files"]:
        if f["kind"] in DATA_KINDS:
            path = os.path.join(root, f["path"])
            hashes[f["path"]] = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else ""
    return hashes


def compare_files(a: dict, b: dict, hashes_a: dict[str, str], hashes_b: dict[str, str]) -> dict[str, Any]:
    """File counts per kind, paths in one output only, and whether the data files are byte-identical."""
    def by_path(m, hashes):
        return {f["path"]: {**f, "sha256": hashes.get(f["path"], f["sha256"])} for f in m["files"]}
    fa, fb = by_path(a, hashes_a), by_path(b, hashes_b)
    kinds = ("parquet", "rejects", "hdf5")
    hashed = ("parquet", "rejects", "stats", "stats_summary", "artifact")
    return {
        "counts": [{k: sum(f["kind"] == k for f in m["files"]) for k in kinds} for m in (a, b)],
        "only_first": sorted(set(fa) - set(fb)), "only_second": sorted(set(fb) - set(fa)),
        "data_identical": sorted((p, f["sha256"]) for p, f in fa.items() if f["kind"] in DATA_KINDS)
        == sorted((p, f["sha256"]) for p, f in fb.items() if f["kind"] in DATA_KINDS),
        "bytes_differ": sorted(p for p in set(fa) & set(fb)
                               if fa[p]["kind"] in hashed and fa[p]["sha256"] != fb[p]["sha256"]),
    }


def compare_manifests(a: dict, b: dict) -> dict[str, Any]:
    """Counts, fingerprints and spec settings that differ (settings that cannot change data apart)."""
    sa, sb = _flatten(a.get("spec", {})), _flatten(b.get("spec", {}))
    keys = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k) and k not in IGNORED)
    return {
        "counts": {k: [a["counts"].get(k), b["counts"].get(k)] for k in sorted(set(a["counts"]) | set(b["counts"]))
                   if a["counts"].get(k) != b["counts"].get(k)},
        "fingerprints": [k for k in ("feature_fingerprint", "run_fingerprint") if a.get(k) != b.get(k)],
        "settings": [k for k in keys if _settings_only(k)],
        "spec": [k for k in keys if not _settings_only(k)],
    }


def _types(manifest: dict, table=None) -> dict[str, str]:
    if table is not None:
        return {field.name: str(field.type) for field in table.schema}
    return {f["name"]: f["type"] for f in manifest["schema"]}


def compare_schema(a: dict, b: dict, table_a=None, table_b=None) -> dict[str, Any]:
    """Columns in one output only, and columns whose type or dimension differs (from the Parquet
    files when read, else from the manifests)."""
    ta, tb = _types(a, table_a), _types(b, table_b)
    da = {c["name"]: c.get("dim") for c in a.get("columns", [])}
    db = {c["name"]: c.get("dim") for c in b.get("columns", [])}
    changed = [f"{n}: {ta[n]} vs {tb[n]}" for n in ta if n in tb and ta[n] != tb[n]]
    changed += [f"{n}: dim {da[n]} vs {db[n]}" for n in da if n in db and da[n] != db[n]]
    return {"only_first": [n for n in ta if n not in tb], "only_second": [n for n in tb if n not in ta],
            "changed": changed}


def read_kind(root: str, manifest: dict, kind: str):
    """All files of one kind as one table (None when there are none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(os.path.join(root, f["path"])) for f in sorted(manifest["files"], key=lambda f: f["path"])
              if f["kind"] == kind]
    if not tables:
        return None
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except Exception:  # noqa: BLE001 - shards of a tampered output may not concatenate
        return pa.concat_tables([t.select([n for n in tables[0].column_names if all(n in x.column_names for x in tables)])
                                 for t in tables])


def _by_key(table) -> dict[str, int]:
    return {k: i for i, k in enumerate(table.column("key").to_pylist())} if table is not None else {}


def compare_rows(ta, tb) -> dict[str, Any]:
    """Row counts, keys in one table only (a few examples, and how many) and, for keys in both,
    the columns that differ: rows differing and, for float columns, the max absolute difference."""
    ka, kb = _by_key(ta), _by_key(tb)
    common = sorted(set(ka) & set(kb))
    only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
    columns: dict[str, dict[str, Any]] = {}
    if common and ta is not None and tb is not None:
        ia, ib = [ka[k] for k in common], [kb[k] for k in common]
        for name in ta.column_names:
            if name == "key" or name not in tb.column_names:
                continue
            ca, cb = ta.column(name).take(ia), tb.column(name).take(ib)
            diff = _column_diff(ca, cb)
            if diff["rows"]:
                columns[name] = diff
    return {"rows": [len(ka), len(kb)], "common": len(common),
            "only_first": len(only_a), "only_second": len(only_b),
            "only_first_examples": only_a[:EXAMPLES], "only_second_examples": only_b[:EXAMPLES],
            "columns": columns}


def _column_diff(ca, cb) -> dict[str, Any]:
    import pyarrow as pa

    typ = ca.type
    if (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ)) and pa.types.is_floating(typ.value_type) \
            and ca.type == cb.type:
        try:
            xa = np.asarray(ca.to_pylist(), dtype=np.float64)
            xb = np.asarray(cb.to_pylist(), dtype=np.float64)
        except ValueError:
            xa = xb = None
        if xa is not None and xa.shape == xb.shape:
            same = (xa == xb) | (np.isnan(xa) & np.isnan(xb))
            rows = int((~same.reshape(len(xa), -1).all(axis=1)).sum()) if len(xa) else 0
            delta = np.abs(xa - xb)[~same]
            return {"rows": rows, "max_abs_diff": float(np.nanmax(delta)) if delta.size else 0.0}
    if pa.types.is_floating(typ) and ca.type == cb.type:
        xa, xb = ca.to_numpy(zero_copy_only=False), cb.to_numpy(zero_copy_only=False)
        same = (xa == xb) | (np.isnan(xa) & np.isnan(xb))
        delta = np.abs(xa - xb)[~same]
        return {"rows": int((~same).sum()), "max_abs_diff": float(np.nanmax(delta)) if delta.size else 0.0}
    return {"rows": sum(x != y for x, y in zip(ca.to_pylist(), cb.to_pylist()))}


def compare_rejects(ta, tb) -> dict[str, Any]:
    """Reject keys in one output only and keys rejected for another reason."""
    def reasons(t):
        return dict(zip(t.column("key").to_pylist(), t.column("reason").to_pylist())) if t is not None else {}
    ra, rb = reasons(ta), reasons(tb)
    return {"rows": [len(ra), len(rb)],
            "only_first": sorted(set(ra) - set(rb))[:EXAMPLES], "only_second": sorted(set(rb) - set(ra))[:EXAMPLES],
            "n_only_first": len(set(ra) - set(rb)), "n_only_second": len(set(rb) - set(ra)),
            "reason_differs": [f"{k}: {ra[k]} vs {rb[k]}" for k in sorted(set(ra) & set(rb)) if ra[k] != rb[k]]}


def compare_pair(root_a: str, a: dict, root_b: str, b: dict) -> dict[str, Any]:
    """The full comparison of output b against output a; ``same_data`` decides the exit code."""
    files = compare_files(a, b, data_hashes(root_a, a), data_hashes(root_b, b))
    result: dict[str, Any] = {"first": root_a, "second": root_b, "engines": [a.get("engine"), b.get("engine")],
                              "files": files, "manifest": compare_manifests(a, b)}
    if files["data_identical"]:
        result["schema"] = compare_schema(a, b)
        result["rows"] = result["rejects"] = None
    else:
        table_a, table_b = read_kind(root_a, a, "parquet"), read_kind(root_b, b, "parquet")
        result["schema"] = compare_schema(a, b, table_a, table_b)
        result["rows"] = compare_rows(table_a, table_b)
        result["rejects"] = compare_rejects(read_kind(root_a, a, "rejects"), read_kind(root_b, b, "rejects"))
    result["details"] = detail_lines(result)
    result["same_data"] = not result["details"]
    return result


def detail_lines(r: dict[str, Any], limit: int = 10) -> list[str]:
    """One line per kind of difference that changes data (settings-only differences are not listed)."""
    lines: list[str] = []
    f, m, s, rows, rej = r["files"], r["manifest"], r["schema"], r["rows"], r["rejects"]
    if f["counts"][0] != f["counts"][1]:
        lines.append("files: " + " vs ".join(", ".join(f"{n} {k}" for k, n in c.items()) for c in f["counts"]))
    for side, name in (("only_first", "first"), ("only_second", "second")):
        if f[side]:
            lines.append(f"files: only in the {name}: {', '.join(f[side][:EXAMPLES])}"
                         + (f" (+{len(f[side]) - EXAMPLES} more)" if len(f[side]) > EXAMPLES else ""))
    other = [p for p in f["bytes_differ"] if not p.startswith(("parquet/", "rejects/"))]
    if other:
        lines.append(f"files: different bytes: {', '.join(other[:EXAMPLES])}"
                     + (f" (+{len(other) - EXAMPLES} more)" if len(other) > EXAMPLES else ""))
    if rows is not None:
        if rows["rows"][0] != rows["rows"][1]:
            lines.append(f"rows: {rows['rows'][0]} vs {rows['rows'][1]}")
        for side, name in (("only_first", "first"), ("only_second", "second")):
            if rows[side]:
                n = rows[side]
                lines.append(f"rows: {n} key{'s' * (n != 1)} only in the {name}: "
                             f"{', '.join(rows[side + '_examples'])}")
    if s["only_first"] or s["only_second"]:
        lines.append(f"columns: only in the first: {', '.join(s['only_first']) or '-'}; "
                     f"only in the second: {', '.join(s['only_second']) or '-'}")
    if s["changed"]:
        lines.append(f"columns: differ: {'; '.join(s['changed'])}")
    if rows is not None:
        for name, d in rows["columns"].items():
            extra = f", max abs diff {d['max_abs_diff']:.6g}" if "max_abs_diff" in d else ""
            lines.append(f"values: {name} differs in {d['rows']} of {rows['common']} rows{extra}")
    if rej is not None:
        if rej["n_only_first"] or rej["n_only_second"]:
            lines.append(f"rejects: {rej['n_only_first']} only in the first, {rej['n_only_second']} only in "
                         f"the second: {', '.join((rej['only_first'] + rej['only_second'])[:EXAMPLES])}")
        if rej["reason_differs"]:
            lines.append(f"rejects: reason differs: {'; '.join(rej['reason_differs'][:EXAMPLES])}")
    if m["counts"]:
        lines.append("counts: " + ", ".join(f"{k} {x} vs {y}" for k, (x, y) in m["counts"].items()))
    if lines and m["fingerprints"]:
        lines.append(f"manifest: differ: {', '.join(m['fingerprints'])}")
    if lines and m["spec"]:
        lines.append(f"spec: differs: {', '.join(m['spec'][:5])}")
    if len(lines) > limit:
        lines = lines[:limit - 1] + [f"... {len(lines) - limit + 1} more (--json for all)"]
    return lines


def summary_line(r: dict[str, Any]) -> str:
    """One line for the pair: same (how), or DIFFERENT (which kinds)."""
    m = r["manifest"]
    head = f"{r['engines'][1] or '?'} {r['second']} vs {r['first']}"
    if not r["same_data"]:
        kinds = sorted({line.split(":", 1)[0] for line in r["details"] if not line.startswith("...")},
                       key=["files", "rows", "columns", "values", "rejects", "counts", "manifest", "spec"].index)
        return f"DIFFERENT {head}: {', '.join(kinds)}"
    how = "identical Parquet and reject files" if r["files"]["data_identical"] else "same rows and values"
    settings = m["settings"] + m["spec"]
    if settings:
        return f"same      {head}: same data, different settings: {', '.join(settings)}"
    return f"same      {head}: {how}"
