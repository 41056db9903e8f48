"""The spec: every mistake caught before any image is read, with a clear message; fingerprints."""

from __future__ import annotations

import pathlib
import pickle

import pytest
import yaml

from featurelib import registry
from featurelib.errors import SpecError
from featurelib.spec import RunSpec

BASE = {"features": [{"name": "color_hist", "params": {"bins": 4}}], "input": {"path": "in"},
        "output": {"path": "out"}}


def spec(**changes) -> RunSpec:
    return RunSpec.from_dict({**BASE, **changes})


@pytest.mark.parametrize("doc,message", [
    ({**BASE, "colour": 1}, r"unknown key\(s\) \['colour'\] in the spec"),
    ({**BASE, "features": [{"name": "sift2"}]}, r"unknown extractor 'sift2'; known: \[.*'color_hist'"),
    ({**BASE, "features": [{"name": "color_hist", "params": {"bins": 0}}]}, r"feature 'color_hist': bins"),
    ({**BASE, "features": [{"name": "color_hist", "params": {"nbins": 3}}]}, r"unknown parameter\(s\) \['nbins'\]"),
    ({**BASE, "features": [{"name": "color_hist", "params": {"color_space": "xyz"}}]}, "color_space must be one of"),
    ({**BASE, "features": [{"name": "color_stats"}, {"name": "color_stats"}]}, r"duplicate feature column\(s\) \['color_stats'\]"),
    ({**BASE, "features": [{"name": "color_stats", "column": "label"}]}, "clash with reserved"),
    ({**BASE, "features": []}, "features must be a non-empty list"),
    ({**BASE, "image": {"size": [0, 32]}}, r"image.size must be >= 1"),
    ({**BASE, "image": {"size": [32]}}, r"image.size must be \[height, width\]"),
    ({**BASE, "image": {"resize": "zoom"}}, "image.resize must be one of"),
    ({**BASE, "split": {"train": 0.5, "val": 0.1, "test": 0.1}}, "split fractions must sum to 1"),
    ({**BASE, "output": {"shards": 2, "rows_per_shard": 10}}, "exclusive"),
    ({**BASE, "output": {"formats": ["csv"]}}, "output.formats"),
    ({**BASE, "augment": {"copies": 2}}, "needs at least one op"),
    ({**BASE, "augment": {"copies": 1, "ops": [{"op": "warp"}]}}, r"augment.ops\[0\]: unknown op 'warp'"),
    ({**BASE, "augment": {"copies": 1, "ops": [{"op": "flip", "p": 2}]}}, r"op 'flip': p must be a number in \[0, 1\], got 2"),
    ({**BASE, "decode": {"isolation": "docker"}}, "decode.isolation must be one of"),
    ({**BASE, "dedup": "fuzzy"}, "dedup must be one of"),
    ({**BASE, "labels": ["a", "a"]}, "labels must be a non-empty list of unique"),
    ({**BASE, "spec_version": 2}, "spec_version 2 is not supported"),
    ({**BASE, "failures": {"max_reject_fraction": 1.5}}, "failures.max_reject_fraction"),
    ({**BASE, "seed": "x"}, "seed must be an integer"),
    ([1, 2], "the spec must be a mapping"),
])
def test_bad_specs_fail_with_one_clear_message(doc, message):
    with pytest.raises(SpecError, match=message):
        RunSpec.from_dict(doc)


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not valid YAML"):
        RunSpec.from_yaml_text("features: [\n")
    with pytest.raises(SpecError, match="cannot read spec"):
        RunSpec.from_yaml(str(tmp_path / "nope.yaml"))


def test_defaults_and_round_trip_through_json():
    s = spec(augment={"copies": 2, "ops": [{"op": "flip"}, {"op": "rotate", "degrees": 5}]})
    assert s.image.size == (224, 224) and s.output.shards == 8 and s.output.formats == ("parquet", "hdf5")
    assert s.augment.ops[0] == {"op": "flip", "horizontal": True, "vertical": False, "p": 0.5}
    again = RunSpec.from_json(s.to_json())
    assert again == s and again.to_json() == s.to_json()
    assert pickle.loads(pickle.dumps(again)) == s
    # YAML round trip too: what the manifest stores can be run again
    assert RunSpec.from_yaml_text(yaml.safe_dump(s.to_dict())) == s


