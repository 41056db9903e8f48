"""``featurize report OUT``: one self-contained HTML page describing a committed output.

What the page shows, each from the file that holds it (docs/CONTRACT.md):

* run identity (fingerprints, engine, created_at, versions, columns): ``_manifest.json``;
* counts, rejects by reason (with up to 5 examples each: the reject files), incremental
  generations and the files listed: ``_manifest.json`` and ``rejects/``;
* classes per split, unlabelled sources, input sizes and formats, pixel and per-column
  feature statistics: ``stats.json`` (input sizes fall back to ``orig_height`` /
  ``orig_width`` of the Parquet shards when ``stats.json`` lacks them);
* a grid of sample sources next to their augmented variants: the stored pixels when the run
  kept them (``output.pixels``), else the sources re-decoded from their recorded ``uri`` with
  the run's spec through the run's own code path (:mod:`featurelib.preview`), else a note;
* time per stage and shard: the manifest's ``metrics`` (those of the last run).

The page needs nothing outside itself: plots are PNGs (matplotlib, Agg canvas, no pyplot
state) inlined as ``data:`` URIs, the CSS is inline, and the page carries no script. Every
string that comes from data (labels, keys, file names, reject details, spec values) is
HTML-escaped; a Content-Security-Policy (no scripts, images from ``data:`` only) is a second
line of defence. The file is written beside its place and renamed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import html
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from featurelib import contract as c
from featurelib.errors import UserError
from featurelib.io import files as layout

#: Reject examples shown per reason.
EXAMPLES_PER_REASON = 5
#: Reject details are cut to this many characters.
MAX_DETAIL = 300
#: Sample sources in the grid (``--samples``).
DEFAULT_SAMPLES = 6
#: Sources read at most per wanted sample when re-decoding (unreadable or changed ones are skipped).
_SCAN_FACTOR = 4
#: Per-dimension feature plots up to this many dimensions; histograms of the per-dimension values above.
_MAX_LINE_DIMS = 512
#: Classes shown by name in the bar chart; above, counts are plotted sorted, without names.
_MAX_NAMED_CLASSES = 40
#: Shards drawn one bar each in the timing chart; above, a histogram of shard times.
_MAX_SHARD_BARS = 48
#: The stage timings a shard task records (featurelib.shard), in pipeline order.
STAGES = ("read_s", "decode_s", "preprocess_s", "augment_s", "extract_s", "stats_s", "write_s")

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1f21;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
nav{font-size:13px;margin:6px 0 12px}nav a{margin-right:10px;color:#2a5db0;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 10px;background:#fff}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;word-break:break-all}
.note{color:#555;font-style:italic}.warn{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.muted{color:#777}
"""


def _esc(value: Any) -> str:
    """Any value from data as HTML text (quotes escaped too: safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if not np.isfinite(x):
        return _esc(x)
    return f"{x:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped unless given as :class:`_Raw`."""
    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="n"' if i in numeric else ""
        text = value.html if isinstance(value, _Raw) else _esc(value)
        return f"<{tag}{cls}>{text}</{tag}>"
    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclasses.dataclass(frozen=True)
