"""TensorFlow's start-up lines (``absl::InitializeLog``, ``oneDNN``, ``cpu_feature_guard``, ``I0000 ...``)
stay off stderr under ``featurize run`` unless ``--verbose``, and an import failure still says why
(:mod:`featurelib.deep.quiet`).

The mechanism is checked with stand-in ``tensorflow`` / ``keras`` packages that write to file descriptor 2
as TensorFlow's C++ code does (fast); ``featurize run`` with a real ``cnn`` extractor runs twice, with one
worker (TensorFlow's import costs about 5 s per process).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

import deep_weights
from conftest import copy_digits

ROOT = pathlib.Path(__file__).resolve().parents[1]
FEATURIZE = str(pathlib.Path(sys.executable).parent / "featurize")

pytestmark = pytest.mark.timeout(600)

#: What TensorFlow 2.21 prints at import in every process (and on CUDA machines, E0000 lines).
NOISE = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "I0000", "W0000", "E0000")
#: absl's line prefix: severity, MMDD, time.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:")


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(word in line for word in NOISE) or ABSL_LINE.match(line)]


def clean_env(*path: pathlib.Path, **extra: str) -> dict[str, str]:
    """This environment less what would change TensorFlow's logging or featurelib's verbosity; `path`
    first on its PYTHONPATH (the tests' extractor plugins stay on it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FEATURELIB_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    if path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, path), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **extra}


# --- the mechanism, with stand-ins for TensorFlow and Keras ----------------------------------------

FAKE_TENSORFLOW = """\
import logging, os, sys
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\\n")
sys.stderr.write("python-side text during the import\\n")  # buffered: flushed into the capture
if os.environ.get("FAKE_TF_FAIL"):
    os.write(2, b"E0000 00:00:1.0 1 cuda_dnn.cc:1] the real reason: libcudnn.so.9 cannot be loaded\\n")
    raise ImportError("fake TensorFlow: cannot load its native library")
LEVEL_AT_IMPORT = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
def get_logger():
    return logging.getLogger("tensorflow")
"""

FAKE_KERAS = """\
import os
import tensorflow
os.write(2, b"W0000 00:00:1.0 1 keras.cc:1] keras noise\\n")
"""

PROBE = """\
import logging, os, sys
from featurelib.deep import quiet
try:
    tf = quiet.quiet_import_tensorflow()
except ImportError as exc:
    print("NOTES:", "".join(getattr(exc, "__notes__", [])))
    print("CAPTURED:", quiet.captured)
    sys.exit(3)
assert quiet.quiet_import_tensorflow() is tf  # once per process
os.write(2, b"stderr is back\\n")
print("LEVEL:", tf.LEVEL_AT_IMPORT, logging.getLogger("tensorflow").getEffectiveLevel())
import glob, tempfile
print("LEFT:", glob.glob(os.path.join(tempfile.gettempdir(), f"featurelib-tensorflow-import-{os.getpid()}-*")))
print("CAPTURED:", quiet.captured)
"""


@pytest.fixture
def fake_tf(tmp_path) -> pathlib.Path:
    for name, text in (("tensorflow", FAKE_TENSORFLOW), ("keras", FAKE_KERAS)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(text)
    return tmp_path


def probe(fake: pathlib.Path, **extra: str) -> subprocess.CompletedProcess:
    env = clean_env(fake, ROOT, **extra)
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60,
                          cwd=ROOT)


def test_the_import_writes_nothing_on_fd2_keeps_it_and_restores_stderr(fake_tf):
    done = probe(fake_tf)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "stderr is back\n"  # the C++-style lines and Python's buffered text: all captured
    assert "LEVEL: 3 40" in done.stdout  # TF_CPP_MIN_LOG_LEVEL=3 before the import; tf.get_logger(): errors only
    for text in ("absl::InitializeLog", "oneDNN custom operations", "python-side text", "keras noise"):
        assert text in done.stdout  # quiet.captured
    assert "LEFT: []" in done.stdout  # the temporary file is removed

    kept = probe(fake_tf, TF_CPP_MIN_LOG_LEVEL="1")  # a level the user chose is kept
    assert "LEVEL: 1 " in kept.stdout


def test_verbose_lets_tensorflow_print(fake_tf):
    done = probe(fake_tf, FEATURELIB_VERBOSE="1")
    assert done.returncode == 0, done.stderr
    assert "absl::InitializeLog" in done.stderr and "oneDNN" in done.stderr and "keras noise" in done.stderr
    assert "LEVEL: None" in done.stdout


def test_a_failed_import_carries_what_tensorflow_printed(fake_tf):
    done = probe(fake_tf, FAKE_TF_FAIL="1")
    assert done.returncode == 3, done.stderr
    assert done.stderr == ""
    notes = done.stdout.split("CAPTURED:")[0]
    assert "the real reason: libcudnn.so.9 cannot be loaded" in notes and "--verbose" in notes


def test_the_workers_get_featurelib_verbose_from_the_driver(monkeypatch):
    from featurelib import worker

    monkeypatch.delenv("FEATURELIB_VERBOSE", raising=False)
    assert "FEATURELIB_VERBOSE" not in worker.environment(worker.WorkerSettings())
    monkeypatch.setenv("FEATURELIB_VERBOSE", "1")
    assert worker.environment(worker.WorkerSettings())["FEATURELIB_VERBOSE"] == "1"


# --- featurize run with a real cnn extractor ----------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_run(digits_dir, tmp_path_factory):
    """Eight digits, random MobileNetV2 weights (32x32: its minimum), a ``cnn`` spec; a run's argv."""
    base = tmp_path_factory.mktemp("deep-quiet")
    root = copy_digits(digits_dir, base / "in", step=200, limit=8)
    weights = deep_weights.save_keras3(deep_weights.random_model("MobileNetV2", (32, 32), seed=3),
                                       base / "m.weights.h5")
    spec = base / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "spec_version": 1, "seed": 1, "image": {"size": [32, 32]},
        "features": [{"name": "cnn", "params": {"model": "mobilenet_v2", "weights": str(weights)}, "column": "m"}],
        "output": {"shards": 2}}))
    return [FEATURIZE, "run", "--spec", str(spec), "--input", str(root), "--output", str(base / "out"),
            "--overwrite", "--workers", "1"]


def test_featurize_run_prints_no_tensorflow_lines_unless_verbose(cnn_run):
    quiet = subprocess.run(cnn_run, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "written sources  8" in quiet.stdout
    assert not noise(quiet.stderr), quiet.stderr[-3000:]
    assert all(line.startswith("featurize: ") for line in quiet.stderr.splitlines()), quiet.stderr[-3000:]

    verbose = subprocess.run([*cnn_run, "--verbose"], capture_output=True, text=True, env=clean_env(), timeout=300)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "absl::InitializeLog" in verbose.stderr and "oneDNN" in verbose.stderr, verbose.stderr[-3000:]


def test_featurize_run_shows_why_tensorflow_failed_to_import(cnn_run, fake_tf):
    """A worker whose TensorFlow import fails: exit 1, and its captured stderr is in the traceback."""
    done = subprocess.run(cnn_run, capture_output=True, text=True, timeout=120,
                          env=clean_env(fake_tf, FAKE_TF_FAIL="1"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "the real reason: libcudnn.so.9 cannot be loaded" in done.stderr
    assert "featurize: failed: ImportError: fake TensorFlow: cannot load its native library" in done.stderr
