"""The kernel's extension points: extractor handlers (batched, stateful, per-image adapter),
pre-passes with fitted artefacts, dataset statistics, one worker setup, engines by name,
and failure semantics. Extractors used here live in tests/plugins (FEATURELIB_PLUGINS)."""

from __future__ import annotations

import ast
import collections
import hashlib
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from featurelib import cli, registry, worker
from featurelib.descriptors.color import intensity_histogram
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.errors import SpecError, UserError
from featurelib.io.readers import read_parquet
from featurelib.plan import plan
from featurelib.shard import process_shard
from featurelib.spec import RunSpec
from ledger import assert_ledger
from test_local_engine import digest_tree

pytestmark = pytest.mark.timeout(600)

ROOT = pathlib.Path(__file__).resolve().parents[1]
KINDS = ("parquet", "rejects", "stats", "artifacts")
FLAT = ("5/flat-gray.png", "7/flat-red.png")  # synthetic: a batched extractor raises on flat images

FITTED_FEATURES = [{"name": "color_stats"}, {"name": "fragile_mean"},
                   {"name": "toy_centered", "params": {"sample_images": 24}, "column": "toy"}]


@pytest.fixture(scope="module")
def corpus(digits_dir, tmp_path_factory):
    """96 real digits (10 classes) and two flat images; {source_key} of all of them."""
    from conftest import copy_digits

    root = copy_digits(digits_dir, tmp_path_factory.mktemp("kernel") / "in", step=18, limit=96)
    cv2.imwrite(str(root / FLAT[0]), np.full((32, 32), 128, np.uint8))
    cv2.imwrite(str(root / FLAT[1]), np.dstack([np.zeros((32, 32, 2), np.uint8), np.full((32, 32), 255, np.uint8)]))
    return root, {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


@pytest.fixture(scope="module")
def fitted_spec(tmp_path_factory):
    from conftest import write_spec

    return write_spec(tmp_path_factory.mktemp("spec") / "fitted.yaml", features=FITTED_FEATURES,
                      execution={"batch_size": 8}, failures={"max_reject_fraction": 0.05}, output={"shards": 3})


def run_on(engine, spec_path, inp, out, logs=None, **kwargs):
    spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(inp), output=str(out))
    return execute(spec, engine, log=(logs.append if logs is not None else lambda m: None), **kwargs).manifest


@pytest.fixture(scope="module")
def fitted_run(corpus, fitted_spec, tmp_path_factory):
    """The fitted spec on the local engine (2 workers), with every handler load logged."""
    root, _ = corpus
    from conftest import LOAD_LOG

    out = tmp_path_factory.mktemp("fitted") / "local"
    LOAD_LOG.write_text("")
    manifest = run_on(LocalEngine(2), fitted_spec, root, out)
    return out, manifest, LOAD_LOG.read_text().split("\n")[:-1]


# --- the extractor protocol ----------------------------------------------------------------------


def test_per_image_adapter_and_gray_view_match_the_plain_function(real_images):
    definition = registry.get("intensity_hist")
    assert definition.view == "gray"
    params = definition.normalize_params({"bins": 32})
    images = [cv2.resize(real_images[n], (64, 48)) for n in ("astronaut", "coffee", "chelsea")]
    gray = np.stack([cv2.cvtColor(i, cv2.COLOR_RGB2GRAY) for i in images])
    out = definition.build(params).extract_batch(gray)
    assert out.dtype == np.float32 and out.shape == (3, 32)
    for row, image in zip(out, images):
        np.testing.assert_array_equal(row, intensity_histogram(image, bins=32))


