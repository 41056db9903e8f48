"""The deployment files (deploy/docker, deploy/gpu, deploy/k8s, deploy/airflow) against the code they deploy.

No Docker engine, Kubernetes or Airflow scheduler here: the Dockerfiles are parsed and checked against
the tree and setup.py, the image's entrypoint script runs with the real pyspark (and fakes for what
only a pod has), the SparkApplication's arguments go through the Spark job's own parser and its spec
through RunSpec, and the Airflow DAG is loaded by Airflow's DagBag in .venv-airflow (`make
airflow-venv`, never the project's .venv), whose operators then run three nights of the job on real
images, and whose exit-code handling goes through Airflow's own task runner (dag.test()).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
GPU_DOCKERFILE = ROOT / "deploy" / "gpu" / "Dockerfile"
DOCKERFILES = (DOCKERFILE, GPU_DOCKERFILE)
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
SPARK_APP = ROOT / "deploy" / "k8s" / "sparkapplication.yaml"
DAG_FILE = ROOT / "deploy" / "airflow" / "featurelib_nightly.py"
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"


# -- setup.py, read without running it ------------------------------------------------------------

def _setup_literals() -> dict:
    """setup.py's CORE, EXTRAS (with "all" added as setup.py does) and setup()'s version, python_requires."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("CORE", "EXTRAS"):
            found[node.targets[0].id] = ast.literal_eval(node.value)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "setup":
            for kw in node.value.keywords:
                if kw.arg in ("version", "python_requires"):
                    found[kw.arg] = ast.literal_eval(kw.value)
    found["EXTRAS"]["all"] = sorted({r for reqs in found["EXTRAS"].values() for r in reqs})
    return found


SETUP = _setup_literals()


def pinned(package: str) -> str:
    """The exact version setup.py pins `package` to (`name==X` in an extra)."""
    for reqs in SETUP["EXTRAS"].values():
        for req in reqs:
            name, _, version = req.partition("==")
            if name == package and version:
                return version
    raise AssertionError(f"setup.py pins no {package}")


# -- a small Dockerfile parser ---------------------------------------------------------------------

@dataclasses.dataclass
class Instruction:
    keyword: str  # upper case
    args: str     # continuation lines joined, comments inside them dropped
    line: int     # where it starts (1-based)

    def words(self) -> list[str]:
        """Shell-form words, or the elements of the exec (JSON array) form."""
        if self.args.startswith("["):
            return json.loads(self.args)
        return shlex.split(self.args, comments=False)

    def flags_and_operands(self) -> tuple[dict[str, str], list[str]]:
        """``--from=beam src dest`` -> ({"from": "beam"}, ["src", "dest"])."""
        flags, rest = {}, []
        for word in self.words():
            if word.startswith("--") and not rest:
                key, _, value = word[2:].partition("=")
                flags[key] = value
            else:
                rest.append(word)
        return flags, rest


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comment lines skipped (also between continued lines, as Docker
    does), a trailing backslash continues the instruction on the next line."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell-form RUN, split at ``&&``, ``||``, ``;`` and ``|`` (quotes kept)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def substitute(value: str, args: dict[str, str]) -> str:
    """``${NAME}`` / ``$NAME`` replaced by ARG defaults (what a build without --build-arg uses)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


@dataclasses.dataclass
class Stage:
    image: str            # the FROM image, ARGs substituted
    alias: str | None
    instructions: list[Instruction]


def stages(path: pathlib.Path) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the build stages of a Dockerfile."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for ins in parse_dockerfile(path.read_text()):
        if ins.keyword == "FROM":
            words = ins.words()
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append(Stage(substitute(words[0], global_args), alias, []))
        elif not result and ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            global_args[name] = default.strip('"')
        else:
            assert result, f"{path}:{ins.line}: {ins.keyword} before FROM"
            result[-1].instructions.append(ins)
    return global_args, result


def stage_args(stage: Stage, global_args: dict[str, str]) -> dict[str, str]:
    found = dict(global_args)
    for ins in stage.instructions:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            found[name] = default.strip('"') if default else global_args.get(name, "")
    return found


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.instructions:
        if ins.keyword == "ENV":
            for word in ins.words():
                key, _, value = word.partition("=")
                env[key] = value
    return env


def image_paths(stage: Stage) -> list[tuple[str, pathlib.Path]]:
    """(path in the image, source in the repository) of every COPY/ADD from the build context."""
    workdir, out = "/", []
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = os.path.join(workdir, ins.args)
        if ins.keyword in ("COPY", "ADD"):
            flags, operands = ins.flags_and_operands()
            if "from" in flags:
                continue
            *sources, dest = operands
            dest_abs = os.path.normpath(os.path.join(workdir, dest))
            for source in sources:
                target = os.path.join(dest_abs, os.path.basename(source)) if dest.endswith("/") else dest_abs
                out.append((os.path.normpath(target), ROOT / source))
    return out


def source_of(stage: Stage, path_in_image: str) -> pathlib.Path | None:
    """The repository file that ends up at `path_in_image`, or None."""
    for target, source in image_paths(stage):
        if path_in_image == target:
            return source
        if path_in_image.startswith(target + "/") and source.is_dir():
            return source / path_in_image[len(target) + 1:]
    return None


def documented_tag(path: pathlib.Path) -> str:
    """The tag the Dockerfile's header builds it as (``docker build -f <path> -t TAG .``)."""
    rel = path.relative_to(ROOT).as_posix()
    found = re.findall(rf"docker build -f {re.escape(rel)} -t (\S+) \.", path.read_text())
    assert len(found) == 1, f"{rel}: document one 'docker build -f {rel} -t TAG .' line"
    return found[0]