class _Raw:
    """Markup built here (already escaped where it holds data)."""

    html: str


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _mpl(text: Any, limit: int = 28) -> str:
    """A string from data as matplotlib text: ``$`` escaped (no mathtext), long names cut."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("$", r"\$")


# -- plots ----------------------------------------------------------------------------------------

class _Plots:
    """matplotlib figures rendered on the Agg canvas (no pyplot: no global backend or state)."""

    def __init__(self) -> None:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._figure, self._canvas = Figure, FigureCanvasAgg
        self.count = 0
        # The report's style, only while it draws: the process's own rcParams stay as they are.
        self.style = lambda: matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10})

    def figure(self, width: float = 9.0, height: float = 2.8, **subplots):
        fig = self._figure(figsize=(width, height), layout="constrained")
        self._canvas(fig)
        return fig, fig.subplots(**subplots)

    def img(self, fig, alt: str) -> str:
        import warnings

        buf = io.BytesIO()
        with warnings.catch_warnings():  # a glyph missing from the font (a label in another script) is drawn as a box
            warnings.simplefilter("ignore")
            fig.savefig(buf, format="png", dpi=80)
        self.count += 1
        return _png_tag(buf.getvalue(), alt, "plot")


def _png_tag(data: bytes, alt: str, cls: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="{cls}" alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


# -- the report -------------------------------------------------------------------------------------

@dataclasses.dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    path: str
    bytes: int
    images: int
    samples: str  # where the sample tiles came from: "stored pixels", "re-decoded", or "skipped: why"
    notes: list[str]


class _Context:
    def __init__(self, root: str, manifest: dict[str, Any], stats: dict[str, Any] | None,
                 spec_path: str | None, n_samples: int) -> None:
        self.root, self.manifest, self.stats = root, manifest, stats
        self.spec_path, self.n_samples = spec_path, n_samples
        self.plots = _Plots()
        self.notes: list[str] = []
        self.samples = "skipped"

    def files(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.manifest.get("files", []) if f.get("kind") == kind]

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)


def load_output(root: str) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """``(manifest, stats.json or None, _FAILED.json or None)`` of a committed output.

    Raises
    ------
    UserError
        `root` holds no committed output (not a featurelib output, or a run that failed).
    """
    from featurelib.io.readers import load_manifest

    failed_path = os.path.join(root, layout.FAILED)
    if not os.path.exists(os.path.join(root, layout.MANIFEST)) and os.path.exists(failed_path):
        try:
            with open(failed_path, encoding="utf-8") as handle:
                why = json.load(handle).get("error") or "no reason recorded"
        except (OSError, ValueError, AttributeError):
            why = "its _FAILED.json is unreadable"
        why = " ".join(str(why).split())[:300]
        raise UserError(f"{root!r} holds no committed output: its last run failed ({why}); see {failed_path}, "
                        f"then rerun (--resume reuses its complete shards) before asking for a report")
    manifest = load_manifest(root)
    if not isinstance(manifest, dict) or "counts" not in manifest or "files" not in manifest:
        raise UserError(f"{root!r}: {layout.MANIFEST} is not a featurelib manifest")
    stats = failed = None
    stats_path = os.path.join(root, layout.STATS)
    if os.path.exists(stats_path):
        with open(stats_path, encoding="utf-8") as handle:
            stats = json.load(handle)
    if os.path.exists(failed_path):
        try:
            with open(failed_path, encoding="utf-8") as handle:
                failed = json.load(handle)
        except (OSError, ValueError):
            failed = {"error": "unreadable _FAILED.json"}
    return manifest, stats, failed


def write_report(root: str, out_path: str | None = None, *, spec_path: str | None = None,
                 n_samples: int = DEFAULT_SAMPLES, log: Callable[[str], None] = print) -> ReportResult:
    """Write the HTML report of the committed output `root` to `out_path` (default ``root/report.html``).

    Raises
    ------
    UserError
        Not a committed output, a bad ``--spec``, or an unwritable `out_path`.
    """
    if n_samples < 0:
        raise UserError(f"--samples must be 0 or more, got {n_samples}")
    manifest, stats, failed = load_output(root)
    out_path = out_path or os.path.join(root, layout.REPORT)
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write the report to {out_path}: folder {folder} does not exist")
    spec = None
    if spec_path is not None:
        spec = _user_spec(spec_path, manifest)
    ctx = _Context(root, manifest, stats, spec_path, n_samples)
    ctx.user_spec = spec
    with ctx.plots.style():
        sections = [
            ("identity", "Run", _identity(ctx, failed)),
            ("counts", "Counts", _counts(ctx)),
            ("classes", "Classes per split", _guard(ctx, "classes", _classes)),
            ("rejects", "Rejects", _guard(ctx, "rejects", _rejects)),
            ("samples", "Sample images", _guard(ctx, "samples", _samples)),
            ("inputs", "Input images", _guard(ctx, "input sizes", _inputs)),
            ("features", "Feature columns", _guard(ctx, "features", _features)),
            ("throughput", "Time per stage", _guard(ctx, "throughput", _throughput)),
            ("generations", "Generations", _guard(ctx, "generations", _generations)),
            ("files", "Files", _files(ctx)),
        ]
    name = os.path.basename(os.path.normpath(os.path.abspath(root)))
    nav = "".join(f'<a href="#{anchor}">{_esc(title)}</a>' for anchor, title, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{_esc(title)}</h2>{content}</section>'
                   for anchor, title, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>featurelib report: {_esc(name)}</title><style>{_CSS}</style></head>\n"
            f"<body><main><h1>featurelib report: <span class=\"mono\">{_esc(name)}</span></h1>"
            f'<p class="muted">{_esc(os.path.abspath(root))} &middot; committed {_esc(manifest.get("created_at"))}'
            f" &middot; report written by featurelib {_esc(_version())}</p>"
            f"<nav>{nav}</nav>{body}</main></body></html>\n")
    data = page.encode("utf-8")
    _write_atomic(out_path, data)
    result = ReportResult(out_path, len(data), ctx.plots.count + (ctx.samples in ("stored pixels", "re-decoded")),
                          ctx.samples, ctx.notes)
    skipped = f"; samples {ctx.samples}" if ctx.samples not in ("stored pixels", "re-decoded") else \
        f"; samples from {ctx.samples}"
    problems = f"; {len(ctx.notes)} section(s) incomplete: {', '.join(ctx.notes)}" if ctx.notes else ""
    log(f"wrote {out_path} ({len(data) / 1024:.0f} KiB, {result.images} image(s){skipped}{problems})")
    return result


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("featurelib")
    except Exception:  # not installed (a checkout on sys.path)
        return "unknown"


def _write_atomic(path: str, data: bytes) -> None:
    tmp = layout.temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"cannot write the report to {path}: {exc.strerror or exc} (choose another place with "
                        f"--out)") from None


def _guard(ctx: _Context, what: str, build: Callable[[_Context], str]) -> str:
    """One section; a file of the output that cannot be read costs that section only (with a note)."""
    try:
        return build(ctx)
    except Exception as exc:  # a missing or damaged file: the rest of the report still helps
        message = f"{type(exc).__name__}: {exc}"
        ctx.notes.append(what)
        print(f"featurize: warning: report section {what!r} left out: {message}", file=sys.stderr)
        return _note(f"This section could not be built: {message}")


def _user_spec(spec_path: str, manifest: dict[str, Any]):
    """``--spec``: the run's spec with what the manifest cannot hold (``storage_options``)."""
    from featurelib.spec import RunSpec

    # The input path as the run resolved it (the samples are read from the uris it recorded): a spec that
    # names it relatively, or leaves it to --input, is still the run's spec.
    recorded = ((manifest.get("spec") or {}).get("input") or {}).get("path")
    spec = RunSpec.from_yaml(spec_path).with_overrides(input=recorded)
    wanted = (manifest.get("spec_fingerprints") or {}).get("run")
    if wanted and spec.run_fingerprint() != wanted:
        raise UserError(f"--spec {spec_path!r} is not the spec of this output (its run fingerprint "
                        f"{spec.run_fingerprint()[:12]}... differs from the manifest's {wanted[:12]}...)")
    return spec