def test_per_image_extractors_give_the_same_values_whatever_the_batch_size(real_images):
    from featurelib.compute import FeatureComputer

    images = [cv2.resize(image, (48, 40), interpolation=cv2.INTER_AREA) for image in real_images.values()] * 3
    outputs = []
    for batch in (1, 4, 64):
        spec = RunSpec.from_dict({"features": [{"name": "color_stats"}, {"name": "intensity_hist", "params": {"bins": 16}},
                                               {"name": "color_hist", "params": {"bins": 4, "color_space": "lab"}}],
                                  "image": {"size": [40, 48]}, "execution": {"batch_size": batch}})
        computer = FeatureComputer(spec)
        assert computer.batch_size == batch
        outputs.append(np.stack([np.concatenate(r) for r in computer.extract(images)]))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_a_spec_with_several_mistakes_lists_them_all():
    with pytest.raises(SpecError) as info:
        RunSpec.from_dict({"features": [{"name": "color_hist", "params": {"bins": 0, "color_space": "xyz"}},
                                        {"name": "intensity_hist", "params": {"bins": 999, "bogus": 1}},
                                        {"name": "hogg"}],
                           "image": {"size": [0, 10]}, "dedup": "maybe"})
    message = str(info.value)
    for expected in ("bins: each bin count must be an integer in [1, 256]", "color_space must be one of",
                     "bins must be an integer in [1, 256], got 999", "unknown parameter(s) ['bogus']",
                     "unknown extractor 'hogg'", "image.size must be >= 1", "dedup must be one of"):
        assert expected in message, message
    assert message.startswith("7 problems in the spec:\n  1. feature 'color_hist'"), message


def test_tasks_and_worker_calls_survive_pickling(corpus, fitted_spec, tmp_path):
    root, _ = corpus
    spec = RunSpec.from_yaml(str(fitted_spec)).with_overrides(input=str(root), output=str(tmp_path / "o"))
    task = plan(spec)[0]
    assert pickle.loads(pickle.dumps(task)) == task
    call = worker.WorkerCall(process_shard, worker.WorkerSettings(threads=2))
    assert pickle.loads(pickle.dumps(call)) == call


def test_batched_handler_retries_image_by_image_and_handlers_load_once_per_process(fitted_run, corpus):
    out, manifest, loads = fitted_run
    root, listed = corpus
    rejected = assert_ledger(out, listed)
    assert rejected == {key: "extract_failed" for key in FLAT}, rejected
    rejects = {r["source_key"]: r for r in pq_rows(out / "rejects")}
    for key in FLAT:
        assert rejects[key]["stage"] == "extract"
        assert rejects[key]["detail"] == "fragile_mean: ValueError: a flat image in the batch"
    # every handler loaded exactly once in each worker process, and a process ran several tasks
    per_pid = collections.Counter(loads)
    assert set(per_pid.values()) == {1} and len({line.split()[0] for line in loads}) == 2, loads
    shards_per_pid = collections.Counter(s["pid"] for s in manifest["metrics"]["shards"])
    assert sum(shards_per_pid.values()) == 3 and len(shards_per_pid) == 2


def pq_rows(folder):
    import pyarrow.parquet as pq

    return [row for p in sorted(folder.glob("*.parquet")) for row in pq.read_table(p).to_pylist()]


# --- passes: a fitted artefact, on every engine -----------------------------------------------------


def test_fitted_artefact_is_listed_hashed_and_in_the_fingerprint(fitted_run, fitted_spec, corpus):
    out, manifest, _ = fitted_run
    artefact = out / "artifacts" / "toy.constant.json"
    digest = hashlib.sha256(artefact.read_bytes()).hexdigest()
    assert manifest["artifacts"] == [{"column": "toy", "what": "constant", "path": "artifacts/toy.constant.json",
                                      "sha256": digest}]
    listed = [f for f in manifest["files"] if f["kind"] == "artifact"]
    assert [(f["path"], f["sha256"]) for f in listed] == [("artifacts/toy.constant.json", digest)]
    spec = RunSpec.from_yaml(str(fitted_spec))
    assert manifest["spec_fingerprints"]["feature"] == spec.feature_fingerprint()
    assert manifest["feature_fingerprint"] == spec.feature_fingerprint({"toy": digest}) != spec.feature_fingerprint()
    # the constant is the mean gray level of the sampled train images: features are centred on it
    constant = json.loads(artefact.read_text())["mean_gray"]
    assert 0 < constant < 255
    data = read_parquet(str(out))
    np.testing.assert_allclose(data["features"]["toy"] + constant,
                               data["features"]["color_stats"][:, [0, 3, 6]], rtol=0, atol=1e-3)
    assert not (out / "_work").exists()