def final(path: pathlib.Path) -> tuple[dict[str, str], Stage]:
    global_args, found = stages(path)
    return global_args, found[-1]


# -- the parser itself -------------------------------------------------------------------------------

def test_the_dockerfile_parser_joins_continuations_and_skips_comments():
    text = ("# syntax=docker/dockerfile:1\nARG V=1\nFROM img:${V} AS base\n\nRUN a \\\n    # inside\n"
            " && b \\\n && c\nCOPY --from=base /x /y\nENTRYPOINT [\"/e.sh\", \"x\"]\n")
    got = parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in got] == [("ARG", 2), ("FROM", 3), ("RUN", 5), ("COPY", 9), ("ENTRYPOINT", 10)]
    assert got[2].args == "a && b && c"
    assert got[3].flags_and_operands() == ({"from": "base"}, ["/x", "/y"])
    assert got[4].words() == ["/e.sh", "x"]
    with pytest.raises(AssertionError):
        parse_dockerfile("RUN a \\\n")


# -- deploy/docker and deploy/gpu ------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copy_source_exists_and_copies_from_a_stage_or_a_pinned_image(path):
    global_args, found = stages(path)
    aliases = {s.alias for s in found if s.alias}
    for stage in found:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            flags, operands = ins.flags_and_operands()
            assert len(operands) >= 2, f"{path.name}:{ins.line}: {ins.args}"
            if "from" in flags:
                source = substitute(flags["from"], stage_args(stage, global_args))
                assert source in aliases or _tag(source), f"{path.name}:{ins.line}: --from={source}"
                continue
            for source in operands[:-1]:
                assert not source.startswith(("/", "..")), f"{path.name}:{ins.line}: {source} is outside the context"
                assert (ROOT / source).exists(), f"{path.name}:{ins.line}: {source} does not exist"


def _tag(image: str) -> str | None:
    """The tag of `image` (``name:tag``, a registry port is not a tag), or None."""
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned_by_tag(path):
    global_args, found = stages(path)
    aliases = set()
    for stage in found:
        if stage.image in aliases:
            continue
        assert "$" not in stage.image, f"{path.name}: FROM {stage.image}: an ARG without a default"
        tag = _tag(stage.image)
        assert tag and tag != "latest", f"{path.name}: FROM {stage.image} is not pinned by a tag"
        if stage.alias:
            aliases.add(stage.alias)