# -- sections ---------------------------------------------------------------------------------------

def _identity(ctx: _Context, failed: dict[str, Any] | None) -> str:
    m = ctx.manifest
    parts = []
    if failed is not None:
        gen = failed.get("generation")
        what = f"generation {gen} " if gen else ""
        parts.append(f'<p class="warn">The last run ({what}{_esc(failed.get("kind", "failed"))}) failed: '
                     f'<span class="mono">{_esc(failed.get("error", ""))}</span>. This report describes the '
                     f"committed output, which is still valid.</p>")
    fps = m.get("spec_fingerprints") or {}
    rows = [("feature_fingerprint", _Raw(f'<code>{_esc(m.get("feature_fingerprint"))}</code>')),
            ("run_fingerprint", _Raw(f'<code>{_esc(m.get("run_fingerprint"))}</code>'))]
    if fps and (fps.get("feature") != m.get("feature_fingerprint") or fps.get("run") != m.get("run_fingerprint")):
        rows += [("spec part (feature)", _Raw(f'<code>{_esc(fps.get("feature"))}</code>')),
                 ("spec part (run)", _Raw(f'<code>{_esc(fps.get("run"))}</code>'))]
    spec = m.get("spec") or {}
    image = spec.get("image") or {}
    augment = spec.get("augment") or {}
    ops = ", ".join(str(op.get("op")) for op in augment.get("ops") or []) or "none"
    rows += [("engine", m.get("engine")), ("created_at", m.get("created_at")),
             ("format_version", m.get("format_version")), ("shards", m.get("n_shards")),
             ("input", (spec.get("input") or {}).get("path")),
             ("image", f"{image.get('size')} {image.get('resize', '')} {image.get('interpolation', '')}".strip()),
             ("augment", f"{augment.get('copies', 0)} copies of {augment.get('splits')} ({ops})"),
             ("formats", ", ".join((spec.get("output") or {}).get("formats") or [])),
             ("pixels stored", (spec.get("output") or {}).get("pixels", False)),
             ("seed", spec.get("seed"))]
    parts.append(_table(("", "value"), rows))
    columns = m.get("columns") or []
    if columns:
        parts.append("<h3>Feature columns</h3>")
        parts.append(_table(("column", "extractor", "version", "dim", "params"),
                            [(col.get("name"), col.get("extractor"), col.get("version"), _num(col.get("dim")),
                              _Raw(f"<code>{_esc(json.dumps(col.get('params'), sort_keys=True))}</code>"))
                             for col in columns], numeric=(2, 3)))
    if m.get("artifacts"):
        parts.append("<h3>Artefacts</h3>")
        parts.append(_table(("column", "path", "sha256"), [(a.get("column"), a.get("path"),
                                                             _Raw(f"<code>{_esc(a.get('sha256'))}</code>"))
                                                            for a in m["artifacts"]]))
    if m.get("extractor_files"):
        parts.append("<h3>Files read by extractors</h3>")
        parts.append(_table(("column", "param", "path", "bytes", "sha256"),
                            [(f.get("column"), f.get("param"), f.get("path"), _num(f.get("bytes")),
                              _Raw(f"<code>{_esc(f.get('sha256'))}</code>")) for f in m["extractor_files"]],
                            numeric=(3,)))
    versions = m.get("versions") or {}
    if versions:
        parts.append("<h3>Versions</h3>")
        parts.append(_table(("package", "version"), sorted(versions.items())))
    return "".join(parts)


def _counts(ctx: _Context) -> str:
    counts = ctx.manifest.get("counts") or {}
    order = ("listed", "written_sources", "written_rows", "rejected", "ignored_hidden")
    rows = [(k, _num(counts[k])) for k in order if k in counts]
    rows += [(k, _num(v)) for k, v in sorted(counts.items()) if k not in order]
    if "missing_inputs" in ctx.manifest:
        rows.append(("missing_inputs (deleted since, rows kept)", _num(ctx.manifest["missing_inputs"])))
    listed = counts.get("listed") or 0
    extra = ""
    if listed:
        extra = _note(f"{100 * (counts.get('rejected') or 0) / listed:.2f}% of the listed inputs were rejected.")
    return _table(("count", "value"), rows, numeric=(1,)) + extra


