"""``--log-format json`` (one JSON object per stderr line) and the engines' counters in the manifest's
``metrics.engine_counters`` (issue #12)."""

from __future__ import annotations

import datetime
import json
import math
import sys

import numpy as np
import pytest

from conftest import copy_digits, write_spec
from featurelib import cli, logs, progress
from featurelib.driver import execute
from featurelib.errors import PolicyError, UserError
from featurelib.exits import with_exit_codes
from featurelib.logs import LogLine, format_record
from featurelib.spec import RunSpec

TS = datetime.datetime(2026, 12, 3, 10, 56, 9, 123456, tzinfo=datetime.timezone.utc)
N_SHARDS = 3


# --- (a) the formatter, a pure function ------------------------------------------------------


def test_format_record_of_plain_and_structured_lines():
    assert json.loads(format_record("featurize: pass 'x' ran", ts=TS)) == {
        "ts": "2026-12-03T10:56:09.123Z", "level": "info", "event": "log", "message": "pass 'x' ran"}
    # A known plain line of the driver gets its event and fields from its text.
    started = json.loads(format_record("featurize: 41 inputs in 2 shards on engine local; resuming, 1 shards "
                                       "already complete", ts=TS))
    assert started["event"] == "run_started"
    assert {k: started[k] for k in ("listed", "shards", "engine", "shards_reused")} == {
        "listed": 41, "shards": 2, "engine": "local", "shards_reused": 1}
    warning = json.loads(format_record("featurize: warning: 1 of the spec's labels match no input", ts=TS))
    assert (warning["level"], warning["event"]) == ("warning", "log")
    # A LogLine brings its own event, level and fields; strict JSON on one line, core keys win.
    line = LogLine("featurize: failed: boom\nsecond line", "failed", "error", exit_code=1, rate=math.inf,
                   n=np.int64(3), where=["a", ("b", np.float32(0.5))])
    text = format_record(line, ts=datetime.datetime(2026, 1, 2, 3, 4, 5),  # naive: UTC
                         fields={"message": "not this", "ts": 0})
    assert "\n" not in text and "\r" not in text
    assert json.loads(text) == {"ts": "2026-01-02T03:04:05.000Z", "level": "error", "event": "failed",
                                "message": "failed: boom\nsecond line", "exit_code": 1, "rate": None, "n": 3,
                                "where": ["a", ["b", 0.5]]}
    assert json.loads(format_record("x", ts=TS, event="custom", level="warning", fields={"k": 1}))["k"] == 1
    with pytest.raises(ValueError):
        LogLine("x", "log", "debug")
    with pytest.raises(ValueError), logs.using("xml"):
        pass
    assert logs.format_from_argv(["run", "--log-format", "json"]) == "json"
    assert logs.format_from_argv(["run", "--log-format=json"]) == "json"
    assert logs.format_from_argv(["run", "--log-format", "yaml"]) == "text"


def test_progress_summary_and_text_unchanged():
    line = progress.describe("main", 100, 400, 2, 4.0)
    assert line == "featurize: main: 100/400 images (25%), 25.0 images/s, 2 rejected, ETA 12 s"  # text as before
    record = json.loads(format_record(line, ts=TS))
    assert record == {"ts": "2026-12-03T10:56:09.123Z", "level": "info", "event": "progress",
                      "message": "main: 100/400 images (25%), 25.0 images/s, 2 rejected, ETA 12 s",
                      "pass": "main", "done": 100, "total": 400, "rate": 25.0, "rejected": 2, "eta_s": 12.0}
    assert "eta_s" not in json.loads(format_record(progress.describe("main", 0, 400, 0, 0.0), ts=TS))
    manifest = {"counts": {"listed": 5, "written_sources": 4, "written_rows": 4, "rejected": 1}, "engine": "local",
                "rejects_by_reason": {"unreadable": 1}, "n_shards": 2, "run_fingerprint": "r",
                "feature_fingerprint": "f"}
    summary = json.loads(format_record(logs.summary_line(manifest, "/out", 1.5), ts=TS))
    assert summary["event"] == "summary" and summary["message"].startswith("done: 4 of 5 inputs written")
    assert (summary["counts"], summary["rejects_by_reason"], summary["output"], summary["seconds"]) == (
        manifest["counts"], {"unreadable": 1}, "/out", 1.5)


@pytest.mark.parametrize("error, code, event", [
    (UserError("no such input"), 2, "error"), (PolicyError("too many rejects"), 3, "policy_failure"),
    (KeyboardInterrupt(), 130, "interrupted"), (RuntimeError("a bug"), 1, "failed")])