def test_the_images_match_python_beam_and_the_project_version():
    global_args, found = stages(DOCKERFILE)
    python = re.fullmatch(r">=(\d+\.\d+),<.*", SETUP["python_requires"]).group(1)
    beam = [s for s in found if s.image.startswith("apache/beam_python")]
    assert len(beam) == 1 and beam[0].image == f"apache/beam_python{python}_sdk:{pinned('apache-beam')}", \
        "Beam's boot must come from the SDK image of the apache-beam version setup.py pins"
    base = found[-1].image
    assert re.fullmatch(rf"python:{re.escape(python)}(\.\d+)?-slim-\w+", base), base
    # The tag the image is documented as is the project's version; the GPU image builds FROM it.
    tag = documented_tag(DOCKERFILE)
    assert tag == f"featurelib:{SETUP['version']}"
    assert final(GPU_DOCKERFILE)[1].image == tag
    readme = (ROOT / "deploy" / "docker" / "README.md").read_text()
    assert f"-t {tag} ." in readme


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_pip_installs_the_project_with_setup_pys_extras_and_no_second_version_list(path):
    global_args, stage = final(path)
    args = stage_args(stage, global_args)
    base_args, base = final(DOCKERFILE)  # the GPU image inherits the base image's ENV
    env = {k: substitute(v, stage_args(base, base_args)) for k, v in {**env_of(base), **env_of(stage)}.items()}
    project_dirs = {".", "/opt/featurelib"}
    installs = [ins for ins in stage.instructions if ins.keyword == "RUN" and "pip install" in ins.args]
    assert installs, f"{path.name}: no pip install"
    projects = []
    for ins in installs:
        for words in shell_commands(ins.args):
            if words[:2] != ["pip", "install"]:
                continue
            for word in words[2:]:
                if word.startswith("-"):
                    continue
                word = substitute(substitute(word, args), env)
                name, extras = re.fullmatch(r"([^\[]+)(?:\[([^\]]*)\])?(.*)", word).group(1, 2)
                if name in project_dirs:
                    projects.append(extras)
                    assert extras, f"{path.name}:{ins.line}: install the project with its extras, got {word}"
                    unknown = set(extras.split(",")) - set(SETUP["EXTRAS"])
                    assert not unknown, f"{path.name}:{ins.line}: extras {sorted(unknown)} are not in setup.py"
                else:
                    # Only the GPU build of the deep extra's TensorFlow, at the deep extra's version.
                    assert word == f"tensorflow[and-cuda]=={pinned('tensorflow-cpu')}", \
                        f"{path.name}:{ins.line}: {word}: versions come from setup.py"
    assert projects, f"{path.name}: the project itself is never installed"
    if path == DOCKERFILE:
        assert {"spark", "beam"} <= set(projects[0].split(",")), "the image is a Spark and a Beam image"


def test_java_is_the_major_version_the_project_documents():
    documented = set(re.findall(r"Java (\d+)", (ROOT / "README.md").read_text()))
    documented |= set(re.findall(r"Java (\d+)", (ROOT / "setup.py").read_text()))
    assert len(documented) == 1, f"the project documents Java {sorted(documented)}"
    major = documented.pop()
    _, stage = final(DOCKERFILE)
    runs = " ".join(i.args for i in stage.instructions if i.keyword == "RUN")
    assert set(re.findall(r"openjdk-(\d+)-", runs)) == {major}
    assert f"openjdk-{major}-jre-headless" in runs
    assert env_of(stage)["JAVA_HOME"].endswith(f"java-{major}")
    assert f"grep -q '\"{major}\\.'" in runs, "the build checks the Java version it got"


def test_spark_and_beam_settings_of_the_image():
    _, stage = final(DOCKERFILE)
    env = env_of(stage)
    python = re.fullmatch(r">=(\d+\.\d+),<.*", SETUP["python_requires"]).group(1)
    assert env["SPARK_HOME"] == f"/usr/local/lib/python{python}/site-packages/pyspark", "SPARK_HOME is pip's pyspark"
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == "/usr/local/bin/python3"
    assert env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    copies = [i.flags_and_operands() for i in stage.instructions if i.keyword == "COPY"]
    assert ({"from": "beam"}, ["/opt/apache/beam", "/opt/apache/beam"]) in copies
    users = [i.args for i in stage.instructions if i.keyword == "USER"]
    assert users[-1] == "185", "Spark's images run as uid 185"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_entrypoint_script_exists_and_is_executable(path):
    _, stage = final(DOCKERFILE)
    entrypoints = [i for i in final(path)[1].instructions if i.keyword == "ENTRYPOINT"] or \
        [i for i in stage.instructions if i.keyword == "ENTRYPOINT"]  # the GPU image inherits it
    assert entrypoints, f"{path.name}: no ENTRYPOINT"
    words = entrypoints[-1].words()
    assert entrypoints[-1].args.startswith("["), "exec form: signals reach the entrypoint"
    script = source_of(stage, words[0])
    assert script == ENTRYPOINT
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR and os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/bin/bash\n")
    tracked = subprocess.run(["git", "ls-files", "-s", str(script.relative_to(ROOT))], cwd=ROOT,
                             capture_output=True, text=True).stdout
    if tracked:
        assert tracked.startswith("100755"), "git must keep the entrypoint executable"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# -- the entrypoint, run ---------------------------------------------------------------------------