@pytest.mark.parametrize("engine_name", ["beam", "spark"])
def test_fitted_pre_pass_writes_the_same_bytes_on_every_engine(engine_name, fitted_run, fitted_spec, corpus,
                                                               tmp_path, spark):
    root, listed = corpus
    if engine_name == "beam":
        from pipelines.extract_features import BeamEngine

        engine = BeamEngine(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    else:
        from jobs.extract_features import SparkEngine

        engine = SparkEngine(spark)
    manifest = run_on(engine, fitted_spec, root, tmp_path / "o")
    assert_ledger(tmp_path / "o", listed)
    reference, ref_manifest, _ = fitted_run
    assert digest_tree(tmp_path / "o", KINDS) == digest_tree(reference, KINDS)
    assert (tmp_path / "o" / "stats.json").read_bytes() == (reference / "stats.json").read_bytes()
    assert manifest["feature_fingerprint"] == ref_manifest["feature_fingerprint"]
    assert not (tmp_path / "o" / "_work").exists()


def test_a_saved_artefact_is_reused_not_refitted_and_gives_the_same_fingerprint(fitted_run, corpus, spec_file,
                                                                                 tmp_path):
    root, _ = corpus
    reference, ref_manifest, _ = fitted_run
    saved = tmp_path / "my-constant.json"
    shutil.copyfile(reference / "artifacts" / "toy.constant.json", saved)
    features = [dict(f) for f in FITTED_FEATURES]
    features[2] = {"name": "toy_centered", "params": {"sample_images": 24, "constant": str(saved)}, "column": "toy"}
    spec = spec_file(features=features, execution={"batch_size": 8}, failures={"max_reject_fraction": 0.05},
                     output={"shards": 3})
    logs = []
    manifest = run_on(LocalEngine(2), spec, root, tmp_path / "o", logs)
    assert not any("'sample'" in line for line in logs), logs
    assert manifest["feature_fingerprint"] == ref_manifest["feature_fingerprint"]
    # the same bytes as the run that fitted it: the saved file's path is in no shard
    assert digest_tree(tmp_path / "o", KINDS) == digest_tree(reference, KINDS)
    # resuming with another saved artefact would mix features: refused
    other = tmp_path / "other-constant.json"
    other.write_text(json.dumps({"mean_gray": 1.0}))
    features[2]["params"]["constant"] = str(other)
    with pytest.raises(UserError, match="differs from the one this output was written with"):
        run_on(LocalEngine(2), spec_file(features=features, execution={"batch_size": 8},
                                         failures={"max_reject_fraction": 0.05}, output={"shards": 3}),
               root, tmp_path / "o", resume=True)
    # a saved artefact that does not exist: one clear message before any image is read
    features[2]["params"]["constant"] = str(tmp_path / "missing.json")
    code = cli.main(["run", "--spec", str(spec_file(features=features)), "--input", str(root),
                     "--output", str(tmp_path / "p")])
    assert code == 2
    assert not (tmp_path / "p").exists()


def test_resume_after_a_failure_reuses_the_fitted_artefact(fitted_run, fitted_spec, corpus, tmp_path, arm_fault):
    root, listed = corpus
    out = tmp_path / "o"
    arm_fault(out, 1)
    with pytest.raises(RuntimeError, match="injected fault in shard 1"):
        run_on(LocalEngine(2), fitted_spec, root, out)
    artefact = out / "artifacts" / "toy.constant.json"
    before = artefact.stat().st_mtime_ns
    failed = json.loads((out / "_FAILED.json").read_text())
    assert failed["feature_fingerprint"] == fitted_run[1]["feature_fingerprint"]
    logs = []
    manifest = run_on(LocalEngine(2), fitted_spec, root, out, logs, resume=True)
    assert not any("'sample'" in line for line in logs), logs
    assert artefact.stat().st_mtime_ns == before
    assert manifest["metrics"]["reused_shards"] >= 1 and manifest["metrics"]["fresh_shards"] >= 1
    assert_ledger(out, listed)
    assert digest_tree(out, KINDS) == digest_tree(fitted_run[0], KINDS)
    assert (out / "stats.json").read_bytes() == (fitted_run[0] / "stats.json").read_bytes()


# --- dataset statistics ----------------------------------------------------------------------------------


def test_stats_json_matches_numpy_over_the_rows_and_independently_decoded_pixels(fitted_run, corpus):
    out, manifest, _ = fitted_run
    root, _ = corpus
    stats = json.loads((out / "stats.json").read_text())
    assert stats["feature_fingerprint"] == manifest["feature_fingerprint"]
    data = read_parquet(str(out))
    train = [i for i, s in enumerate(data["split"]) if s == "train"]
    assert stats["inputs"]["count"] == manifest["counts"]["written_sources"] == len(data["keys"])
    assert stats["inputs"]["height"]["counts"][1] == len(data["keys"])  # every digit is 32 high: bin [32, 64)
    assert stats["inputs"]["format"] == {"png": len(data["keys"])}
    for split in ("train", "val", "test"):
        names = [data["label_names"][data["labels"][i]] for i, s in enumerate(data["split"]) if s == split]
        assert stats["labels"][split] == dict(sorted(collections.Counter(names).items()))
        assert stats["unlabelled"][split] == 0
    for column, values in data["features"].items():
        rows = values[train].astype(np.float64)
        got = stats["features"][column]
        assert got["count"] == len(train)
        np.testing.assert_allclose(got["mean"], rows.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["std"], rows.std(axis=0), rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(got["min"], rows.min(axis=0))
        np.testing.assert_array_equal(got["max"], rows.max(axis=0))
    # pixels: decoded again here with plain OpenCV (the digits are 32x32: no resize)
    pixels = np.stack([cv2.cvtColor(cv2.imread(str(root / data["keys"][i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                       for i in train]).reshape(-1, 3).astype(np.float64)
    assert stats["pixels"]["count"] == len(train)
    np.testing.assert_allclose(stats["pixels"]["mean"], pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["pixels"]["std"], pixels.std(axis=0), rtol=1e-10)
    assert [f for f in manifest["files"] if f["path"] == "stats.json"]
    assert len([f for f in manifest["files"] if f["kind"] == "stats"]) == 3


# --- one worker module ----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine_name", ["local", "beam-multiprocessing", "spark"])
def test_every_engine_worker_applies_the_run_settings(engine_name, spark, tmp_path, monkeypatch):
    for name in worker.THREAD_VARIABLES:  # prepare_driver changes this process's environment: restore it
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    settings = worker.WorkerSettings(threads=2)
    worker.prepare_driver(settings)
    if engine_name == "local":
        engine = LocalEngine(2)
    elif engine_name == "spark":
        from jobs.extract_features import SparkEngine

        engine = SparkEngine(spark)
    else:
        from pipelines.extract_features import BeamEngine

        engine = BeamEngine(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    reports = engine.map(worker.WorkerCall(worker.applied, settings), list(range(4)), work_dir=str(tmp_path / "w"))
    assert len(reports) == 4
    for report in reports:
        assert report["pid"] != os.getpid()
        assert report["cv2_threads"] == 2
        assert report["settings"] == {"threads": 2}
        for name in worker.THREAD_VARIABLES:
            assert report["env"][name] == "2", (name, report)
        assert report["mallopt"] == {"mmap_threshold": True, "trim_threshold": True}
        assert report["pool_threads"] == [2], report  # BLAS / OpenMP pools as loaded, read back by threadpoolctl


# --- engines by name ------------------------------------------------------------------------------------------


_HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] == {package!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
from featurelib.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("engine,package", [("beam", "apache_beam"), ("spark", "pyspark")])
def test_an_engine_without_its_extra_exits_2_naming_the_install_line(engine, package, corpus, spec_file, tmp_path):
    root, _ = corpus
    argv = ["run", "--engine", engine, "--spec", str(spec_file()), "--input", str(root),
            "--output", str(tmp_path / "o")]
    result = subprocess.run([sys.executable, "-c", _HIDE.format(package=package, argv=argv)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"featurize: error: engine {engine!r} needs its extra ({package} is not installed): "
                     f"pip install 'featurelib[{engine}]'"], result.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_engine_names_the_known_ones(corpus, spec_file, tmp_path, capsys):
    root, _ = corpus
    assert cli.main(["run", "--engine", "flink", "--spec", str(spec_file()), "--input", str(root),
                     "--output", str(tmp_path / "o")]) == 2
    assert "unknown engine 'flink'; known: beam, local, spark" in capsys.readouterr().err


def _imports(folder: pathlib.Path) -> dict[str, set[str]]:
    found = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.relative_to(ROOT).as_posix()] = names
    return found


def test_featurelib_never_imports_the_glue_and_the_glue_never_imports_the_cli():
    for path, names in _imports(ROOT / "featurelib").items():
        assert not {n for n in names if n.split(".")[0] in ("pipelines", "jobs")}, path
    for folder in ("pipelines", "jobs"):
        for path, names in _imports(ROOT / folder).items():
            assert "featurelib.cli" not in names, path


# --- failure semantics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("extractor,error", [
    ("always_fails", "ExtractorBroken: extractor of column 'always_fails' raised ZeroDivisionError on each of "
                     "the first 20 decoded records"),
    ("needs_missing_module", "ModuleNotFoundError: No module named 'featurelib_module_that_does_not_exist'"),
    ("runs_out_of_memory", "MemoryError: simulated: cannot allocate"),
])
def test_a_broken_extractor_fails_the_run_with_exit_1_not_thousands_of_rejects(extractor, error, corpus,
                                                                                 spec_file, tmp_path, capsys):
    root, _ = corpus
    spec = spec_file(features=[{"name": "color_stats"}, {"name": extractor}], output={"shards": 1},
                     failures={"max_reject_fraction": 1.0})
    code = cli.main(["run", "--spec", str(spec), "--input", str(root), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert error in err and "Traceback" in err, err
    assert not (tmp_path / "o" / "_manifest.json").exists()
    assert json.loads((tmp_path / "o" / "_FAILED.json").read_text())["kind"] == "error"
    assert not list((tmp_path / "o").rglob("*.tmp-*"))


def test_a_transform_that_raises_on_one_image_is_a_transform_failed_reject(corpus, spec_file, tmp_path):
    root, listed = corpus
    spec = spec_file(augment={"copies": 1, "splits": ["train", "val", "test"], "ops": [{"op": "fail_on_flat"}]},
                     failures={"max_reject_fraction": 0.05})
    run_on(LocalEngine(2), spec, root, tmp_path / "o")
    rejected = assert_ledger(tmp_path / "o", listed)
    assert rejected == {key: "transform_failed" for key in FLAT}
    rejects = {r["source_key"]: r for r in pq_rows(tmp_path / "o" / "rejects")}
    assert {rejects[k]["stage"] for k in FLAT} == {"augment"}
    assert rejects[FLAT[0]]["detail"] == "ValueError: cannot augment a flat image"


# --- the extension guide, as a user follows it ------------------------------------------------------------


def test_the_extending_guide_example_runs_as_a_plugin(corpus, spec_file, tmp_path):
    """docs/EXTENDING.md's first example, saved as a module and named in FEATURELIB_PLUGINS,
    runs through `featurize run` in a fresh process, with values equal to the function's own."""
    import re

    guide = (ROOT / "docs" / "EXTENDING.md").read_text()
    code = re.search(r"```python\n# my_features.py\n(.*?)```", guide, re.DOTALL).group(1)
    (tmp_path / "my_features.py").write_text(code)
    root, listed = corpus
    spec = spec_file(features=[{"name": "edge_density", "params": {"threshold": 40}}],
                     failures={"max_reject_fraction": 0.05})
    env = {**os.environ, "FEATURELIB_PLUGINS": "my_features",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    featurize = pathlib.Path(sys.executable).parent / "featurize"
    result = subprocess.run([str(featurize), "run", "--spec", str(spec), "--input", str(root), "--output",
                             str(tmp_path / "o"), "--workers", "2"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert_ledger(tmp_path / "o", listed)
    sys.path.insert(0, str(tmp_path))
    try:
        import my_features
    finally:
        sys.path.remove(str(tmp_path))
    data = read_parquet(str(tmp_path / "o"))
    for key, value in list(zip(data["keys"], data["features"]["edge_density"]))[:10]:
        gray = cv2.imread(str(root / key), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(value, my_features.edge_density(gray, threshold=40))
    # a misspelt parameter is one clear message
    bad = spec_file(features=[{"name": "edge_density", "params": {"treshold": 40}}])
    result = subprocess.run([str(featurize), "run", "--spec", str(bad), "--input", str(root), "--output",
                             str(tmp_path / "p")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "feature 'edge_density': unknown parameter(s) ['treshold']; known: ['threshold']" in result.stderr
