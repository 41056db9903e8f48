"""Colour descriptors against OpenCV's calcHist and SciPy's moments on real photographs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from featurelib.descriptors.color import color_histogram, color_stats, intensity_histogram

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower", "camera_rgb")


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("space,code,ranges", [
    ("rgb", None, [0, 256, 0, 256, 0, 256]),
    ("hsv", cv2.COLOR_RGB2HSV, [0, 180, 0, 256, 0, 256]),
    ("lab", cv2.COLOR_RGB2LAB, [0, 256, 0, 256, 0, 256]),
])
@pytest.mark.parametrize("bins", [8, (6, 4, 3)])
def test_color_hist_matches_cv2_calchist(real_images, name, space, code, ranges, bins):
    image = real_images[name]
    converted = image if code is None else cv2.cvtColor(image, code)
    b = [bins] * 3 if isinstance(bins, int) else list(bins)
    reference = cv2.calcHist([converted], [0, 1, 2], None, b, ranges).reshape(-1)
    reference /= reference.sum()
    ours = color_histogram(image, bins=bins, color_space=space)
    assert ours.dtype == np.float32 and ours.shape == (int(np.prod(b)),)
    # Same bin edges as OpenCV: equal up to float32 rounding of counts / N.
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    assert ours.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("bins", [256, 32, 10])
def test_intensity_hist_matches_cv2(real_images, name, bins):
    image = real_images[name]
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    reference = cv2.calcHist([gray], [0], None, [bins], [0, 256]).reshape(-1)
    reference /= reference.sum()
    ours = intensity_histogram(image, bins=bins)
    assert ours.shape == (bins,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("name", PHOTOS)
def test_color_stats_matches_scipy(real_images, name):
    image = real_images[name]
    pixels = image.reshape(-1, 3).astype(np.float64)
    expected = []
    for c in range(3):
        channel = pixels[:, c]
        skew = scipy.stats.skew(channel, bias=True) if channel.std() > 0 else 0.0
        expected += [channel.mean(), channel.std(), skew]
    ours = color_stats(image)
    assert ours.shape == (9,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, np.array(expected), rtol=1e-5, atol=1e-4)


def test_color_stats_hand_computed():
    image = np.zeros((1, 4, 3), dtype=np.uint8)
    image[0, :, 0] = [0, 0, 0, 4]      # mean 1, var 3, m3 = (27 + 3*(-1)) / 4 = 6
    image[0, :, 1] = 7                 # flat: std 0, skew defined as 0
    image[0, :, 2] = [0, 2, 4, 6]      # symmetric: skew 0
    out = color_stats(image)
    np.testing.assert_allclose(out, [1, np.sqrt(3), 6 / 3**1.5, 7, 0, 0, 3, np.sqrt(5), 0], rtol=1e-6)


def test_hist_bin_edges_hand_computed():
    # values 0..255 in one row; 4 bins over [0, 256): 64 values each
    image = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    np.testing.assert_allclose(intensity_histogram(image, bins=4), [0.25] * 4)
    rgb = color_histogram(image, bins=2, color_space="rgb")
    np.testing.assert_allclose(rgb, [0.5, 0, 0, 0, 0, 0, 0, 0.5])  # grey: only the diagonal


@pytest.mark.parametrize("call,message", [
    (lambda im: color_histogram(im, bins=0), "bins"),
    (lambda im: color_histogram(im, bins=(2, 2)), "one int or three"),
    (lambda im: color_histogram(im, color_space="xyz"), "color_space"),
    (lambda im: intensity_histogram(im, bins=300), "bins"),
    (lambda im: color_stats(im[:, :, :2]), "(H, W, 3)"),
    (lambda im: color_stats(im.astype(np.float32)), "uint8"),
])
def test_bad_arguments_raise_with_message(call, message):
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(image)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3))),
       st.sampled_from(["rgb", "hsv", "lab"]), st.integers(1, 16))
def test_histograms_sum_to_one_and_are_finite(image, space, bins):
    for out in (color_histogram(image, bins=bins, color_space=space), intensity_histogram(image, bins=bins),
                color_stats(image)):
        assert np.isfinite(out).all()
    assert color_histogram(image, bins=bins, color_space=space).sum() == pytest.approx(1.0, abs=1e-5)
    assert intensity_histogram(image, bins=bins).sum() == pytest.approx(1.0, abs=1e-5)