def _fake(bin_dir: pathlib.Path, name: str) -> None:
    """A program that prints its name and arguments, one per line."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f'#!/bin/bash\necho "{name}"\nfor a in "$@"; do echo "$a"; done\n')
    path.chmod(0o755)


def _entrypoint(args, env, cwd=None):
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([str(ENTRYPOINT), *args], env={**base, **env}, capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_entrypoint_roles_build_sparks_and_beams_commands(tmp_path):
    spark_home, java_home, boot = tmp_path / "spark", tmp_path / "java", tmp_path / "beam"
    _fake(spark_home / "bin", "spark-submit")
    _fake(java_home / "bin", "java")
    _fake(boot, "boot")
    env = {"SPARK_HOME": str(spark_home), "JAVA_HOME": str(java_home), "BEAM_BOOT": str(boot / "boot")}

    driver = _entrypoint(["driver", "--properties-file", "/opt/spark/conf/spark.properties", "--class",
                          "org.apache.spark.deploy.PythonRunner", "local:///opt/featurelib/jobs/extract_features.py",
                          "--spec", "/etc/featurelib/nightly.yaml", "--incremental"],
                         {**env, "SPARK_DRIVER_BIND_ADDRESS": "10.0.0.7"})
    assert driver.returncode == 0, driver.stderr
    assert driver.stdout.splitlines() == [
        "spark-submit", "--conf", "spark.driver.bindAddress=10.0.0.7",
        "--conf", "spark.executorEnv.SPARK_DRIVER_POD_IP=10.0.0.7", "--deploy-mode", "client",
        "--properties-file", "/opt/spark/conf/spark.properties", "--class", "org.apache.spark.deploy.PythonRunner",
        "local:///opt/featurelib/jobs/extract_features.py", "--spec", "/etc/featurelib/nightly.yaml", "--incremental"]
    assert _entrypoint(["driver"], env).returncode != 0, "a driver pod without its bind address is an error"

    pod = {"SPARK_EXECUTOR_MEMORY": "2g", "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@drv:7078",
           "SPARK_EXECUTOR_ID": "3", "SPARK_EXECUTOR_CORES": "4", "SPARK_APPLICATION_ID": "spark-123",
           "SPARK_EXECUTOR_POD_IP": "10.0.0.9", "SPARK_RESOURCE_PROFILE_ID": "0", "SPARK_EXECUTOR_POD_NAME": "ex-3",
           "SPARK_JAVA_OPT_1": "-XX:TieredStopAtLevel=1", "SPARK_JAVA_OPT_0": "-Dspark.driver.port=7078",
           "SPARK_JAVA_OPT_10": "-Dlast=1"}
    executor = _entrypoint(["executor"], {**env, **pod}, cwd=tmp_path)
    assert executor.returncode == 0, executor.stderr
    lines = executor.stdout.splitlines()
    assert lines[:7] == ["java", "-Dspark.driver.port=7078", "-XX:TieredStopAtLevel=1", "-Dlast=1",
                         "-Xms2g", "-Xmx2g", "-cp"]
    assert lines[7] == f"{spark_home}/conf:{spark_home}/jars/*:{tmp_path}"
    assert lines[8:] == ["org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend",
                         "--driver-url", pod["SPARK_DRIVER_URL"], "--executor-id", "3", "--cores", "4",
                         "--app-id", "spark-123", "--hostname", "10.0.0.9", "--resourceProfileId", "0",
                         "--podName", "ex-3"]

    beam = _entrypoint(["--id=1-1", "--provision_endpoint=localhost:5000"], env)
    assert beam.returncode == 0 and beam.stdout.splitlines() == ["boot", "--id=1-1", "--provision_endpoint=localhost:5000"]
    passthrough = _entrypoint(["echo", "featurize", "run"], env)
    assert passthrough.stdout == "featurize run\n"
    assert _entrypoint(["sh", "-c", "exit 3"], env).returncode == 3, "exit codes pass through"


def test_entrypoint_driver_runs_the_spark_job_through_pysparks_spark_submit(tmp_path):
    """The driver role with the real spark-submit of the pinned pyspark, as in the image."""
    import pyspark

    env = {"SPARK_HOME": os.path.dirname(pyspark.__file__), "SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1",
           "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    if "JAVA_HOME" in os.environ:
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    done = _entrypoint(["driver", "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                        str(ROOT / "jobs" / "extract_features.py"), "--help"], env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: jobs/extract_features.py" in done.stdout and "--incremental" in done.stdout


# -- deploy/k8s ------------------------------------------------------------------------------------

def _k8s() -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all(SPARK_APP.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert sorted(kinds) == ["ConfigMap", "SparkApplication"] and len(docs) == 2
    return kinds["SparkApplication"], kinds["ConfigMap"]


def _job_arguments(arguments: list[str]) -> argparse.Namespace:
    """`arguments` parsed by jobs/extract_features.py's own parser (built inside main(): stop there)."""
    import jobs.extract_features as job

    class Parsed(Exception):
        pass

    real = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    argparse.ArgumentParser.parse_args = capture
    try:
        job.main(list(arguments))
    except Parsed as done:
        return done.args[0]
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError("jobs/extract_features.py main() parsed no arguments")