def _classes(ctx: _Context) -> str:
    if ctx.stats is None:
        return _note("No stats.json in this output: class counts are not available.")
    labels = ctx.stats.get("labels") or {}
    unlabelled = ctx.stats.get("unlabelled") or {}
    splits = [s for s in c.SPLITS if s in labels or s in unlabelled]
    names = list(ctx.manifest.get("label_names") or [])
    for split in splits:
        names += [n for n in labels.get(split, {}) if n not in names]
    parts = []
    if names:
        table = np.array([[int(labels.get(s, {}).get(n, 0)) for s in splits] for n in names], dtype=np.int64)
        fig, ax = ctx.plots.figure(9, 3.2)
        if len(names) <= _MAX_NAMED_CLASSES:
            x = np.arange(len(names))
            width = 0.8 / max(1, len(splits))
            for j, split in enumerate(splits):
                ax.bar(x + (j - (len(splits) - 1) / 2) * width, table[:, j], width, label=split)
            ax.set_xticks(x, [_mpl(n, 16) for n in names], rotation=45 if len(names) > 10 else 0, ha="right"
                          if len(names) > 10 else "center")
        else:
            for j, split in enumerate(splits):
                ax.plot(np.sort(table[:, j])[::-1], label=split)
            ax.set_xlabel(f"classes, by written sources ({len(names)} classes)")
        ax.set_ylabel("written sources")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend()
        ax.set_title("written sources per class and split")
        parts.append(ctx.plots.img(fig, "written sources per class and split"))
        rows = [(name, *[_num(v) for v in row], _num(int(row.sum()))) for name, row in zip(names, table)]
        rows.append((_Raw("<em>total</em>"), *[_num(int(v)) for v in table.sum(axis=0)], _num(int(table.sum()))))
        parts.append(_table(("label", *splits, "total"), rows, numeric=tuple(range(1, len(splits) + 2))))
    else:
        parts.append(_note("No labelled source was written."))
    n_unlabelled = sum(int(v) for v in unlabelled.values())
    detail = ", ".join(f"{s} {int(unlabelled.get(s, 0)):,}" for s in splits)
    parts.append(f"<p>Unlabelled sources written: <strong>{n_unlabelled:,}</strong> ({_esc(detail)}).</p>")
    return "".join(parts)


