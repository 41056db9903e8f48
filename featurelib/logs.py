"""What featurize writes to stderr, as text (the default) or one JSON object per line.

``featurize run --log-format json`` (also ``train`` and ``predict``) is for schedulers
and log collectors (Airflow, Kubernetes): every line featurize itself writes to
stderr becomes one JSON object on one line::

    {"ts": "2026-12-03T10:56:09.123Z", "level": "info", "event": "progress",
     "message": "main: 812/1,797 images (45%), 120.3 images/s, 3 rejected, ETA 8 s",
     "pass": "main", "done": 812, "total": 1797, "rate": 120.3, "eta_s": 8.2, "rejected": 3}

``ts`` (ISO-8601, UTC), ``level`` (``info``, ``warning`` or ``error``), ``event``
(a short machine name, :data:`EVENTS`) and ``message`` (the human text, without
the ``featurize:`` prefix) are always there; the structured fields of the event
follow. Progress is never redrawn in place (no ``\\r``) in JSON. Stdout is the
same in both formats.

The text of a line and its structure travel together as a :class:`LogLine`: a
``str`` (every ``log`` callable of the driver keeps receiving plain text) that
also carries its event, level and fields. :func:`write` writes a line in the
current format (:func:`using`); :func:`format_record` is the pure formatter.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: The formats ``--log-format`` takes.
FORMATS = ("text", "json")
DEFAULT_FORMAT = "text"
LEVELS = ("info", "warning", "error")

#: Every event featurize writes, with what it means.
EVENTS = {
    "log": "any other line of a run (planning, the run's start, the lock, incremental generations)",
    "run_started": "inputs listed and shards planned: listed, shards, engine (resumed: shards_reused)",
    "progress": "a pass is running: pass, done, total, rate (images/s), eta_s (absent when unknown), rejected",
    "pass_finished": "a pass ended: pass, tasks, seconds",
    "first_task": "how long after the run's start its first shard task started: first_task_s",
    "summary": "the run committed: output, engine, counts, rejects_by_reason, shards, seconds, fingerprints",
    "error": "the user's mistake (exit 2)",
    "policy_failure": "failed by policy, the error budget (exit 3)",
    "interrupted": "Ctrl-C, SIGTERM or SIGHUP (exit 130, 143, 129): signal",
    "failed": "anything else (exit 1): exception, traceback",
}

#: Keys every JSON record has; fields of the same name are dropped.
CORE_KEYS = ("ts", "level", "event", "message")

_PREFIX = "featurize: "
_FORMAT = [DEFAULT_FORMAT]


class LogLine(str):
    """A line of text that also carries its event, level and structured fields.

    Being a ``str``, it goes through every ``log(message)`` callable unchanged;
    :func:`write` uses the structure in JSON.

    Parameters
    ----------
    text : str
        The line exactly as the text format writes it.
    event : str
        Short machine name (:data:`EVENTS`).
    level : {"info", "warning", "error"}
    **fields
        JSON-serialisable structured fields.
    """

    event: str
    level: str
    fields: dict[str, Any]

    def __new__(cls, text: str, event: str, level: str = "info", **fields: Any) -> LogLine:
        if level not in LEVELS:
            raise ValueError(f"level {level!r}: expected one of {LEVELS}")
        line = super().__new__(cls, text)
        line.event, line.level, line.fields = event, level, fields
        return line


#: Plain lines of the driver recognised by their text: ``(pattern, event, field converters)``.
_KNOWN = (
    (re.compile(r"^featurize: (?P<listed>\d+) inputs in (?P<shards>\d+) shards on engine (?P<engine>\S+?)"
                r"(?:; resuming, (?P<shards_reused>\d+) shards already complete)?$"),
     "run_started", {"listed": int, "shards": int, "engine": str, "shards_reused": int}),
    (re.compile(r"^featurize: first shard task started (?P<first_task_s>[\d.]+) s after the run did$"),
     "first_task", {"first_task_s": float}),
)


def classify(message: str) -> tuple[str, str, dict[str, Any]]:
    """``(event, level, fields)`` of a line: a :class:`LogLine`'s own, else guessed from its text.

    A plain line is event ``log`` (``featurize: warning: ...`` has level ``warning``),
    unless it is one of the driver's known lines (``run_started``, ``first_task``).
    """
    if isinstance(message, LogLine):
        return message.event, message.level, dict(message.fields)
    for pattern, event, converters in _KNOWN:
        found = pattern.match(message)
        if found:
            fields = {k: converters[k](v) for k, v in found.groupdict().items() if v is not None}
            return event, "info", fields
    rest = message[len(_PREFIX):] if message.startswith(_PREFIX) else message
    level = "warning" if rest.startswith("warning:") else "error" if rest.startswith("error:") else "info"
    return "log", level, {}


def _plain(value: Any) -> Any:
    """`value` as strict JSON: non-finite floats become null, unknown objects their ``str``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)


