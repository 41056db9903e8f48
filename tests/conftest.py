"""Shared fixtures: real sample corpora (built once per session) and a spec writer."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # pipelines/ and jobs/ import from the checkout
sys.path.insert(0, str(ROOT / "tests"))

# Workers of every engine must see the same thread limits as the local engine gives them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Test-only extractors (tests/plugins/featurelib_testplugins.py), importable in every worker
# of every engine: set before any worker, pool or Spark session starts.
PLUGINS = ROOT / "tests" / "plugins"
sys.path.insert(0, str(PLUGINS))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)
os.environ["FEATURELIB_PLUGINS"] = "featurelib_testplugins"
# Where test handlers log their loads (tests/plugins): fixed before any worker starts, since
# local workers fork from a server that keeps the environment it started with.
LOAD_LOG = pathlib.Path(os.environ.setdefault("FEATURELIB_TEST_LOAD_LOG", f"/tmp/featurelib-loads-{os.getpid()}.txt"))
atexit.register(LOAD_LOG.unlink, missing_ok=True)

# Fault injection (featurelib.shard.FAULT_ENV): set before any engine starts its workers,
# armed per test by writing the file (see arm_fault).
FAULT_FILE = pathlib.Path(os.environ.setdefault(
    "FEATURELIB_FAULT_FILE", f"/tmp/featurelib-fault-{os.getpid()}.json"))
# Isolated decoder children honour fault payloads (bytes starting FEATURELIB_TEST_FAULT:)
# only with this set; worker pools (forkserver) capture the environment once, so set it now.
os.environ["FEATURELIB_TEST_DECODE_FAULT"] = "1"


@pytest.fixture
def arm_fault(tmp_path):
    """arm_fault(output, shard, kind="error", **extra): that shard's first attempt fails (``error``:
    mid-shard; ``disk_full``: ENOSPC while its files are finished) or stalls (``slow``, ``seconds=``);
    disarmed after the test."""
    import json

    def arm(output, shard, kind="error", **extra):
        FAULT_FILE.write_text(json.dumps({"output": str(output), "shard": shard, "kind": kind, **extra,
                                          "marker": str(tmp_path / f"fault-marker-{shard}")}))
    yield arm
    FAULT_FILE.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> pathlib.Path:
    """All 1,797 digits of scikit-learn as 32x32 PNGs, folder per class."""
    from featurelib.sample_data import make_sample

    root = tmp_path_factory.mktemp("samples") / "digits"
    make_sample("digits", root)
    return root


@pytest.fixture(scope="session")
def mixed_dir(tmp_path_factory, digits_dir) -> tuple[pathlib.Path, dict[str, str | None]]:
    """300 real digits plus the bad and tricky files of :mod:`badfiles` in class folder '0'.

    Returns the root and {relative key: expected reject reason or None}.
    """
    from badfiles import write_bad_files

    root = tmp_path_factory.mktemp("mixed") / "corpus"
    expected: dict[str, str | None] = {}
    files = sorted(p for p in digits_dir.rglob("*.png"))
    for path in files[::6]:  # every 6th digit: 300 files across all classes
        rel = path.relative_to(digits_dir).as_posix()
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / rel)
        expected[rel] = None
    expected.update(write_bad_files(root, label_dir="0"))
    return root, expected


@pytest.fixture(scope="session")
def real_images() -> dict[str, np.ndarray]:
    """Real RGB photographs shipped with scikit-image and scikit-learn, as (H, W, 3) uint8."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    china, flower = load_sample_images().images
    images["china"], images["flower"] = china, flower
    images["camera_rgb"] = np.repeat(data.camera()[:, :, None], 3, axis=2)
    return images


def copy_digits(digits_dir: pathlib.Path, root: pathlib.Path, *, step: int, limit: int) -> pathlib.Path:
    """Copy every `step`-th digit (at most `limit`, keeping the class folders) under `root`."""
    for path in sorted(digits_dir.rglob("*.png"))[::step][:limit]:
        rel = path.relative_to(digits_dir)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / rel)
    return root


def write_spec(path: pathlib.Path, **sections) -> pathlib.Path:
    """Write a YAML spec with small defaults, overridden by `sections`."""
    doc = {
        "spec_version": 1,
        "seed": 42,
        "image": {"size": [32, 32]},
        "features": [
            {"name": "color_stats"},
            {"name": "color_hist", "params": {"bins": 4, "color_space": "hsv"}},
            {"name": "intensity_hist", "params": {"bins": 16}},
        ],
        "output": {"shards": 4},
    }
    doc.update(sections)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def spec_file(tmp_path):
    """Factory: spec_file(**sections) -> path of a written spec."""
    counter = iter(range(1000))
    return lambda **sections: write_spec(tmp_path / f"spec-{next(counter)}.yaml", **sections)


@pytest.fixture(scope="session")
def spark():
    """The one local Spark session of the test run: local[2,3] (2 cores, a task may fail 3 times)."""
    from jobs.session import build_session

    session = build_session("local[2,3]", {"spark.ui.enabled": "false", "spark.task.maxFailures": "3"},
                            app_name="featurelib-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def digits_output(tmp_path_factory, digits_dir) -> pathlib.Path:
    """A committed output of all 1,797 digits (local engine): ``hog`` and ``lbp`` columns, pixels
    stored, Parquet and HDF5 in 4 shards, split 0.6/0.2/0.2 (about 360 test images). Shared by the
    training and reader tests: treat it as read-only (write models and predictions elsewhere or
    into a copy)."""
    from featurelib.cli import main

    root = tmp_path_factory.mktemp("trained")
    spec = write_spec(root / "digits.yaml", image={"size": [32, 32]},
                      features=[{"name": "hog", "params": {"pixels_per_cell": [8, 8], "cells_per_block": [2, 2]}},
                                {"name": "lbp"}],
                      split={"train": 0.6, "val": 0.2, "test": 0.2},
                      output={"shards": 4, "pixels": True, "formats": ["parquet", "hdf5"]})
    out = root / "out"
    code = main(["run", "--spec", str(spec), "--input", str(digits_dir), "--output", str(out), "--workers", "2"])
    assert code == 0, code
    return out
