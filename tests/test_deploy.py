"""Shipping the code to a cluster (deploy/beam/README.md, deploy/spark/README.md).

* The Beam command lines of deploy/beam/README.md, read from its code blocks, parse with Beam's
  PipelineOptions and pass featurelib's own checks (unknown flags, unknown runner): the docs
  cannot drift from what the code accepts. Nothing is run.
* ``--setup_file ./setup.py``: the sdist Beam builds installs (``--no-deps``) into a fresh
  virtual environment, where featurelib, jobs and pipelines import (about 10 s).
* The ``--py-files`` zip (``make dist``) is deterministic and holds the same modules.

The spark-submit line itself runs on a real cluster in tests/test_spark_cluster.py.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys
import time
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEAM_README = ROOT / "deploy" / "beam" / "README.md"
SPARK_README = ROOT / "deploy" / "spark" / "README.md"
ENTRY = ("python", "-m", "pipelines.extract_features")


def code_blocks(path: pathlib.Path) -> list[str]:
    """The fenced code blocks of a Markdown file, continuation lines joined."""
    blocks = re.findall(r"(?ms)^```[a-z]*\n(.*?)^```", path.read_text())
    return [re.sub(r"\\\n\s*", " ", block) for block in blocks]


def beam_commands() -> dict[str, list[str]]:
    """{runner: argv after ``python -m pipelines.extract_features``} of the README's command lines."""
    commands = {}
    for block in code_blocks(BEAM_README):
        argv = shlex.split(block, comments=True)
        if tuple(argv[:3]) == ENTRY:
            runner = argv[argv.index("--runner") + 1]
            assert runner not in commands, f"two command lines for {runner}"
            commands[runner] = argv[3:]
    return commands


def test_the_beam_readme_has_a_command_line_per_runner():
    assert sorted(beam_commands()) == ["DataflowRunner", "FlinkRunner", "SparkRunner"]


@pytest.mark.parametrize("runner", ["DataflowRunner", "FlinkRunner", "SparkRunner"])
def test_each_beam_command_line_parses_as_featurelib_and_beam_read_it(runner):
    from apache_beam.options.pipeline_options import (FlinkRunnerOptions, GoogleCloudOptions, PipelineOptions,
                                                      PortableOptions, SetupOptions, SparkRunnerOptions,
                                                      StandardOptions, WorkerOptions)

    from featurelib.spec import RunSpec
    from pipelines.extract_features import BeamEngine, _strip_own_flags
    from pipelines.options import FeaturizeOptions, unknown_flags

    argv = beam_commands()[runner]
    ours = PipelineOptions(argv).view_as(FeaturizeOptions)
    RunSpec.from_yaml(str(ROOT / ours.spec))  # the spec the line names exists and is valid
    assert ours.input and ours.output and pathlib.PurePosixPath(ours.output).is_absolute()
    beam_argv = _strip_own_flags(argv)
    assert unknown_flags(beam_argv) == []
    # What `python -m pipelines.extract_features` does before running: every flag known, the runner known.
    options = BeamEngine(beam_argv).options
    assert options.view_as(StandardOptions).runner == runner
    if runner == "DataflowRunner":
        cloud = options.view_as(GoogleCloudOptions)
        assert (cloud.project, cloud.region, cloud.temp_location) == ("my-project", "europe-west1",
                                                                       "gs://my-bucket/beam-tmp")
        setup_file = options.view_as(SetupOptions).setup_file
        assert setup_file == "./setup.py" and (ROOT / setup_file).is_file()
        assert options.view_as(WorkerOptions).machine_type == "n2-standard-4"
    else:
        assert options.view_as(PortableOptions).environment_type == "DOCKER"
        assert options.view_as(WorkerOptions).sdk_container_image
    if runner == "FlinkRunner":
        assert options.view_as(FlinkRunnerOptions).flink_master == "flink-jobmanager:8081"
        assert options.view_as(FlinkRunnerOptions).parallelism == 16
    if runner == "SparkRunner":
        assert options.view_as(SparkRunnerOptions).spark_master_url == "spark://spark-master:7077"


