"""Resizing and augmentation: shapes, hand-checked geometry, seeded determinism."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from featurelib.transforms import augment_image, normalize_op, record_rng, resize_image

OPS = [normalize_op(o) for o in ({"op": "flip", "p": 1.0}, {"op": "rotate", "degrees": 20},
                                 {"op": "translate"}, {"op": "crop"}, {"op": "brightness"}, {"op": "contrast"})]


def test_stretch_equals_cv2_resize(real_images):
    image = real_images["astronaut"]
    out = resize_image(image, (100, 60), mode="stretch", interpolation="area")
    np.testing.assert_array_equal(out, cv2.resize(image, (60, 100), interpolation=cv2.INTER_AREA))


def test_aspect_crop_keeps_the_centre(real_images):
    image = real_images["chelsea"]  # 300 x 451
    out = resize_image(image, (150, 150), mode="aspect_crop", interpolation="linear")
    assert out.shape == (150, 150, 3)
    scaled = cv2.resize(image, (226, 150), interpolation=cv2.INTER_LINEAR)  # shorter side -> 150
    np.testing.assert_array_equal(out, scaled[:, 38:188])


def test_pad_letterboxes_with_fill():
    image = np.full((10, 40, 3), 200, dtype=np.uint8)
    out = resize_image(image, (40, 40), mode="pad", interpolation="area", fill=(1, 2, 3))
    assert out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out[0, 0], [1, 2, 3])
    np.testing.assert_array_equal(out[20, 20], [200, 200, 200])
    assert (out[:15] == [1, 2, 3]).all() and (out[25:] == [1, 2, 3]).all()


@pytest.mark.parametrize("mode", ["stretch", "aspect_crop", "pad"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (300, 2), (64, 64)])
def test_every_mode_returns_the_target_size(mode, shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert resize_image(image, (24, 32), mode=mode).shape == (24, 32, 3)


def test_flip_is_exact():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = augment_image(image, [normalize_op({"op": "flip", "horizontal": True, "vertical": True, "p": 1.0})],
                        record_rng(0, "k"))
    np.testing.assert_array_equal(out, image[::-1, ::-1])


def test_augmentation_is_seeded_by_seed_and_key(real_images):
    image = resize_image(real_images["coffee"], (64, 64))
    a = augment_image(image, OPS, record_rng(42, "x.jpg#aug1"))
    b = augment_image(image, OPS, record_rng(42, "x.jpg#aug1"))
    c = augment_image(image, OPS, record_rng(43, "x.jpg#aug1"))
    d = augment_image(image, OPS, record_rng(42, "x.jpg#aug2"))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_augmentation_is_identical_in_another_process_with_another_hash_seed(real_images):
    image = resize_image(real_images["rocket"], (48, 48))
    here = augment_image(image, OPS, record_rng(7, "rocket#aug3"))
    code = ("import sys, numpy as np; from skimage import data; "
            "from featurelib.transforms import *; import json; "
            "ops=[normalize_op(o) for o in json.loads(sys.argv[1])]; "
            "im=resize_image(data.rocket(), (48, 48)); "
            "sys.stdout.buffer.write(augment_image(im, ops, record_rng(7, 'rocket#aug3')).tobytes())")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(OPS)], capture_output=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}).stdout
    assert out == here.tobytes()


@pytest.mark.parametrize("op,message", [
    ({"op": "flip", "horizontal": "yes"}, "must be true or false"),
    ({"op": "crop", "scale": [0.9, 0.5]}, "scale must be"),
    ({"op": "rotate", "angle": 3}, r"unknown parameter\(s\) \['angle'\]"),
    ({"flip": True}, "with an 'op' key"),
])
def test_bad_ops(op, message):
    with pytest.raises(ValueError, match=message):
        normalize_op(op)
