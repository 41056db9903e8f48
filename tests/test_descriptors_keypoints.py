"""keypoints_bovw: descriptors, encoding against brute force, the vocabulary pre-pass on two engines,
reuse of a saved vocabulary, and classification of the photos sample."""

from __future__ import annotations

import hashlib
import io
import json

import cv2
import numpy as np
import pytest

from featurelib import registry
from featurelib.descriptors.keypoints import encode, local_descriptors, nearest_words, npz_bytes
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.spec import RunSpec
from ledger import assert_ledger
from test_local_engine import digest_tree

pytestmark = pytest.mark.timeout(600)

KINDS = ("parquet", "rejects", "stats", "artifacts")


@pytest.fixture(scope="module")
def gray(real_images):
    return cv2.cvtColor(cv2.resize(real_images["astronaut"], (256, 256), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)


def test_rootsift_is_the_square_root_of_l1_normalised_sift(gray):
    sift = local_descriptors(gray, descriptor="sift", max_keypoints=200)
    root = local_descriptors(gray, descriptor="rootsift", max_keypoints=200)
    assert sift.shape == root.shape == (200, 128)
    np.testing.assert_allclose(root, np.sqrt(sift / (sift.sum(axis=1, keepdims=True) + 1e-7)), rtol=1e-6)
    np.testing.assert_allclose((root**2).sum(axis=1), 1.0, atol=1e-5)  # Hellinger: unit L2 norm


@pytest.mark.parametrize("descriptor,bits", [("orb", 256), ("brisk", 512), ("akaze", 488)])
def test_binary_descriptors_are_unpacked_bits_of_the_strongest_keypoints(gray, descriptor, bits):
    values = local_descriptors(gray, descriptor=descriptor, max_keypoints=100)
    assert values.shape[1] == bits and 0 < len(values) <= 100
    assert set(np.unique(values)) <= {0.0, 1.0}
    assert local_descriptors(gray, descriptor=descriptor, max_keypoints=100).tobytes() == values.tobytes()


def test_encoding_equals_brute_force_and_degenerate_images_give_zeros(gray):
    from scipy.spatial.distance import cdist

    values = local_descriptors(gray, descriptor="sift", max_keypoints=300)
    centers = values[::10][:24].copy()
    np.testing.assert_array_equal(nearest_words(values, centers), cdist(values, centers).argmin(axis=1))
    counts = np.bincount(cdist(values, centers).argmin(axis=1), minlength=24).astype(np.float64)
    np.testing.assert_allclose(encode(values, centers, None, "l1"), counts / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(encode(values, centers, None, "l2"), counts / np.linalg.norm(counts), rtol=1e-6)
    idf = np.linspace(1, 3, 24)
    np.testing.assert_allclose(encode(values, centers, idf, "l1"), counts * idf / (counts * idf).sum(), rtol=1e-6)
    flat = np.full((64, 64), 128, np.uint8)
    assert local_descriptors(flat).shape == (0, 128)
    assert not encode(local_descriptors(flat), centers, idf, "l2").any()
    # the handler: a flat image in a batch is a zero row, not a failure
    handler = registry.get("keypoints_bovw").handler()
    handler.load({**registry.get("keypoints_bovw").defaults, "vocabulary_size": 24},
                 {"vocab": npz_bytes({"centers": centers, "idf": idf.astype(np.float32)})})
    out = handler.extract_batch(np.stack([gray[:64, :64], flat]))
    assert out.shape == (2, 24) and out[0].sum() == pytest.approx(1, abs=1e-5) and not out[1].any()


BOVW = {"name": "keypoints_bovw", "column": "bovw",
        "params": {"descriptor": "sift", "vocabulary_size": 32, "max_keypoints": 200, "sample_per_image": 40,
                   "sample_images": 60, "tfidf": True, "normalize": "l2"}}


def spec_for(inp, out, features=(BOVW,), **extra):
    doc = {"features": list(features), "image": {"size": [192, 192], "resize": "aspect_crop"}, "seed": 5,
           "input": {"path": str(inp)}, "output": {"path": str(out), "shards": 4}, **extra}
    return RunSpec.from_dict(doc)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from featurelib.sample_data import make_sample

    root = tmp_path_factory.mktemp("photos") / "photos"
    make_sample("photos", root)
    return root


def test_vocabulary_is_the_same_on_two_engines_and_a_saved_one_is_reused(photos, tmp_path):
    from pipelines.extract_features import BeamEngine

    listed = {p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg")}
    local = execute(spec_for(photos, tmp_path / "local"), LocalEngine(2), log=lambda m: None).manifest
    assert_ledger(tmp_path / "local", listed)
    vocab = tmp_path / "local" / "artifacts" / "bovw.vocab.npz"
    with np.load(vocab) as saved:
        assert saved["centers"].shape == (32, 128) and saved["idf"].shape == (32,)
    assert local["artifacts"][0]["sha256"] == hashlib.sha256(vocab.read_bytes()).hexdigest()
    beam = execute(spec_for(photos, tmp_path / "beam"), BeamEngine(), log=lambda m: None).manifest
    assert digest_tree(tmp_path / "beam", KINDS) == digest_tree(tmp_path / "local", KINDS)
    assert beam["feature_fingerprint"] == local["feature_fingerprint"]
    # new data encoded with the training vocabulary: no sample pass, same fingerprint, same bytes
    reused = dict(BOVW, params={**BOVW["params"], "vocabulary": str(vocab)})
    logs = []
    again = execute(spec_for(photos, tmp_path / "reused", [reused]), LocalEngine(2), log=logs.append).manifest
    assert not any("'sample'" in line for line in logs)
    assert again["feature_fingerprint"] == local["feature_fingerprint"]
    assert digest_tree(tmp_path / "reused", KINDS) == digest_tree(tmp_path / "local", KINDS)
    # the features are unit-norm tf-idf histograms
    import pyarrow.parquet as pq

    rows = np.concatenate([np.stack(pq.read_table(p, columns=["bovw"]).column("bovw").to_numpy(zero_copy_only=False))
                           for p in sorted((tmp_path / "local" / "parquet").glob("*.parquet"))])
    norms = np.linalg.norm(rows, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


def test_bag_of_visual_words_classifies_the_photos_far_above_chance(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from featurelib.io.readers import read_parquet
    from featurelib.sample_data import make_sample

    make_sample("photos", tmp_path / "photos", scale=3)  # 360 crops of 10 photographs
    features = [dict(BOVW, params={**BOVW["params"], "vocabulary_size": 64, "sample_images": 120})]
    execute(spec_for(tmp_path / "photos", tmp_path / "out", features, split={"train": 0.6, "val": 0.0, "test": 0.4}),
            LocalEngine(2), log=lambda m: None)
    data = read_parquet(str(tmp_path / "out"))
    x, y, split = data["features"]["bovw"], data["labels"], np.array(data["split"])
    model = LogisticRegression(max_iter=3000, C=10.0).fit(x[split == "train"], y[split == "train"])
    test = split == "test"
    score = model.score(x[test], y[test])
    print(json.dumps({"bovw_sift_photos_test_accuracy": round(float(score), 3), "test_images": int(test.sum())}))
    assert test.sum() >= 100
    assert score >= 0.6, f"bag of visual words on photos: test accuracy {score:.3f} (chance 0.1)"


def test_saved_vocabularies_are_checked_before_any_image_is_read(photos, tmp_path, capsys):
    from featurelib import cli
    from featurelib.descriptors.keypoints import _fit

    with pytest.raises(ValueError, match="3 descriptors sampled, fewer than vocabulary_size = 32"):
        _fit({"vocabulary_size": 32}, [np.zeros((3, 128), np.float32)], 0)
    wrong = tmp_path / "orb-vocab.npz"
    wrong.write_bytes(npz_bytes({"centers": np.zeros((32, 256), np.float32), "idf": np.ones(32, np.float32)}))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    for path, message in ((wrong, "its centers are (32, 256), this spec needs (32, 128)"), (junk, "not an .npz vocabulary")):
        feature = dict(BOVW, params={**BOVW["params"], "vocabulary": str(path)})
        spec = tmp_path / f"{path.stem}.yaml"
        spec.write_text(json.dumps({"features": [feature], "image": {"size": [192, 192]}}))
        code = cli.main(["run", "--spec", str(spec), "--input", str(photos), "--output", str(tmp_path / path.stem)])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert not (tmp_path / path.stem).exists()


def test_sampling_parameters_stay_out_of_the_fingerprint():
    fitted = RunSpec.from_dict({"features": [dict(BOVW, params={**BOVW["params"], "sample_images": 60})]})
    reused = RunSpec.from_dict({"features": [dict(BOVW, params={**BOVW["params"], "sample_images": 999,
                                                                 "sample_per_image": 7, "vocabulary": "v.npz"})]})
    assert fitted.feature_fingerprint({"bovw": "abc"}) == reused.feature_fingerprint({"bovw": "abc"})