def test_the_py_files_zip_is_deterministic_and_holds_every_module(tmp_path):
    from deploy.spark.build_dist import build, code_files

    first, second = tmp_path / "a" / "code.zip", tmp_path / "b" / "code.zip"
    assert build(first) == build(second) and first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == code_files()
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}
    done = subprocess.run([sys.executable, str(ROOT / "deploy" / "spark" / "build_dist.py"), "--output",
                           str(tmp_path / "c.zip")], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [build(first), str(tmp_path / "c.zip")]


@pytest.mark.timeout(120)
def test_the_sdist_beam_builds_for_setup_file_installs_into_a_fresh_venv(tmp_path):
    """About 10 s: Beam's own sdist step for --setup_file (its Stager), a wheel of that sdist, installed
    with --no-deps into a venv that has nothing else: the three packages import, with the modules of
    the --py-files zip, and the console script and engine entry points are there."""
    from apache_beam.runners.portability.stager import Stager

    from deploy.spark.build_dist import code_files

    t0 = time.monotonic()
    sdist = pathlib.Path(Stager._build_setup_package(str(ROOT / "setup.py"), str(tmp_path / "sdist")))
    assert sdist.name == "featurelib-0.1.0.tar.gz"
    # What a worker's pip does with the staged sdist, offline: build the wheel, install it.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(sdist)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("featurelib-0.1.0-*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    code = ("import importlib.metadata as m, pathlib, featurelib, jobs, pipelines\n"
            "site = pathlib.Path(featurelib.__file__).parents[1]\n"
            "print(site)\n"
            "print(sorted(e.name for e in m.entry_points(group='featurelib.engines')))\n"
            "for p in ('featurelib', 'jobs', 'pipelines'):\n"
            "    for f in sorted((site / p).rglob('*.py')):\n"
            "        print(f.relative_to(site).as_posix())\n")
    done = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    site, engines, *modules = done.stdout.splitlines()
    assert pathlib.Path(site).is_relative_to(venv) and engines == "['beam', 'spark']"
    assert modules == code_files()  # the same modules as the Spark --py-files zip
    assert (venv / "bin" / "featurize").is_file()
    print(f"sdist -> wheel -> fresh venv: {time.monotonic() - t0:.1f} s")


def test_the_spark_submit_line_of_the_spark_readme_matches_the_code():
    """deploy/spark/README.md's spark-submit line ships make dist's zip, keeps the session's JIT flag in the
    JVM options it replaces, passes the log4j2 file that exists; its table of executor variables is
    exactly what featurelib.worker.environment() sets. (The line's settings run on a real cluster in
    tests/test_spark_cluster.py.)"""
    from featurelib import worker
    from featurelib.deep.quiet import VERBOSE_ENV
    from featurelib.registry import PLUGINS_ENV
    from jobs.session import DEFAULTS

    (block,) = [b for b in code_blocks(SPARK_README) if b.startswith("spark-submit")]
    argv = shlex.split(block)
    conf, options, index = {}, {}, 1
    while argv[index].startswith("--"):
        flag, value = argv[index], argv[index + 1]
        if flag == "--conf":
            key, value = value.split("=", 1)
            conf[key] = value
        else:
            options[flag] = value
        index += 2
    job, *job_args = argv[index:]
    assert job == "jobs/extract_features.py" and (ROOT / job).is_file()
    assert (ROOT / job_args[job_args.index("--spec") + 1]).is_file()
    assert options["--py-files"] == "dist/featurelib-code.zip"
    assert "--output dist/featurelib-code.zip" in (ROOT / "Makefile").read_text()
    assert conf["spark.python.worker.reuse"] == DEFAULTS["spark.python.worker.reuse"]
    for jvm in (conf["spark.executor.extraJavaOptions"], options["--driver-java-options"]):
        assert DEFAULTS["spark.executor.extraJavaOptions"] in jvm.split() and "-Dlog4j2.configurationFile=" in jvm
    driver_log4j = options["--driver-java-options"].split("-Dlog4j2.configurationFile=")[1].split()[0]
    assert (ROOT / driver_log4j).is_file() and driver_log4j == "deploy/spark/log4j2.properties"

    table = [line for line in SPARK_README.read_text().splitlines() if line.startswith("| `")]
    documented = {name for line in table for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])}
    assert documented == set(worker.THREAD_VARIABLES) | set(worker.MALLOC_ENV) | {PLUGINS_ENV, VERBOSE_ENV}
    for name, value in worker.MALLOC_ENV.items():
        assert any(f"`{name}`" in line and f"`{value}`" in line for line in table), name
    for key, value in DEFAULTS.items():
        if key in ("spark.task.maxFailures", "spark.locality.wait"):
            assert f"`{key}={value}`" in SPARK_README.read_text()