def _rejects(ctx: _Context) -> str:
    by_reason = ctx.manifest.get("rejects_by_reason") or {}
    total = sum(by_reason.values())
    if not total:
        return _note("No input was rejected.")
    import pyarrow.parquet as pq

    examples: dict[str, list[dict[str, Any]]] = {}
    seen: Counter = Counter()
    for info in sorted(ctx.files("rejects"), key=lambda f: (f.get("shard") or 0, f.get("path"))):
        if not info.get("rows"):
            continue
        rows = pq.read_table(ctx.path(info["path"]), columns=["source_key", "stage", "reason", "detail"]).to_pylist()
        for row in rows:
            seen[row["reason"]] += 1
            bucket = examples.setdefault(row["reason"], [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append(row)
    parts = []
    reasons = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(reasons) > 1:
        fig, ax = ctx.plots.figure(9, 0.5 + 0.32 * len(reasons))
        ax.barh([_mpl(r) for r, _ in reasons][::-1], [n for _, n in reasons][::-1], color="#c0504d")
        ax.set_xlabel("rejected inputs")
        ax.xaxis.get_major_locator().set_params(integer=True)
        parts.append(ctx.plots.img(fig, "rejects by reason"))
    parts.append(_table(("reason", "rejected", "share"), [(r, _num(n), f"{100 * n / total:.1f}%")
                                                          for r, n in reasons], numeric=(1, 2)))
    for reason, n in reasons:
        rows = examples.get(reason, [])
        parts.append(f"<h3>{_esc(reason)} <span class=\"muted\">({n:,}; "
                     f"{'first ' + str(len(rows)) + ' shown' if n > len(rows) else 'all shown'})</span></h3>")
        parts.append(_table(("source_key", "stage", "detail"),
                            [(_Raw(f'<span class="mono">{_esc(r["source_key"])}</span>'), r["stage"],
                              _cut(r["detail"])) for r in rows]))
    if sum(seen.values()) != total:
        parts.append(_note(f"The reject files hold {sum(seen.values()):,} rows; the manifest counts {total:,}."))
    return "".join(parts)


def _cut(text: Any) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= MAX_DETAIL else s[: MAX_DETAIL - 1] + "…"


def _hist_labels(edges: Sequence[float], fmt: Callable[[float], str]) -> list[str]:
    """Histogram bins of ``{edges, counts}`` (lower bounds; the last bin is open)."""
    out = [f"{fmt(lo)}–{fmt(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
    return out + [f"≥{fmt(edges[-1])}"]


def _inputs(ctx: _Context) -> str:
    inputs = (ctx.stats or {}).get("inputs")
    parts = []
    if not inputs or "height" not in inputs:
        inputs = _inputs_from_parquet(ctx)
        if inputs is None:
            return _note("Neither stats.json nor the Parquet shards hold the input sizes.")
        parts.append(_note("stats.json lacks the input sizes: computed from orig_height / orig_width of the "
                           "Parquet shards."))
    fig, axes = ctx.plots.figure(10, 2.8, ncols=3)
    for ax, (name, fmt) in zip(axes, (("height", lambda v: f"{v:g}"), ("width", lambda v: f"{v:g}"),
                                      ("aspect", lambda v: f"{v:.2f}"))):
        hist = inputs.get(name)
        if not hist:
            ax.set_axis_off()
            continue
        labels = _hist_labels(hist["edges"], fmt)
        ax.bar(range(len(labels)), hist["counts"], color="#4f81bd")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{name} ({'width / height' if name == 'aspect' else 'pixels'})")
    axes[0].set_ylabel("written sources")
    parts.append(ctx.plots.img(fig, "input height, width and aspect histograms"))
    formats = inputs.get("format") or {}
    count = inputs.get("count")
    parts.append(f"<p>{_num(count)} written sources, by format (sniffed from the content):</p>")
    by_count = sorted(formats.items(), key=lambda kv: (-kv[1], kv[0]))
    parts.append(_table(("format", "sources"), [(k, _num(v)) for k, v in by_count], numeric=(1,)))
    pixels = (ctx.stats or {}).get("pixels") or {}
    if pixels.get("mean") is not None:
        parts.append("<h3>Preprocessed pixels</h3>")
        parts.append(_note(f"Over {pixels.get('count', 0):,} preprocessed train originals (0-255 scale)."))
        parts.append(_table(("channel", "mean", "std"), [(ch, _num(m), _num(s)) for ch, m, s in
                                                          zip("RGB", pixels["mean"], pixels["std"])], numeric=(1, 2)))
    return "".join(parts)


def _inputs_from_parquet(ctx: _Context) -> dict[str, Any] | None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = ctx.files("parquet")
    if not shards:
        return None
    edges = [0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    aspect_edges = [0, 0.5, 0.75, 1, 4 / 3, 2]
    h_counts, w_counts, a_counts = (np.zeros(len(e), np.int64) for e in (edges, edges, aspect_edges))
    formats: Counter = Counter()
    for info in shards:
        table = pq.read_table(ctx.path(info["path"]), columns=["aug_index", "orig_height", "orig_width", "orig_format"])
        table = table.filter(pc.equal(table.column("aug_index"), 0))
        h = table.column("orig_height").to_numpy().astype(np.float64)
        w = table.column("orig_width").to_numpy().astype(np.float64)
        for counts, values, e in ((h_counts, h, edges), (w_counts, w, edges), (a_counts, w / np.maximum(h, 1),
                                                                               aspect_edges)):
            np.add.at(counts, np.searchsorted(e, values, side="right") - 1, 1)
        formats.update(table.column("orig_format").to_pylist())
    return {"count": int(h_counts.sum()), "height": {"edges": edges, "counts": h_counts.tolist()},
            "width": {"edges": edges, "counts": w_counts.tolist()},
            "aspect": {"edges": aspect_edges, "counts": a_counts.tolist()}, "format": dict(formats)}


def _features(ctx: _Context) -> str:
    features = (ctx.stats or {}).get("features")
    if not features:
        return _note("stats.json holds no feature statistics.")
    dims = {col.get("name"): col.get("dim") for col in ctx.manifest.get("columns") or []}
    extractor = {col.get("name"): col.get("extractor") for col in ctx.manifest.get("columns") or []}
    rows, plots = [], []
    for name, st in features.items():
        if st.get("mean") is None:
            rows.append((name, extractor.get(name, ""), _num(dims.get(name)), _num(st.get("count", 0)),
                         "–", "–", "–", "–", "–"))
            continue
        mean, std = np.asarray(st["mean"], float), np.asarray(st["std"], float)
        lo, hi = np.asarray(st["min"], float), np.asarray(st["max"], float)
        rows.append((name, extractor.get(name, ""), _num(len(mean)), _num(st.get("count", 0)),
                     f"{_num(mean.min())} … {_num(mean.max())}", _num(float(np.median(std))), _num(lo.min()),
                     _num(hi.max()), _num(int((std == 0).sum()))))
        fig, ax = ctx.plots.figure(9, 2.4, ncols=1 if len(mean) <= _MAX_LINE_DIMS else 2)
        if len(mean) <= _MAX_LINE_DIMS:
            x = np.arange(len(mean))
            ax.fill_between(x, mean - std, mean + std, alpha=0.3, step="mid", label="mean ± std")
            ax.plot(x, mean, drawstyle="steps-mid", lw=1, label="mean")
            ax.plot(x, lo, ":", lw=0.8, color="gray", drawstyle="steps-mid", label="min / max")
            ax.plot(x, hi, ":", lw=0.8, color="gray", drawstyle="steps-mid")
            ax.set_xlabel("dimension")
            ax.legend(fontsize=7, loc="upper right")
            ax.set_title(f"{_mpl(name)}: per-dimension statistics (D={len(mean)})")
        else:
            ax[0].hist(mean, bins=60, color="#4f81bd")
            ax[0].set_title(f"{_mpl(name)}: per-dimension mean (D={len(mean):,})")
            ax[1].hist(std, bins=60, color="#9bbb59")
            ax[1].set_title("per-dimension std")
            ax[0].set_ylabel("dimensions")
        plots.append(f"<h3>{_esc(name)}</h3>" + ctx.plots.img(fig, f"statistics of feature column {name}"))
    header = ("column", "extractor", "D", "rows", "range of per-dim means", "median std", "min", "max",
              "constant dims")
    intro = _note("Element-wise statistics of the preprocessed train originals (aug_index 0), from stats.json.")
    return intro + _table(header, rows, numeric=(2, 3, 5, 6, 7, 8)) + "".join(plots)


def _throughput(ctx: _Context) -> str:
    metrics = ctx.manifest.get("metrics") or {}
    shards = [s for s in metrics.get("shards") or [] if isinstance(s, dict)]
    parts = []
    summary = [(k, _num(metrics[k])) for k in ("generation", "wall_s", "fresh_shards", "reused_shards", "fresh_rows",
                                                 "rows_per_s") if k in metrics]
    if summary:
        parts.append(_note("The last run's timings (informational). Stage times are summed over a shard's "
                           "records; 'other' is the rest of the shard task (setup, batching, waiting)."))
        parts.append(_table(("metric", "value"), summary, numeric=(1,)))
    timed = [s for s in shards if any(k in s for k in STAGES)]
    if not timed:
        return "".join(parts) or _note("The manifest holds no timings.")
    stages = [k for k in STAGES if any(k in s for s in timed)]
    matrix = np.array([[float(s.get(k, 0.0)) for k in stages] for s in timed])
    other = np.maximum(0.0, np.array([float(s.get("seconds", 0.0)) for s in timed]) - matrix.sum(axis=1))
    matrix = np.column_stack([matrix, other])
    names = [k.removesuffix("_s") for k in stages] + ["other"]
    fig, ax = ctx.plots.figure(9, 0.9 + 0.22 * min(len(timed), _MAX_SHARD_BARS) if len(timed) <= _MAX_SHARD_BARS
                               else 2.6)
    if len(timed) <= _MAX_SHARD_BARS:
        y = np.arange(len(timed))
        left = np.zeros(len(timed))
        for j, stage in enumerate(names):
            ax.barh(y, matrix[:, j], left=left, label=stage)
            left += matrix[:, j]
        ax.set_yticks(y, [f"shard {s.get('shard', i)}" for i, s in enumerate(timed)], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.legend(ncols=len(names), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    else:
        ax.hist(matrix.sum(axis=1), bins=40)
        ax.set_xlabel(f"seconds per shard task ({len(timed)} tasks)")
    parts.append(ctx.plots.img(fig, "seconds per stage and shard"))
    total = matrix.sum(axis=0)
    sources = sum(int(s.get("sources", 0)) for s in timed)
    rows = [(stage, _num(float(t)), f"{100 * t / max(total.sum(), 1e-12):.1f}%",
             _num(sources / t if t > 0 else None)) for stage, t in zip(names, total)]
    rows.append((_Raw("<em>all</em>"), _num(float(total.sum())), "100%",
                 _num(sources / total.sum() if total.sum() > 0 else None)))
    parts.append(_table(("stage", "seconds (all shards)", "share", "sources/s of one worker"), rows,
                        numeric=(1, 2, 3)))
    per_shard = [(s.get("shard", i), _num(s.get("sources")), _num(s.get("written_rows")), _num(s.get("rejected")),
                  _num(s.get("seconds")), s.get("pid", "")) for i, s in enumerate(timed)]
    if len(per_shard) <= _MAX_SHARD_BARS:
        parts.append(_table(("shard", "sources", "rows", "rejected", "seconds", "pid"), per_shard,
                            numeric=(1, 2, 3, 4)))
    return "".join(parts)


def _generations(ctx: _Context) -> str:
    generations = ctx.manifest.get("generations")
    if not generations:
        return _note("One generation: the output was written by a single run (no --incremental run added to it).")
    keys = ["generation", "created_at", "engine", "listed", "written_sources", "written_rows", "rejected"]
    keys += sorted({k for g in generations for k in g} - set(keys))  # pruned, redone_shards (--prune), ...

    def cell(value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _num(value)
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        return "" if value is None else value
    rows = [tuple(cell(g.get(k)) for k in keys) for g in generations]
    numeric = tuple(i for i, k in enumerate(keys) if all(isinstance(g.get(k), (int, float)) for g in generations))
    return _table(keys, rows, numeric=numeric)


def _files(ctx: _Context) -> str:
    by_kind: dict[str, list[int]] = {}
    for info in ctx.manifest.get("files") or []:
        entry = by_kind.setdefault(str(info.get("kind")), [0, 0, 0])
        entry[0] += 1
        entry[1] += int(info.get("rows") or 0)
        entry[2] += int(info.get("bytes") or 0)
    rows = [(kind, _num(n), _num(r), _bytes(b)) for kind, (n, r, b) in sorted(by_kind.items())]
    return _table(("kind", "files", "rows", "bytes"), rows, numeric=(1, 2, 3))


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


# -- sample grid --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, order=True)
class _Candidate:
    rank: str
    source_key: str
    uri: str
    label: int
    label_name: str | None
    split: str
    sha256: str | None


def _rank(seed: int, key: str) -> str:
    # featurelib.preview.preview_order's rank: the report picks the sources `featurize preview` would.
    return hashlib.sha256(f"{seed}:preview:{key}".encode()).hexdigest()


def _candidates(ctx: _Context, seed: int, want: int, augmented_splits: set[str]) -> list[_Candidate]:
    """The best-ranked written originals (at most `want` in augmented splits, `want` in others), rank order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    preferred: list[_Candidate] = []
    others: list[_Candidate] = []
    shards = ctx.files("parquet")
    if shards:
        for info in shards:
            table = pq.read_table(ctx.path(info["path"]), columns=["source_key", "uri", "label", "label_name",
                                                                    "split", "sha256", "aug_index"])
            table = table.filter(pc.equal(table.column("aug_index"), 0))
            for row in table.to_pylist():
                cand = _Candidate(_rank(seed, row["source_key"]), row["source_key"], row["uri"], row["label"],
                                  row["label_name"], row["split"], row["sha256"])
                (preferred if cand.split in augmented_splits else others).append(cand)
            preferred, others = heapq.nsmallest(want, preferred), heapq.nsmallest(want, others)
    else:
        import h5py

        from featurelib.io.hdf5 import check_self_contained

        names = None
        for info in ctx.files("hdf5"):
            with h5py.File(ctx.path(info["path"]), "r") as shard:
                check_self_contained(shard, info["path"])
                if names is None:
                    names = list(shard[c.H5_LABEL_NAMES].asstr()[:]) if c.H5_LABEL_NAMES in shard else []
                keys = shard[c.H5_KEYS].asstr()[:]
                aug = shard[c.H5_AUG_INDEX][:]
                labels = shard[c.H5_LABELS][:]
                splits = shard[c.H5_SPLIT].asstr()[:]
            for key, a, label, split in zip(keys, aug, labels, splits):
                if a != 0:
                    continue
                name = names[label] if 0 <= label < len(names) else None
                cand = _Candidate(_rank(seed, key), key, "", int(label), name, split, None)
                (preferred if split in augmented_splits else others).append(cand)
            preferred, others = heapq.nsmallest(want, preferred), heapq.nsmallest(want, others)
    return sorted(preferred) + sorted(others)


def _samples(ctx: _Context) -> str:
    from featurelib.spec import RunSpec

    n = ctx.n_samples
    if n == 0:
        ctx.samples = "skipped: --samples 0"
        return _note("Left out (--samples 0).")
    spec = getattr(ctx, "user_spec", None)
    if spec is None:
        try:
            spec = RunSpec.from_dict(ctx.manifest.get("spec"))
        except Exception as exc:  # e.g. an extractor of a plugin that is not installed here
            ctx.samples = "skipped: the manifest's spec cannot be read here"
            return _note(f"No sample images: the spec stored in the manifest cannot be read here ({exc}).")
    augmented = set(spec.augment.splits) if spec.augment.copies > 0 else set(c.SPLITS)
    stored = bool(((ctx.manifest.get("spec") or {}).get("output") or {}).get("pixels"))
    want = n if stored else n * _SCAN_FACTOR
    candidates = _candidates(ctx, spec.seed, want, augmented)
    if not candidates:
        ctx.samples = "skipped: no source was written"
        return _note("No sample images: no source was written.")
    if stored:
        rows, how = _stored_rows(ctx, spec, candidates[:n]), "stored pixels"
        text = ("The stored pixels (output.pixels) of a seeded pick of sources (the pick of featurize preview), "
                "each followed by its augmented variants.")
        skipped = Counter()
    else:
        recorded = any(cand.uri for cand in candidates)
        rows, skipped = _redecoded_rows(ctx, spec, candidates, n)
        how = "re-decoded"
        where = ("re-read from their recorded uri" if recorded else
                 "re-read from the spec's input, listed again (an HDF5-only output records no uri, nor the bytes' "
                 "sha256: a file changed since the run would show its new content)")
        text = (f"This run did not store pixels: a seeded pick of sources {where}, and decoded, preprocessed and "
                "augmented with the run's spec by the run's own code (featurelib.preview), each followed by its "
                "variants." + (" Sources whose bytes changed since the run are left out." if recorded else ""))
    if not rows:
        reasons = ", ".join(f"{r} x{k}" for r, k in skipped.most_common()) or "none found"
        ctx.samples = "skipped: the original files cannot be read"
        return _note(f"No sample images: the sources' original files cannot be read any more ({reasons}). "
                     f"Pass --spec with the run's spec if their storage needs credentials.")
    from featurelib.preview import render_grid

    grid, layout_ = render_grid(rows, spec.image.size, spec.augment.copies)
    ctx.samples = how
    note = ""
    if skipped:
        note = _note("Left out: " + ", ".join(f"{k} source(s) {r}" for r, k in skipped.most_common()) + ".")
    listing = _table(("row", "source_key", "label", "split", "tiles"),
                     [(i + 1, _Raw(f'<span class="mono">{_esc(row.record.source_key)}</span>'),
                       row.record.label_name if row.record.label_name is not None else "(unlabelled)", row.split,
                       len(row.variants)) for i, row in enumerate(rows)], numeric=(0, 4))
    return _note(text) + _png_tag(_encode_png(grid), "sample sources and their augmented variants", "plot") + \
        note + listing


def _encode_png(grid: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def _record(cand: _Candidate):
    from featurelib.sources import SourceRecord

    return SourceRecord(cand.source_key, cand.uri, cand.label, cand.label_name, cand.split)


def _stored_rows(ctx: _Context, spec, chosen: Sequence[_Candidate]) -> list:
    """Rows of the grid from the stored pixels of the `chosen` sources (the files of their shards only)."""
    from featurelib.compute import Variant
    from featurelib.preview import PreviewRow
    from featurelib.sources import shard_of

    h, w = spec.image.size
    n_shards = int(ctx.manifest.get("n_shards") or 1)
    wanted = {cand.source_key for cand in chosen}
    shards = {shard_of(key, n_shards) for key in wanted}
    found: dict[str, list] = {key: [] for key in wanted}
    if ctx.files("parquet"):
        import pyarrow.parquet as pq

        for info in ctx.files("parquet"):
            if info.get("shard") not in shards:
                continue
            table = pq.read_table(ctx.path(info["path"]), columns=["key", "source_key", "aug_index", c.PIXELS_COLUMN],
                                  filters=[("source_key", "in", sorted(wanted))])
            if not table.num_rows:
                continue
            pixels = table.column(c.PIXELS_COLUMN).combine_chunks().flatten().to_numpy().reshape(-1, h, w, 3)
            for key, source, aug, image in zip(table.column("key").to_pylist(), table.column("source_key").to_pylist(),
                                               table.column("aug_index").to_pylist(), pixels):
                found[source].append(Variant(int(aug), key, image))
    else:
        import h5py

        from featurelib.io.hdf5 import check_self_contained

        for info in ctx.files("hdf5"):
            if info.get("shard") not in shards:
                continue
            with h5py.File(ctx.path(info["path"]), "r") as shard:
                check_self_contained(shard, info["path"])
                keys = shard[c.H5_KEYS].asstr()[:]
                aug = shard[c.H5_AUG_INDEX][:]
                index = [i for i, (k, a) in enumerate(zip(keys, aug)) if c.source_of(k, int(a)) in wanted]
                if index:
                    images = shard[c.H5_IMAGES][index]
                    for i, image in zip(index, images):
                        found[c.source_of(keys[i], int(aug[i]))].append(Variant(int(aug[i]), keys[i], image))
    rows = []
    for cand in chosen:
        variants = sorted(found[cand.source_key], key=lambda v: v.aug_index)
        if variants:
            rows.append(PreviewRow(_record(cand), cand.split, variants))
    return rows


def _redecoded_rows(ctx: _Context, spec, candidates: Sequence[_Candidate], n: int) -> tuple[list, Counter]:
    """Up to `n` rows re-read from the recorded uris (bytes unchanged since the run), the run's code path."""
    from featurelib.compute import make_variants, preprocess
    from featurelib.preview import PreviewRow
    from featurelib.shard import close_decoder, make_decoder, read_and_decode

    if not any(cand.uri for cand in candidates):
        # An HDF5-only output records no uri: list the spec's input again, as featurize preview does.
        from featurelib.sources import list_inputs

        try:
            listing = list_inputs(spec.input.path, storage_options=spec.input.storage_options, labels=spec.labels,
                                  seed=spec.seed, fractions=spec.split.fractions(), by_content=spec.split.by == "content")
        except Exception as exc:  # the input is gone or unreachable
            return [], Counter({f"not listed now ({type(exc).__name__}: {exc})": len(candidates)})
        uris = {record.source_key: record.uri for record in listing.records if record.reject is None}
        candidates = [dataclasses.replace(cand, uri=uris[cand.source_key]) for cand in candidates
                      if cand.source_key in uris]
        if not candidates:
            return [], Counter({"no longer listed": 1})
    rows, skipped = [], Counter()
    decoder = make_decoder(spec)
    try:
        for cand in candidates:
            if len(rows) >= n:
                break
            outcome = read_and_decode(_record(cand), spec, decoder, Counter())
            if not isinstance(outcome, tuple):  # a RejectRow: gone, unreadable now
                skipped[f"not readable now ({outcome.reason})"] += 1
                continue
            sha, decoded, split = outcome
            if cand.sha256 and sha != cand.sha256:
                skipped["changed since the run"] += 1
                continue
            image = preprocess(spec, decoded.pixels)
            rows.append(PreviewRow(_record(cand), cand.split, make_variants(spec, image, cand.source_key, cand.split)))
    finally:
        close_decoder(decoder)
    return rows, skipped