def test_overrides():
    s = spec().with_overrides(input="/data/x", output="/out/y", shards=3)
    assert (s.input.path, s.output.path, s.output.shards) == ("/data/x", "/out/y", 3)
    with pytest.raises(SpecError, match="no input"):
        RunSpec.from_dict({"features": [{"name": "color_stats"}]}).require_paths()


def test_secrets_never_leave_the_spec():
    s = spec(input={"path": "s3://bucket/x", "storage_options": {"secret": "hunter2"}})
    assert "hunter2" in s.to_json()  # workers need it to read
    assert "hunter2" not in s.to_json(secrets=False)
    assert "hunter2" not in s.run_fingerprint() + s.feature_fingerprint()


def test_fingerprints_separate_what_they_should():
    base = spec()
    # feature fingerprint: features, image, decode policy; not paths, seed, layout or split
    assert spec(input={"path": "other"}).feature_fingerprint() == base.feature_fingerprint()
    assert spec(seed=9).feature_fingerprint() == base.feature_fingerprint()
    assert spec(output={"path": "out", "shards": 3}).feature_fingerprint() == base.feature_fingerprint()
    assert spec(image={"size": [64, 64]}).feature_fingerprint() != base.feature_fingerprint()
    assert spec(features=[{"name": "color_hist", "params": {"bins": 5}}]).feature_fingerprint() != base.feature_fingerprint()
    assert spec(features=[{"name": "color_hist", "params": {"bins": 4}, "column": "h"}]).feature_fingerprint() != base.feature_fingerprint()
    # run fingerprint: also input, seed, split, layout; but not the output path
    assert spec(input={"path": "other"}).run_fingerprint() != base.run_fingerprint()
    assert spec(seed=9).run_fingerprint() != base.run_fingerprint()
    assert spec(output={"path": "out", "shards": 3}).run_fingerprint() != base.run_fingerprint()
    assert spec(output={"path": "elsewhere"}).run_fingerprint() == base.run_fingerprint()
    # equal params spelled differently are the same feature
    assert spec(features=[{"name": "color_hist", "params": {"bins": [4, 4, 4]}}]).feature_fingerprint() == base.feature_fingerprint()


BROKEN_ON_PURPOSE = {"always_fails", "needs_missing_module", "runs_out_of_memory"}  # tests/plugins


def test_every_extractor_declares_its_output():
    import cv2
    import numpy as np

    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for name in registry.names(exclude_tags={"deep"}):
        definition = registry.get(name)
        params = definition.normalize_params({})
        if definition.artifact is not None:
            continue  # fitted extractors need their artefact (tests/test_kernel_extensions.py)
        view = image if definition.view == "rgb" else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        try:
            out = definition.build(params).extract_batch(np.stack([view, view]))
        except (ArithmeticError, ImportError, MemoryError, ValueError):
            assert definition.name in BROKEN_ON_PURPOSE
            continue
        assert out.dtype == np.float32
        assert out.shape == (2, definition.output_dim(params, (40, 30)))


def test_every_bad_augmentation_op_is_listed():
    doc = {**BASE, "augment": {"copies": 1, "ops": [{"op": "rotae"}, {"op": "flip"}, {"op": "mask", "shape": "x"}]}}
    with pytest.raises(SpecError) as raised:
        RunSpec.from_dict(doc)
    message = str(raised.value)
    assert "2 problems in the spec" in message
    assert "augment.ops[0]: unknown op 'rotae'; known: flip, rotate" in message
    assert "augment.ops[2]: op 'mask': shape must be one of rect, circle; got 'x'" in message


@pytest.mark.parametrize("path", sorted((pathlib.Path(__file__).resolve().parent.parent / "deploy" / "specs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_spec_parses(path):
    spec = RunSpec.from_yaml(str(path))
    assert spec.features and spec.input.path and spec.output.path