def test_the_spark_application_runs_the_job_from_the_image():
    app, config = _k8s()
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert config["metadata"]["namespace"] == app["metadata"]["namespace"]
    spec = app["spec"]
    assert spec["type"] == "Python" and spec["pythonVersion"] == "3" and spec["mode"] == "cluster"
    assert spec["sparkVersion"] == pinned("pyspark")
    tag = documented_tag(DOCKERFILE)
    assert spec["image"] == tag or spec["image"].endswith("/" + tag), spec["image"]
    main_file = spec["mainApplicationFile"]
    assert main_file.startswith("local://"), "the job file is in the image"
    source = source_of(final(DOCKERFILE)[1], main_file.removeprefix("local://"))
    assert source == ROOT / "jobs" / "extract_features.py" and source.is_file()
    assert spec["restartPolicy"]["type"] == "Never"
    for role in ("driver", "executor"):
        assert isinstance(spec[role]["cores"], int) and spec[role]["cores"] >= 1
        assert re.fullmatch(r"\d+[mg]", spec[role]["memory"])
    assert spec["executor"]["instances"] >= 1 and re.fullmatch(r"\d+[mg]", spec["executor"]["memoryOverhead"])
    assert "serviceAccount" in spec["driver"]


def test_the_spark_applications_arguments_are_the_jobs_flags_and_its_spec_is_the_config_map():
    from featurelib.spec import RunSpec

    app, config = _k8s()
    spec = app["spec"]
    args = _job_arguments(spec["arguments"])
    assert args.incremental and not args.resume and not args.overwrite
    # The spec path is a key of the ConfigMap, mounted on the driver.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["driver"]["volumeMounts"]}
    folder, name = os.path.split(args.spec)
    assert folder in mounts, f"{args.spec} is on no volume of the driver"
    assert volumes[mounts[folder]]["configMap"]["name"] == config["metadata"]["name"]
    run_spec = RunSpec.from_yaml_text(config["data"][name])
    run_spec.require_paths()
    # Input and output on the volume every pod mounts; absolute paths (workers anywhere agree).
    data_mounts = [m["mountPath"] for m in spec["executor"]["volumeMounts"]]
    for path in (run_spec.input.path, run_spec.output.path):
        assert os.path.isabs(path) and any(path.startswith(m + "/") for m in data_mounts), path
        assert any(path.startswith(m["mountPath"] + "/") for m in spec["driver"]["volumeMounts"]), path


