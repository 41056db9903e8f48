"""hu_moments, haralick and color_stats' colour spaces: references, hand-computed cases, invariances."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import stats as scipy_stats

from featurelib import registry
from featurelib.descriptors.color import color_stats
from featurelib.descriptors.shape import hu_moments, signed_log10
from featurelib.descriptors.texture import haralick


@pytest.fixture(scope="module")
def grays(real_images):
    """Real photographs as 224x224 gray views (what the kernel hands gray extractors)."""
    out = {}
    for name, image in real_images.items():
        resized = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
        out[name] = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
    return out


def hu_by_hand(gray: np.ndarray) -> np.ndarray:
    """Hu's seven invariants from normalised central moments, straight from the 1962 formulas."""
    g = gray.astype(np.float64)
    y, x = np.mgrid[: g.shape[0], : g.shape[1]]
    m00 = g.sum()
    xc, yc = (x * g).sum() / m00, (y * g).sum() / m00

    def nu(p, q):
        return ((x - xc) ** p * (y - yc) ** q * g).sum() / m00 ** (1 + (p + q) / 2)

    n20, n02, n11, n30, n03, n21, n12 = nu(2, 0), nu(0, 2), nu(1, 1), nu(3, 0), nu(0, 3), nu(2, 1), nu(1, 2)
    a, b = n30 + n12, n21 + n03
    return np.array([
        n20 + n02,
        (n20 - n02) ** 2 + 4 * n11**2,
        (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2,
        a**2 + b**2,
        (n30 - 3 * n12) * a * (a**2 - 3 * b**2) + (3 * n21 - n03) * b * (3 * a**2 - b**2),
        (n20 - n02) * (a**2 - b**2) + 4 * n11 * a * b,
        (3 * n21 - n03) * a * (a**2 - 3 * b**2) - (n30 - 3 * n12) * b * (3 * a**2 - b**2),
    ])


def test_hu_moments_equal_opencv_and_the_formulas(grays):
    for name, gray in grays.items():
        raw = hu_moments(gray, log_scale=False)
        reference = cv2.HuMoments(cv2.moments(gray)).reshape(-1)
        np.testing.assert_allclose(raw, reference.astype(np.float32), rtol=1e-6, err_msg=name)
        by_hand = hu_by_hand(gray)
        scale = np.abs(by_hand[0]) ** np.array([1, 2, 3, 3, 6, 4, 6])  # each moment's natural magnitude
        np.testing.assert_allclose(reference, by_hand, rtol=0, atol=1e-9 * scale.max(), err_msg=name)
        np.testing.assert_allclose(hu_moments(gray), signed_log10(reference).astype(np.float32), rtol=1e-6)


def test_hu_log_scale_is_the_signed_log_and_zero_stays_zero():
    np.testing.assert_array_equal(signed_log10(np.array([1e-3, -1e-3, 0.0, 10.0])), [3.0, -3.0, 0.0, -1.0])
    flat_black = np.zeros((32, 32), np.uint8)
    for binarize in ("none", "otsu", "threshold"):
        out = hu_moments(flat_black, binarize=binarize)
        assert out.dtype == np.float32 and out.shape == (7,)
        np.testing.assert_array_equal(out, np.zeros(7, np.float32))
    assert np.isfinite(hu_moments(np.full((1, 1), 200, np.uint8))).all()


def test_hu_binarized_moments_are_those_of_the_mask(grays):
    gray = grays["camera_rgb"]
    _, otsu = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    np.testing.assert_allclose(hu_moments(gray, binarize="otsu", log_scale=False),
                               cv2.HuMoments(cv2.moments((otsu > 0).astype(np.uint8))).reshape(-1), rtol=1e-6)
    mask = (gray > 100).astype(np.uint8)
    np.testing.assert_allclose(hu_moments(gray, binarize="threshold", threshold=100, log_scale=False),
                               cv2.HuMoments(cv2.moments(mask)).reshape(-1), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hu_moments_are_invariant_to_90_degree_rotations(grays, k):
    for name, gray in grays.items():
        a = hu_moments(gray, log_scale=False).astype(np.float64)
        b = hu_moments(np.ascontiguousarray(np.rot90(gray, k)), log_scale=False).astype(np.float64)
        # h7 changes sign under reflection only, but tiny values flip at float precision:
        # the tolerance scales with |h1| to the power each moment has.
        scale = np.abs(a[0]) ** np.array([1, 2, 3, 3, 6, 4, 6])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale.max(), err_msg=f"{name} rot90 k={k}")


def test_haralick_hand_computed_glcm():
    gray = np.array([[0, 0, 1], [1, 2, 2]], np.uint8)
    out = haralick(gray, distances=[1], angles=[0])
    # symmetric pairs at distance 1, angle 0: P(0,0)=2, P(0,1)=P(1,0)=P(1,2)=P(2,1)=1, P(2,2)=2, over 8
    expected = {"contrast": 0.5, "dissimilarity": 0.5, "homogeneity": 0.75, "energy": np.sqrt(12 / 64),
                "correlation": 0.5 / 0.75, "ASM": 12 / 64}
    np.testing.assert_allclose(out, list(expected.values()), rtol=1e-6)


def test_haralick_equals_scikit_image_with_quantisation(grays):
    from skimage.feature import graycomatrix, graycoprops

    props = ["contrast", "correlation", "ASM"]
    for name, gray in list(grays.items())[:4]:
        for levels in (256, 16):
            ours = haralick(gray, distances=[1, 3], angles=[0, 90], levels=levels, properties=props)
            q = (gray.astype(np.int64) * levels // 256).astype(np.uint8)
            matrix = graycomatrix(q, [1, 3], [0, np.pi / 2], levels=levels, symmetric=True, normed=True)
            reference = np.stack([graycoprops(matrix, p) for p in props]).reshape(-1)
            np.testing.assert_allclose(ours, reference.astype(np.float32), rtol=1e-6, err_msg=f"{name} {levels}")


def test_haralick_declared_length_and_degenerate_images():
    definition = registry.get("haralick")
    params = definition.normalize_params({"distances": [1, 2], "angles": [0, 45, 90], "levels": 32})
    assert definition.output_dim(params, (64, 64)) == 6 * 2 * 3
    for image in (np.zeros((16, 16), np.uint8), np.full((16, 16), 255, np.uint8)):
        out = definition.build(params).extract_batch(image[None])
        assert out.shape == (1, 36) and np.isfinite(out).all()


def test_new_parameter_mistakes_are_reported_together():
    from featurelib.errors import SpecError
    from featurelib.spec import RunSpec

    with pytest.raises(SpecError) as info:
        RunSpec.from_dict({"features": [
            {"name": "hu_moments", "params": {"binarize": "yes", "threshold": 300}},
            {"name": "haralick", "params": {"angles": [200], "levels": 1, "properties": ["entropy"]}},
            {"name": "color_stats", "params": {"color_space": "cmyk"}}]})
    message = str(info.value)
    for expected in ("binarize must be one of ['none', 'otsu', 'threshold']", "threshold must be an integer in [0, 255]",
                     "angles must be a non-empty list of degrees in [0, 180)", "levels must be an integer in [2, 256]",
                     "properties must be a non-empty list of distinct names", "color_space must be one of"):
        assert expected in message, message


@pytest.mark.filterwarnings("ignore:Precision loss occurred")  # scipy on near-flat a/b channels
@pytest.mark.parametrize("space,code", [("hsv", cv2.COLOR_RGB2HSV), ("lab", cv2.COLOR_RGB2LAB)])
def test_color_stats_in_other_colour_spaces_equal_numpy_moments(real_images, space, code):
    for name, image in real_images.items():
        converted = cv2.cvtColor(image, code).reshape(-1, 3).astype(np.float64)
        skew = scipy_stats.skew(converted, axis=0, bias=True)
        skew = np.where(converted.std(axis=0) == 0, 0.0, skew)  # a flat channel's skewness is defined as 0
        expected = np.stack([converted.mean(axis=0), converted.std(axis=0), skew], axis=1).reshape(-1)
        np.testing.assert_allclose(color_stats(image, color_space=space), expected, rtol=1e-5, atol=1e-4,
                                   err_msg=name)