def iso_utc(when: datetime.datetime) -> str:
    """``2026-12-03T10:56:09.123Z``: `when` in UTC to the millisecond (naive: taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_record(message: str, *, ts: datetime.datetime, event: str | None = None, level: str | None = None,
                  fields: Mapping[str, Any] | None = None) -> str:
    """One JSON line (no newline) for `message`: a pure function of its arguments.

    Parameters
    ----------
    message : str
        The line as text writes it (a :class:`LogLine` brings its own event, level and fields);
        the leading ``featurize: `` is left out of ``message``.
    ts : datetime.datetime
        When it happened (naive: UTC).
    event, level : str, optional
        Override what :func:`classify` finds.
    fields : mapping, optional
        More structured fields (added to the line's own; a key of :data:`CORE_KEYS` is dropped).

    Returns
    -------
    str
        ``{"ts": ..., "level": ..., "event": ..., "message": ..., **fields}`` as strict JSON
        (non-finite numbers are ``null``), on one line.
    """
    found_event, found_level, found_fields = classify(message)
    level = level or found_level
    if level not in LEVELS:
        raise ValueError(f"level {level!r}: expected one of {LEVELS}")
    text = str(message)
    text = text[len(_PREFIX):] if text.startswith(_PREFIX) else text
    record: dict[str, Any] = {"ts": iso_utc(ts), "level": level, "event": event or found_event, "message": text}
    for key, value in {**found_fields, **(fields or {})}.items():
        if key not in CORE_KEYS:
            record[key] = _plain(value)
    return json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def current() -> str:
    """The format lines are written in now (``text`` unless inside :func:`using`)."""
    return _FORMAT[-1]


def is_json() -> bool:
    return current() == "json"


@contextlib.contextmanager
def using(fmt: str | None) -> Iterator[None]:
    """Within the block, :func:`write` (and so the driver's default log and the exit messages) uses `fmt`.

    Raises
    ------
    ValueError
        An unknown format.
    """
    fmt = fmt or DEFAULT_FORMAT
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {FORMATS}")
    _FORMAT.append(fmt)
    try:
        yield
    finally:
        _FORMAT.pop()


def format_from_argv(argv: Sequence[str], flag: str = "--log-format") -> str:
    """The `flag` (``--log-format``; Beam's spelling ``--log_format``) of a command line before it is
    parsed, so that a mistake in the arguments is reported in that format too."""
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv) and argv[index + 1] in FORMATS:
            return argv[index + 1]
        if arg.startswith(flag + "=") and arg.partition("=")[2] in FORMATS:
            return arg.partition("=")[2]
    return DEFAULT_FORMAT


def render(message: str, **overrides: Any) -> str:
    """`message` as the current format writes it (without the newline); `overrides` as in :func:`format_record`."""
    if not is_json():
        return str(message)
    return format_record(message, ts=datetime.datetime.now(datetime.timezone.utc), **overrides)


def write(message: str, **overrides: Any) -> None:
    """Write `message` to stderr in the current format, one line (the text is written as it is)."""
    print(render(message, **overrides), file=sys.stderr, flush=True)


def summary_line(manifest: Mapping[str, Any], root: str, seconds: float | None = None) -> LogLine:
    """The final summary of a committed run as one line with its counts (``event: summary``)."""
    counts = manifest["counts"]
    took = f" in {seconds:.2f} s" if seconds else ""
    text = (f"featurize: done: {counts['written_sources']} of {counts['listed']} inputs written "
            f"({counts['written_rows']} rows), {counts['rejected']} rejected, to {root}{took}")
    fields = {"output": root, "engine": manifest.get("engine"), "counts": dict(counts),
              "rejects_by_reason": dict(manifest.get("rejects_by_reason") or {}),
              "shards": manifest.get("n_shards"), "seconds": round(seconds, 3) if seconds else None,
              "run_fingerprint": manifest.get("run_fingerprint"),
              "feature_fingerprint": manifest.get("feature_fingerprint")}
    generations = manifest.get("generations") or []
    if generations:
        fields["generation"] = generations[-1].get("generation")
    return LogLine(text, "summary", **fields)


def write_summary(manifest: Mapping[str, Any], root: str, seconds: float | None = None) -> None:
    """In JSON, the summary event on stderr (text prints the summary on stdout only: nothing here)."""
    if is_json():
        write(summary_line(manifest, root, seconds))


__all__ = ["LogLine", "format_record", "classify", "write", "render", "using", "current", "is_json",
           "format_from_argv", "summary_line", "write_summary", "FORMATS", "EVENTS"]