def test_exit_codes_are_one_json_line_each(error, code, event, capsys):
    def action():
        raise error

    with logs.using("json"):
        assert with_exit_codes(action) == code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err  # a traceback is a field, not lines
    record = json.loads(lines[0])
    assert (record["level"], record["event"], record["exit_code"]) == ("error", event, code)
    assert ("traceback" in record) == (code == 1)
    with logs.using("text"):  # the text format is what it was
        assert with_exit_codes(action) == code
    assert not capsys.readouterr().err.startswith("{")


# --- (b) a real run with --log-format json, and (c) engine counters --------------------------


@pytest.fixture(scope="module")
def corpus(digits_dir, tmp_path_factory):
    """42 inputs: 40 digits, one undecodable file, one byte-identical copy (a ``duplicate``)."""
    root = copy_digits(digits_dir, tmp_path_factory.mktemp("logformat") / "in", step=45, limit=40)
    (root / "0" / "zz-bad.png").write_bytes(b"not an image at all")
    first = sorted((root / "1").glob("*.png"))[0]
    (root / "1" / f"zz-copy-{first.name}").write_bytes(first.read_bytes())
    spec = write_spec(root.parent / "spec.yaml", dedup="content", failures={"max_reject_fraction": 0.2},
                      features=[{"name": "sleepy", "params": {"seconds": 0.02}}], output={"shards": N_SHARDS})
    return root, spec


def assert_counters_agree(manifest, engine_name):
    counters = manifest["metrics"]["engine_counters"]
    counts = manifest["counts"]
    assert counts["rejected"] == 2 and counts["written_rows"] == 40, counts
    main = {k: counters["main"][k] for k in ("tasks", "rows", "rejects")}
    assert main == {"tasks": N_SHARDS, "rows": counts["written_rows"], "rejects": counts["rejected"]}, counters
    assert counters["dedup"]["tasks"] == N_SHARDS and counters["dedup"]["rows"] == 0, counters
    if engine_name == "local":
        assert counters["main"]["retries"] == 0


def test_json_run_writes_only_json_lines_and_counters_match(corpus, tmp_path, capsys, monkeypatch):
    root, spec = corpus
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.1)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # even on a terminal: no redraws in JSON
    out = tmp_path / "out"
    code = cli.main(["run", "--spec", str(spec), "--input", str(root), "--output", str(out), "--log-format", "json",
                     "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "\r" not in captured.err and "\033" not in captured.err
    records = [json.loads(line) for line in captured.err.splitlines()]
    for record in records:
        assert list(record)[:4] == ["ts", "level", "event", "message"], record
        assert record["ts"].endswith("Z") and record["level"] in ("info", "warning", "error")
    events = [r["event"] for r in records]
    assert events[0] == "run_started" and events[-1] == "summary", events
    progress_lines = [r for r in records if r["event"] == "progress"]
    assert progress_lines, events
    assert all({"pass", "done", "total", "rate", "rejected"} <= set(r) for r in progress_lines)
    assert all(r["total"] == 42 for r in progress_lines if r["pass"] == "main")
    finished = [r for r in records if r["event"] == "pass_finished"]
    assert [(r["pass"], r["tasks"]) for r in finished] == [("dedup", N_SHARDS), ("main", N_SHARDS)]
    manifest = json.loads((out / "_manifest.json").read_text())
    summary = records[-1]
    assert summary["counts"] == manifest["counts"] and summary["rejects_by_reason"] == manifest["rejects_by_reason"]
    assert summary["output"] == str(out) and summary["seconds"] > 0
    assert manifest["rejects_by_reason"] == {"duplicate": 1, "unreadable": 1}
    assert captured.out.startswith(f"output           {out}\n")  # stdout: the text summary, as ever
    assert_counters_agree(manifest, "local")

    # A user's mistake: one JSON error line, exit 2.
    code = cli.main(["run", "--spec", str(spec), "--input", str(tmp_path / "missing"), "--output",
                     str(tmp_path / "o2"), "--log-format", "json"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1, err
    record = json.loads(err[0])
    assert (record["level"], record["event"], record["exit_code"]) == ("error", "error", 2)
    assert "missing" in record["message"]


@pytest.mark.parametrize("engine_name", ["beam", "spark"])
def test_beam_and_spark_counters_match_the_manifest(engine_name, corpus, tmp_path, spark):
    from jobs.extract_features import SparkEngine
    from pipelines.extract_features import BeamEngine

    root, spec_path = corpus
    engine = BeamEngine([]) if engine_name == "beam" else SparkEngine(spark)
    spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(root), output=str(tmp_path / "o"))
    manifest = execute(spec, engine, log=lambda m: None).manifest
    assert manifest["engine"] == engine_name
    assert_counters_agree(manifest, engine_name)
