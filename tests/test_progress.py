"""One progress line per pass on every engine, from the reports the workers write (issue: what a user sees)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import copy_digits, write_spec
from featurelib import progress
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.spec import RunSpec

LINE = re.compile(r"^featurize: main: ([\d,]+)/([\d,]+) images \(\d+%\), [\d.]+ images/s(, [\d,]+ rejected)?"
                  r"(, ETA \d+ s)?$")


def test_describe_and_read_reports(tmp_path):
    assert progress.read_reports(str(tmp_path / "none")) == (0, 0)
    (tmp_path / "task-00000.json").write_text(json.dumps({"done": 40, "rejected": 2, "final": False}))
    (tmp_path / "task-00001.json").write_text(json.dumps({"done": 60, "rejected": 0, "final": True}))
    (tmp_path / "task-00002.json.tmp-9").write_text("{")  # being written: ignored
    (tmp_path / "task-00003.json").write_text("{")  # cut short: ignored, read at the next poll
    assert progress.read_reports(str(tmp_path)) == (100, 2)
    assert progress.describe("main", 100, 400, 2, 4.0) == \
        "featurize: main: 100/400 images (25%), 25.0 images/s, 2 rejected, ETA 12 s"
    assert progress.describe("main", 0, 400, 0, 0.0) == "featurize: main: 0/400 images (0%), 0.0 images/s"


@pytest.mark.parametrize("engine_name", ["local", "beam", "spark"])
def test_every_engine_reports_progress_while_the_pass_runs(engine_name, digits_dir, tmp_path, monkeypatch, spark):
    from jobs.extract_features import SparkEngine
    from pipelines.extract_features import BeamEngine

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.3)
    corpus = copy_digits(digits_dir, tmp_path / "in", step=30, limit=60)
    spec = RunSpec.from_yaml(str(write_spec(tmp_path / "s.yaml", features=[{"name": "sleepy", "params": {
        "seconds": 0.03}}], output={"shards": 4}))).with_overrides(input=str(corpus), output=str(tmp_path / "o"))
    engine = {"local": lambda: LocalEngine(2), "beam": lambda: BeamEngine([]),
              "spark": lambda: SparkEngine(spark)}[engine_name]()
    logged: list[str] = []
    execute(spec, engine, log=logged.append)
    lines = [line for line in logged if line.startswith("featurize: main: ")]
    assert lines, logged
    for line in lines:
        assert LINE.match(line), line
    done = [int(LINE.match(line).group(1).replace(",", "")) for line in lines]
    assert done == sorted(done) and all(int(LINE.match(line).group(2)) == 60 for line in lines)
    assert any(d > 0 for d in done), lines  # workers' reports reached the driver mid-pass
    assert not (tmp_path / "o" / "_work").exists()  # the reports go with the scratch folder
