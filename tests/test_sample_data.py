"""Tests of :mod:`featurelib.sample_data`: counts, formats, pixels, determinism, errors."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurelib.sample_data import SAMPLES, SampleSummary, make_sample

PHOTO_LABELS = (
    "astronaut",
    "chelsea",
    "china",
    "coffee",
    "flower",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle",
    "retina",
    "rocket",
)


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its ``/``-separated relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def per_class(root: Path, pattern: str = "*") -> Counter:
    """Number of files matching ``pattern`` in each class folder."""
    return Counter(p.parent.name for p in root.glob(f"*/{pattern}") if p.is_file())


# Each default set is built once per module: the builds dominate the run time.
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[tuple[str, int, int], tuple[SampleSummary, Path]] = {}

    def build(name: str, seed: int = 0, scale: int = 1) -> tuple[SampleSummary, Path]:
        key = (name, seed, scale)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{name}-s{seed}-x{scale}") / "data"
            cache[key] = (make_sample(name, root, seed=seed, scale=scale), root)
        return cache[key]

    return build


def test_samples_tuple():
    assert SAMPLES == ("digits", "textures", "photos")


@pytest.mark.parametrize("name", SAMPLES)
def test_summary_matches_files_on_disk(built, name):
    summary, root = built(name)
    files = [p for p in root.rglob("*") if p.is_file()]
    assert summary.name == name
    assert Path(summary.root) == root
    assert summary.n_images == len(files)
    assert summary.bytes == sum(p.stat().st_size for p in files)
    assert summary.labels == tuple(sorted(p.name for p in root.iterdir()))
    assert summary.n_classes == len(summary.labels)
    # Every file sits exactly one folder deep: root/<label>/<file>.
    assert all(len(p.relative_to(root).parts) == 2 for p in files)


# --- digits ------------------------------------------------------------------


def expected_digit(image8: np.ndarray) -> np.ndarray:
    """Independent recomputation: 0..16 -> round-half-up(v*255/16), 4x4 blocks."""
    scaled = np.floor(image8.astype(np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)
    return np.kron(scaled, np.ones((4, 4), dtype=np.uint8))


def test_digits_are_the_whole_dataset_pixel_for_pixel(built):
    from sklearn.datasets import load_digits

    summary, root = built("digits")
    digits = load_digits()
    assert summary.n_images == 1797 == len(digits.images)
    assert summary.labels == tuple(str(d) for d in range(10))

    seen = set()
    for path in root.rglob("*.png"):
        match = re.fullmatch(r"digit-(\d{5})\.png", path.name)
        assert match, path.name
        index = int(match.group(1))
        seen.add(index)
        assert path.parent.name == str(digits.target[index])
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.mode == "L"  # 8-bit single channel
            assert im.size == (32, 32)
            pixels = np.asarray(im)
        np.testing.assert_array_equal(pixels, expected_digit(digits.images[index]))
    assert seen == set(range(1797))
    counts = per_class(root)
    assert counts == Counter({str(d): int((digits.target == d).sum()) for d in range(10)})


def test_digits_full_range_is_used(built):
    _, root = built("digits")
    values = np.concatenate([np.asarray(Image.open(p)).ravel() for p in root.glob("8/*.png")])
    assert values.min() == 0 and values.max() == 255


def test_digits_scale_two_repeats_identically_whatever_the_seed(built):
    # A second, independent build with another seed and scale=2: its first
    # copy must equal the default build byte for byte (determinism, and the
    # seed does not matter), its second copy too, under distinct names.
    summary1, root1 = built("digits")
    summary2, root2 = built("digits", seed=7, scale=2)
    assert summary2.n_images == 2 * 1797
    assert summary2.labels == summary1.labels
    h1, h2 = file_hashes(root1), file_hashes(root2)
    assert len(h1) == 1797 and len(h2) == 2 * 1797
    for rel, digest in h1.items():
        assert h2[rel] == digest
        assert h2[rel.replace(".png", "-r1.png")] == digest


# --- textures ------------------------------------------------------------------


def test_textures_counts_sizes_format(built):
    summary, root = built("textures")
    assert summary.labels == ("brick", "grass", "gravel")
    assert summary.n_images == 120
    assert per_class(root, "*.png") == Counter(brick=40, grass=40, gravel=40)
    for path in root.rglob("*"):
        if path.is_file():
            with Image.open(path) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "L", (128, 128))
    # Random crops: no two images identical.
    assert len(set(file_hashes(root).values())) == 120


def test_textures_classes_differ(built):
    # Brick, grass and gravel have clearly different grey-level statistics;
    # a mix-up of sources or labels would show here.
    _, root = built("textures")
    means = {
        label: np.mean([np.asarray(Image.open(p), dtype=float).mean() for p in root.glob(f"{label}/*")])
        for label in ("brick", "grass", "gravel")
    }
    assert len({round(m) for m in means.values()}) == 3


def test_textures_scale_two_extends_scale_one(built):
    _, root1 = built("textures")
    summary2, root2 = built("textures", scale=2)
    assert summary2.n_images == 240
    assert per_class(root2) == Counter(brick=80, grass=80, gravel=80)
    h1, h2 = file_hashes(root1), file_hashes(root2)
    assert all(h2[rel] == digest for rel, digest in h1.items())


def test_textures_seed_changes_crops(built):
    _, root0 = built("textures", seed=0)
    _, root1 = built("textures", seed=1)
    h0, h1 = file_hashes(root0), file_hashes(root1)
    assert h0.keys() == h1.keys()
    assert sum(h0[k] != h1[k] for k in h0) > 100


# --- photos ------------------------------------------------------------------


def test_photos_counts_sizes_format(built):
    summary, root = built("photos")
    assert summary.labels == PHOTO_LABELS
    assert summary.n_images == 120
    assert summary.bytes < 25_000_000
    assert per_class(root, "*-large-*.jpg") == Counter({c: 2 for c in PHOTO_LABELS})
    assert per_class(root, "*.jpg") == Counter({c: 12 for c in PHOTO_LABELS})
    for path in root.rglob("*"):
        assert path.is_dir() or path.suffix == ".jpg"
        if path.is_file():
            expected = (2000, 1500) if "-large-" in path.name else (500, 375)
            with Image.open(path) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", expected)
    assert len(set(file_hashes(root).values())) == 120


def test_photos_look_like_their_source(built):
    # The mean colour of a crop is close to that of its source photograph
    # (and far from most others): catches swapped channels or wrong labels.
    import skimage.data

    _, root = built("photos")
    source = skimage.data.coffee().reshape(-1, 3).mean(axis=0)
    paths = sorted(root.glob("coffee/coffee-00*.jpg"))
    crops = np.mean([np.asarray(Image.open(p)).reshape(-1, 3).mean(axis=0) for p in paths], axis=0)
    assert np.abs(crops - source).max() < 25
    retina = np.asarray(Image.open(root / "retina" / "retina-0000.jpg")).reshape(-1, 3).mean(axis=0)
    assert retina[0] > retina[2]  # the retina photograph is red, not blue


def test_photos_scale_two_doubles_counts(built):
    _, root1 = built("photos")
    summary2, root2 = built("photos", scale=2)
    assert summary2.n_images == 240
    assert per_class(root2, "*-large-*.jpg") == Counter({c: 4 for c in PHOTO_LABELS})
    assert per_class(root2, "*.jpg") == Counter({c: 24 for c in PHOTO_LABELS})
    h1, h2 = file_hashes(root1), file_hashes(root2)
    assert all(h2[rel] == digest for rel, digest in h1.items())


# --- determinism -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["textures", "photos"])  # digits: see above
def test_two_builds_are_byte_identical(built, tmp_path, name):
    _, first = built(name)
    again = make_sample(name, tmp_path / "again")
    assert file_hashes(first) == file_hashes(tmp_path / "again")
    assert again.n_images == len(file_hashes(first))


def test_photos_seed_changes_bytes(built, tmp_path):
    _, root0 = built("photos")
    make_sample("photos", tmp_path / "s3", seed=3)
    h0, h3 = file_hashes(root0), file_hashes(tmp_path / "s3")
    assert h0.keys() == h3.keys()
    assert all(h0[k] != h3[k] for k in h0)


# --- errors ------------------------------------------------------------------------


def test_unknown_name_lists_known_ones(tmp_path):
    message = r"unknown sample 'cifar'; known samples: digits, textures, photos"
    with pytest.raises(ValueError, match=message):
        make_sample("cifar", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_non_empty_root_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"is not empty; choose a new or empty folder"):
        make_sample("textures", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_second_build_into_same_root_is_refused(tmp_path):
    make_sample("textures", tmp_path / "t")
    with pytest.raises(ValueError, match="is not empty"):
        make_sample("textures", tmp_path / "t")


def test_root_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.png"
    target.write_bytes(b"x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        make_sample("digits", target)


def test_empty_existing_root_and_missing_parents_are_fine(tmp_path):
    assert make_sample("textures", tmp_path).n_images == 120
    assert make_sample("textures", tmp_path / "a" / "b").n_images == 120


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": 1.5}, "seed must be a non-negative integer"),
        ({"scale": 0}, "scale must be a positive integer"),
        ({"scale": True}, "scale must be a positive integer"),
    ],
)
def test_bad_seed_or_scale(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_sample("textures", tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