def test_the_executors_get_the_worker_environment_featurelib_gives_its_workers(monkeypatch):
    from featurelib import worker
    from featurelib.registry import PLUGINS_ENV
    from featurelib.spec import RunSpec

    monkeypatch.delenv(PLUGINS_ENV, raising=False)  # the tests' own extractor plugins: not the cluster's

    app, config = _k8s()
    run_spec = RunSpec.from_yaml_text(next(iter(config["data"].values())))
    expected = worker.environment(worker.WorkerSettings(threads=run_spec.execution.threads_per_worker))
    env = {k.removeprefix("spark.executorEnv."): v for k, v in app["spec"]["sparkConf"].items()
           if k.startswith("spark.executorEnv.")}
    assert env == expected
    assert all(isinstance(v, str) for v in app["spec"]["sparkConf"].values()), "Spark settings are strings"


# -- deploy/airflow --------------------------------------------------------------------------------

def _airflow_venv() -> pathlib.Path:
    """.venv-airflow's Python: `make test` builds it first; run by itself, this builds it the same way."""
    done = subprocess.run(["make", "-s", "airflow-venv"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert AIRFLOW_PYTHON.exists()
    return AIRFLOW_PYTHON


#: Run inside .venv-airflow: load the DAG folder with DagBag, describe the DAG, then run its tasks (the
#: real operators: templates rendered, commands run, exit codes mapped) for each night in argv.
AIRFLOW_SCRIPT = r"""
import json, shutil, sys
from airflow.models import DagBag
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

cfg = json.loads(sys.argv[1])
bag = DagBag(dag_folder=cfg["dags"])
result = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids)}
dag = bag.dags.get(cfg["dag_id"])
if dag is not None:
    result["dag"] = {
        "schedule": str(dag.schedule), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "timetable": type(dag.timetable).__name__, "params": dict(dag.params),
        "tasks": {t.task_id: {"downstream": sorted(t.downstream_task_ids), "retries": t.retries,
                              "operator": type(t).__name__} for t in dag.tasks}}

    class TI:
        def __init__(self):
            self.xcom = {}
        def xcom_pull(self, task_ids):
            return self.xcom[task_ids]

    def run(task, context):
        saved = {f: getattr(task, f) for f in task.template_fields}
        try:
            task.render_template_fields(context)
            command = task.bash_command
            value = task.execute(context)
            return {"state": "success", "value": value, "command": command}
        except AirflowSkipException as exc:
            return {"state": "skipped", "message": str(exc), "command": command}
        except AirflowFailException as exc:
            return {"state": "failed", "message": str(exc), "command": command}
        except AirflowException as exc:
            return {"state": "up_for_retry", "message": str(exc), "command": command}
        finally:
            for field, value in saved.items():
                setattr(task, field, value)

    order = cfg["order"]
    nights = []
    for night in cfg["nights"]:
        for src, dst in night.get("copy", []):
            shutil.copyfile(src, dst)
        ti, states = TI(), {}
        context = {"params": {**dict(dag.params), **night["params"]}, "ti": ti}
        for task_id in order:
            if states and list(states.values())[-1]["state"] != "success":
                states[task_id] = {"state": "not run"}
                continue
            states[task_id] = run(dag.get_task(task_id), context)
            if states[task_id]["state"] == "success":
                ti.xcom[task_id] = states[task_id]["value"]
        nights.append(states)
    result["nights"] = nights
with open(cfg["result"], "w") as handle:
    json.dump(result, handle)
"""


@pytest.mark.timeout(900)
def test_the_airflow_dag_loads_and_its_tasks_run_three_nights(tmp_path, digits_dir):
    """Airflow's DagBag loads the DAG (no import error); its tasks, order and schedule; then its operators
    run the job's commands with featurelib: the first night (a fresh output: --resume), a night with
    nothing new (plan skips the rest), a night with one new image (--incremental, then train and
    report), and a broken spec (validate fails: exit 2, not retried)."""
    python = _airflow_venv()
    order = ["validate", "plan", "extract", "train", "report"]
    images = tmp_path / "images"
    picked = sorted(digits_dir.rglob("*.png"))[::29]
    for path in picked[:60]:
        rel = path.relative_to(digits_dir)
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, images / rel)
    new = picked[60]
    out = tmp_path / "features"
    spec = tmp_path / "nightly.yaml"
    spec.write_text(yaml.safe_dump({
        "spec_version": 1, "input": {"path": str(images)}, "seed": 42, "image": {"size": [32, 32]},
        "features": [{"name": "hog", "params": {"pixels_per_cell": [8, 8], "cells_per_block": [2, 2]}}],
        "output": {"path": str(out), "shards": 2}}))
    broken = tmp_path / "broken.yaml"
    broken.write_text(spec.read_text().replace("name: hog", "name: hogg"))
    params = {"spec": str(spec), "python": sys.executable, "engine": "local", "engine_flags": "--workers 1",
              "features": "hog", "model": "logreg"}
    nights = [{"params": params}, {"params": params},
              {"params": params, "copy": [[str(new), str(images / new.relative_to(digits_dir).parent / "new.png")]]},
              {"params": {**params, "spec": str(broken)}}]
    result_file = tmp_path / "result.json"
    config = {"dags": str(DAG_FILE.parent), "dag_id": "featurelib_nightly", "order": order, "nights": nights,
              "result": str(result_file)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURELIB", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env['PATH']}"  # featurize, as on a worker
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    done = subprocess.run([str(python), "-c", AIRFLOW_SCRIPT, json.dumps(config)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=800)
    assert done.returncode == 0 and result_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(result_file.read_text())

    assert result["import_errors"] == {}
    assert result["dag_ids"] == ["featurelib_nightly"]
    dag = result["dag"]
    assert dag["schedule"] == "@daily" and dag["catchup"] is False and dag["max_active_runs"] == 1
    assert sorted(dag["tasks"]) == sorted(order)
    for first, second in zip(order, order[1:]):
        assert dag["tasks"][first]["downstream"] == [second]
    assert dag["tasks"]["report"]["downstream"] == []
    assert all(t["retries"] >= 1 and t["operator"] == "FeaturelibOperator" for t in dag["tasks"].values())

    first, nothing, incremental, mistake = result["nights"]
    assert {t: s["state"] for t, s in first.items()} == dict.fromkeys(order, "success"), first
    assert json.loads(first["plan"]["value"])["mode"] == "--resume"
    assert " --resume " in first["extract"]["command"]
    assert nothing["validate"]["state"] == "success" and nothing["plan"]["state"] == "skipped"
    assert all(nothing[t]["state"] == "not run" for t in order[2:])

    assert {t: s["state"] for t, s in incremental.items()} == dict.fromkeys(order, "success"), incremental
    assert json.loads(incremental["plan"]["value"]) == {"mode": "--incremental", "output": str(out), "new": 1}
    assert " --incremental " in incremental["extract"]["command"]
    # Two generations: the first night's 60 inputs, the third night's new one (the second added nothing).
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["listed"] == 61
    assert [(g["generation"], g["listed"]) for g in manifest["generations"]] == [(1, 60), (2, 1)]
    assert (out / "models" / "nightly" / "model.json").exists() and (out / "report.html").exists()

    assert mistake["validate"]["state"] == "failed" and "exit 2" in mistake["validate"]["message"]
    assert f"validate {broken}" in mistake["validate"]["command"]
    assert all(mistake[t]["state"] == "not run" for t in order[1:])

    # What ran is featurize's command line, as its own parser reads it.
    from featurelib.cli import _parser

    for task_id in ("validate", "extract", "train", "report"):
        for night in (first, incremental):
            words = shlex.split(night[task_id]["command"])
            args, extra = _parser().parse_known_args(words[words.index("featurize") + 1:])
            assert args.command == {"extract": "run"}.get(task_id, task_id) and extra == (
                ["--workers", "1"] if task_id == "extract" else []), night[task_id]["command"]


#: A DAG of the nightly DAG's operator running `exit N`, for Airflow's own task runner (dag.test()).
EXIT_CODE_DAG = """
import importlib.util
from datetime import datetime, timedelta, timezone
from airflow.sdk import DAG

spec = importlib.util.spec_from_file_location("featurelib_nightly", {dag_file!r})
nightly = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nightly)
with DAG("exit_codes", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False,
         default_args={{"retries": 1, "retry_delay": timedelta(0)}}) as dag:
    for code in {codes!r}:
        nightly.FeaturelibOperator(task_id=f"exit_{{code}}", bash_command=f"exit {{code}}")
"""


@pytest.mark.timeout(600)
def test_airflows_task_runner_retries_by_featurelibs_exit_code(tmp_path):
    """Airflow's task runner (dag.test(), a SQLite database): exit 2 and 3 fail at the first try,
    1, 130 and 143 are retried."""
    python = _airflow_venv()
    dags = tmp_path / "dags"
    dags.mkdir()
    codes = [1, 2, 3, 130, 143]
    (dags / "exit_codes.py").write_text(EXIT_CODE_DAG.format(dag_file=str(DAG_FILE), codes=codes))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURELIB", "PYTHON", "VIRTUAL_ENV"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(dags),
               AIRFLOW__CORE__LOAD_EXAMPLES="False")
    migrate = subprocess.run([str(python), "-m", "airflow", "db", "migrate"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    script = (f"import json\nfrom airflow.models import DagBag\n"
              f"run = DagBag({str(dags)!r}).dags['exit_codes'].test()\n"
              f"print('TRIES=' + json.dumps({{ti.task_id: [ti.state, ti.try_number] for ti in run.get_task_instances()}}))\n")
    done = subprocess.run([str(python), "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    found = [line for line in done.stdout.splitlines() if line.startswith("TRIES=")]
    assert found, done.stdout[-3000:] + done.stderr[-3000:]
    tries = json.loads(found[0].removeprefix("TRIES="))
    assert tries == {"exit_1": ["failed", 2], "exit_2": ["failed", 1], "exit_3": ["failed", 1],
                     "exit_130": ["failed", 2], "exit_143": ["failed", 2]}



def _readme_commands(path: pathlib.Path) -> list[list[str]]:
    """The command lines of a README's code blocks (continuations joined), as words."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def test_the_image_readmes_command_lines_are_what_the_code_accepts():
    """deploy/docker/README.md: the tags built, featurize's, spark-submit's and Beam's command lines."""
    from featurelib.cli import _parser
    from pipelines.extract_features import BeamEngine, _strip_own_flags
    from pipelines.options import unknown_flags

    tag = documented_tag(DOCKERFILE)
    commands = _readme_commands(ROOT / "deploy" / "docker" / "README.md")
    seen = set()
    for words in commands:
        if words[:2] == ["docker", "build"]:
            built = words[words.index("-t") + 1]
            dockerfile = ROOT / words[words.index("-f") + 1]
            assert dockerfile.is_file() and built == documented_tag(dockerfile), words
            for value in (w.split("=", 1)[1] for w in words if w.startswith("EXTRAS=")):
                assert set(value.split(",")) <= set(SETUP["EXTRAS"]) and {"spark", "beam"} <= set(value.split(","))
            seen.add("build")
        elif words[:2] == ["docker", "run"]:
            at = words.index(tag)
            assert words[at + 1] == "featurize", words
            _, extra = _parser().parse_known_args(words[at + 2:])
            assert extra in ([], ["--conf", "spark.ui.enabled=false"]), words
            seen.add("run")
        elif words[0] == "spark-submit":
            image = [w.split("=", 1)[1] for w in words if w.startswith("spark.kubernetes.container.image=")]
            assert image and image[0].endswith("/" + tag)
            main_file = next(w for w in words if w.startswith("local://"))
            assert source_of(final(DOCKERFILE)[1], main_file.removeprefix("local://")).is_file()
            assert _job_arguments(words[words.index(main_file) + 1:]).incremental
            seen.add("spark-submit")
        elif words[:3] == ["python", "-m", "pipelines.extract_features"]:
            beam_argv = _strip_own_flags(words[3:])
            assert unknown_flags(beam_argv) == []
            options = BeamEngine(beam_argv).options.get_all_options()
            assert options["sdk_container_image"].endswith("/" + tag)
            assert options["sdk_location"] == "container" and options["environment_type"] == "DOCKER"
            seen.add("beam")
    assert seen == {"build", "run", "spark-submit", "beam"}
