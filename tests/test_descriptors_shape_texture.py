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


# --- lbp ------------------------------------------------------------------------------------------------


LBP_CASES = [(8, 1), (16, 2), (24, 3), (8, 2.5)]


@pytest.mark.parametrize("points,radius", LBP_CASES)
def test_lbp_codes_equal_scikit_image_for_every_method(grays, points, radius):
    from skimage.feature import local_binary_pattern

    from featurelib.descriptors.texture import LBP_METHODS, lbp_codes

    for method in LBP_METHODS:
        if method in ("default", "ror") and points > 16:
            continue
        for name, gray in grays.items():
            expected = local_binary_pattern(gray, points, radius, method)
            np.testing.assert_array_equal(lbp_codes(gray, points, radius, method), expected,
                                          err_msg=f"{name} P={points} R={radius} {method}")


def test_lbp_histograms_equal_histograms_of_scikit_image_codes(grays):
    from skimage.feature import local_binary_pattern

    from featurelib.descriptors.texture import lbp

    gray = grays["chelsea"]
    for method, bins in (("uniform", 10), ("nri_uniform", 59), ("default", 256), ("ror", 256)):
        codes = local_binary_pattern(gray, 8, 1, method).astype(int)
        expected = np.bincount(codes.ravel(), minlength=bins) / codes.size
        np.testing.assert_allclose(lbp(gray, method=method), expected, rtol=0, atol=1e-7)
    # a 2 x 3 grid: each cell's histogram, concatenated row-major, each summing to 1
    codes = local_binary_pattern(gray, 8, 1, "uniform").astype(int)
    out = lbp(gray, grid=(2, 3)).reshape(6, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    cell = codes[112:224, 74:149]  # row 1 of [0, 112, 224], column 1 of [0, 74, 149, 224]
    np.testing.assert_allclose(out[4], np.bincount(cell.ravel(), minlength=10) / cell.size, atol=1e-7)


def test_lbp_var_leaves_flat_neighbourhoods_out(grays):
    from skimage.feature import local_binary_pattern

    from featurelib.descriptors.texture import lbp

    gray = grays["coffee"]
    variance = local_binary_pattern(gray, 8, 1, "var")
    finite = variance[np.isfinite(variance)]
    expected = np.bincount(np.minimum((finite * 16 / 4096).astype(int), 15), minlength=16) / finite.size
    np.testing.assert_allclose(lbp(gray, method="var", bins=16, range=(0, 4096)), expected, atol=1e-7)
    black = lbp(np.zeros((32, 32), np.uint8), method="var")  # every sample 0 (outside is 0 too): no variance
    assert black.shape == (16,) and not black.any()  # no finite value: all zeros


@pytest.mark.parametrize("method", ["uniform", "ror"])
def test_lbp_8_1_rotation_invariant_histograms(grays, method):
    from featurelib.descriptors.texture import lbp

    for name, gray in grays.items():
        base = lbp(gray, method=method)
        for k in (1, 2, 3):
            np.testing.assert_allclose(lbp(np.ascontiguousarray(np.rot90(gray, k)), method=method), base,
                                       atol=1e-7, err_msg=f"{name} k={k}")


def test_lbp_declared_length_and_degenerate_images():
    definition = registry.get("lbp")
    cases = [({}, 10), ({"method": "nri_uniform"}, 59), ({"points": 16, "radius": 2, "method": "ror"}, 65536),
             ({"method": "var", "bins": 32}, 32), ({"grid": [4, 4]}, 160), ({"points": 24, "radius": 3}, 26)]
    for params, dim in cases:
        normalized = definition.normalize_params(params)
        assert definition.output_dim(normalized, (64, 64)) == dim, params
        for image in (np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)):
            out = definition.build(normalized).extract_batch(image[None])
            assert out.shape == (1, dim) and np.isfinite(out).all()
    with pytest.raises(Exception, match="points <= 16"):
        definition.normalize_params({"points": 24, "method": "default"})
    # bins and range only matter for var: other methods do not carry them into the fingerprint
    assert definition.normalize_params({"bins": 99}) == definition.normalize_params({})


# --- hog ------------------------------------------------------------------------------------------------


HOG_CASES = [
    {},
    {"pixels_per_cell": [16, 16], "cells_per_block": [2, 2]},
    {"orientations": 7, "pixels_per_cell": [5, 6], "cells_per_block": [2, 3], "block_norm": "L1"},
    {"orientations": 12, "block_norm": "L1-sqrt", "transform_sqrt": True},
    {"orientations": 4, "block_norm": "L2"},
]


@pytest.mark.parametrize("params", HOG_CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults")
def test_hog_equals_scikit_image(grays, real_images, params):
    from skimage.feature import hog as skimage_hog

    from featurelib.descriptors.gradient import hog

    images = dict(grays)
    images["brick_227x221"] = cv2.resize(__import__("skimage").data.brick(), (227, 221))  # sizes not cell multiples
    reference_params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    for name, gray in images.items():
        expected = skimage_hog(gray, feature_vector=True, **reference_params)
        ours = hog(gray, **params)
        assert ours.shape == expected.shape, name
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6, err_msg=name)


def test_hog_declared_lengths_and_degenerate_images():
    definition = registry.get("hog")
    defaults = definition.normalize_params({})
    assert definition.output_dim(defaults, (224, 224)) == 54_756  # scikit-image's defaults at 224x224
    compact = definition.normalize_params({"pixels_per_cell": [16, 16], "cells_per_block": [2, 2]})
    assert definition.output_dim(compact, (224, 224)) == 6_084
    for image in (np.zeros((64, 48), np.uint8), np.full((64, 48), 255, np.uint8)):
        out = definition.build(defaults).extract_batch(image[None])
        assert out.shape == (1, definition.output_dim(defaults, (64, 48)))
        np.testing.assert_array_equal(out, 0)  # no gradient: every normalised block is 0
    from featurelib.errors import SpecError
    from featurelib.spec import RunSpec

    with pytest.raises(SpecError, match="cannot take image size \\[16, 16\\]: an image of \\[16, 16\\] holds 2 x 2 cells"):
        RunSpec.from_dict({"features": [{"name": "hog"}], "image": {"size": [16, 16]}})


# --- zernike --------------------------------------------------------------------------------------------


def test_zernike_equals_a_direct_evaluation_of_the_polynomials(grays):
    """Pixel by pixel, from the definition: A_nm = (n+1)/pi sum f R_nm(rho) exp(-i m theta), f normalised."""
    import math

    from featurelib.descriptors.shape import zernike, zernike_orders

    gray = np.ascontiguousarray(grays["coffee"][60:84, 100:120])  # 24 x 20: a non-square crop
    radius = 9.5
    h, w = gray.shape
    inside = [(r, c) for r in range(h) for c in range(w)
              if math.hypot((c - (w - 1) / 2) / radius, (r - (h - 1) / 2) / radius) <= 1]
    total = sum(float(gray[r, c]) for r, c in inside)
    expected = []
    for n, m in zernike_orders(6):
        acc = 0j
        for r, c in inside:
            x, y = (c - (w - 1) / 2) / radius, (r - (h - 1) / 2) / radius
            rho, theta = math.hypot(x, y), math.atan2(y, x)
            radial = sum((-1) ** s * math.factorial(n - s) * rho ** (n - 2 * s)
                         / (math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s))
                         for s in range((n - m) // 2 + 1))
            acc += gray[r, c] / total * radial * complex(math.cos(m * theta), -math.sin(m * theta))
        expected.append(abs((n + 1) / math.pi * acc))
    assert len(expected) == 16
    np.testing.assert_allclose(zernike(gray, radius=radius, degree=6), expected, rtol=1e-5, atol=1e-7)


def test_zernike_is_rotation_invariant(grays):
    from featurelib.descriptors.shape import zernike

    for name, gray in grays.items():
        base = zernike(gray)
        for k in (1, 2, 3):  # exact: the pixel grid maps onto itself
            np.testing.assert_allclose(zernike(np.ascontiguousarray(np.rot90(gray, k))), base, rtol=1e-5,
                                       atol=1e-7, err_msg=f"{name} k={k}")
        # any angle: resampling changes the pixels, not the moments beyond 2% of the largest
        matrix = cv2.getRotationMatrix2D((111.5, 111.5), 30, 1.0)
        turned = zernike(cv2.warpAffine(gray, matrix, (224, 224), flags=cv2.INTER_LINEAR))
        assert np.abs(turned - base).max() <= 0.02 * np.abs(base).max(), name


def test_zernike_declared_length_and_degenerate_images():
    definition = registry.get("zernike")
    params = definition.normalize_params({})
    assert definition.output_dim(params, (224, 224)) == 25  # degree 8
    assert definition.output_dim(definition.normalize_params({"degree": 12}), (224, 224)) == 49
    for image in (np.zeros((40, 30), np.uint8), np.full((1, 1), 7, np.uint8), np.full((40, 30), 255, np.uint8)):
        out = definition.build(params).extract_batch(image[None])
        assert out.shape == (1, 25) and np.isfinite(out).all()


# --- properties of every extractor ------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = {"color_hist": {"bins": 4}, "intensity_hist": {"bins": 32}, "hog": {"pixels_per_cell": [4, 4],
            "cells_per_block": [2, 2]}, "lbp": {"grid": [2, 2]}, "haralick": {"levels": 16}, "zernike": {"degree": 6}}
HISTOGRAMS = {"color_hist": 1, "intensity_hist": 1, "lbp": 4}  # how many L1-normalised histograms the vector holds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(8, 80), width=st.integers(8, 80), seed=st.integers(0, 2**31), flat=st.booleans())
def test_every_extractor_returns_its_declared_shape_finite_values_and_normalised_histograms(height, width, seed,
                                                                                          flat, real_images):
    rng = np.random.default_rng(seed)
    photo = real_images[sorted(real_images)[seed % len(real_images)]]
    top, left = rng.integers(0, photo.shape[0] - 8), rng.integers(0, photo.shape[1] - 8)
    rgb = cv2.resize(np.ascontiguousarray(photo[top:, left:]), (width, height), interpolation=cv2.INTER_AREA)
    if flat:
        rgb[:] = rgb[0, 0]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for name in registry.names(exclude_tags={"deep"}):
        definition = registry.get(name)
        if definition.artifact is not None or name in ("always_fails", "needs_missing_module", "runs_out_of_memory",
                                                       "fragile_mean", "edge_density"):
            continue
        params = definition.normalize_params(SETTINGS.get(name, {}))
        dim = definition.output_dim(params, (height, width))
        view = rgb if definition.view == "rgb" else gray
        out = definition.build(params).extract_batch(np.stack([view, view]))
        assert out.shape == (2, dim) and out.dtype == np.float32, name
        assert np.isfinite(out).all(), name
        np.testing.assert_array_equal(out[0], out[1])  # the same image twice: the same values
        if name in HISTOGRAMS:
            sums = out[0].reshape(HISTOGRAMS[name], -1).sum(axis=1)
            assert np.all((np.abs(sums - 1) < 1e-5) | (sums == 0)), (name, sums)


def test_hog_impl_opencv_is_opencvs_descriptor_with_the_same_geometry(grays):
    from featurelib.errors import SpecError

    definition = registry.get("hog")
    params = definition.normalize_params({"pixels_per_cell": [16, 16], "cells_per_block": [2, 2], "impl": "opencv"})
    gray = grays["rocket"]
    expected = cv2.HOGDescriptor((224, 224), (32, 32), (16, 16), (16, 16), 9).compute(gray).reshape(-1)
    out = definition.build(params).extract_batch(gray[None])
    assert out.shape == (1, definition.output_dim(params, (224, 224))) == (1, 6_084)
    np.testing.assert_array_equal(out[0], expected)
    with pytest.raises(SpecError, match="impl: opencv normalises blocks with L2-Hys only"):
        definition.normalize_params({"impl": "opencv", "block_norm": "L1"})


def test_every_loaded_handler_survives_a_pickle_round_trip_and_tiny_images(grays):
    """Handlers stay in their worker, but nothing in them may be unpicklable (a runner may ship a
    warm DoFn); and a 1x1 or 2x2 image after resizing still gives finite values of the declared length."""
    import pickle

    from featurelib.descriptors.keypoints import DESCRIPTORS, local_descriptors, npz_bytes
    from featurelib.errors import SpecError

    gray = grays["chelsea"]
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    vocabulary = npz_bytes({"centers": local_descriptors(gray, max_keypoints=40)[:8].copy(),
                            "idf": np.ones(8, np.float32)})
    cases = [(name, {}) for name in registry.names(exclude_tags={"deep"}) if name != "keypoints_bovw"]
    cases += [("keypoints_bovw", {"vocabulary_size": 8, "descriptor": d}) for d in DESCRIPTORS]
    for name, extra in cases:
        definition = registry.get(name)
        if name in ("always_fails", "needs_missing_module", "runs_out_of_memory", "edge_density", "fragile_mean"):
            continue  # test plugins that fail on purpose
        params = definition.normalize_params({**SETTINGS.get(name, {}), **extra})
        if name == "keypoints_bovw":
            width = {"sift": 128, "rootsift": 128, "orb": 256, "brisk": 512, "akaze": 488}[extra["descriptor"]]
            vocabulary = npz_bytes({"centers": np.random.default_rng(0).random((8, width), np.float32),
                                    "idf": np.ones(8, np.float32)})
        artifacts = {"vocab": vocabulary} if name == "keypoints_bovw" else \
            {"constant": b'{"mean_gray": 100.0}'} if name == "toy_centered" else {}
        handler = definition.build(params, artifacts)
        view = rgb if definition.view == "rgb" else gray
        again = pickle.loads(pickle.dumps(handler))
        np.testing.assert_array_equal(again.extract_batch(view[None]), handler.extract_batch(view[None]), err_msg=name)
        for size in ((1, 1), (2, 2)):
            try:
                dim = definition.output_dim(params, size)
            except (SpecError, ValueError):  # a size the extractor refuses is refused before any image is read
                continue
            tiny = cv2.resize(view, size[::-1], interpolation=cv2.INTER_AREA)
            out = handler.extract_batch(tiny[None])
            assert out.shape == (1, dim) and np.isfinite(out).all(), (name, size)


def test_parameters_of_the_wrong_type_are_spec_errors_not_crashes():
    from featurelib.errors import SpecError
    from featurelib.spec import RunSpec

    features = [{"name": "hog", "params": {"pixels_per_cell": [0, 8]}},
                {"name": "keypoints_bovw", "params": {"vocabulary_size": None}},
                {"name": "zernike", "params": {"degree": "8", "radius": float("nan")}},
                {"name": "lbp", "params": {"points": "8", "range": [0, float("inf")]}},
                {"name": "haralick", "params": {"distances": 5}},
                {"name": "keypoints_bovw", "column": "bovw2", "params": {"vocabulary_size": 5000, "sample_images": 4}}]
    with pytest.raises(SpecError) as info:
        RunSpec.from_dict({"features": features})
    message = str(info.value)
    for expected in ("pixels_per_cell must be [rows, cols] of positive integers, got [0, 8]",
                     "vocabulary_size must be an integer in [2, 100000], got None", "degree must be an integer",
                     "radius must be a finite number of pixels >= 1", "points must be an integer in [1, 32], got '8'",
                     "range must be [low, high] with 0 <= low < high", "distances must be a non-empty list",
                     "= 200 descriptors at most, fewer than vocabulary_size = 5000"):
        assert expected in message, message


def test_lbp_var_leaves_variances_below_the_range_out(grays):
    from skimage.feature import local_binary_pattern

    from featurelib.descriptors.texture import lbp

    gray = grays["astronaut"]
    variance = local_binary_pattern(gray, 8, 1, "var")
    kept = variance[np.isfinite(variance) & (variance >= 2000)]
    expected = np.bincount(np.minimum(((kept - 2000) * 4 / 2000).astype(int), 3), minlength=4) / kept.size
    np.testing.assert_allclose(lbp(gray, method="var", bins=4, range=(2000, 4000)), expected, atol=1e-7)


def test_every_extractor_takes_the_kernels_read_only_stacks_with_default_params(real_images):
    """The kernel hands each column one read-only stack shared by all columns (featurelib.compute): every
    extractor must accept it at its default parameters (haralick at 256 levels once failed here only)."""
    photo = cv2.resize(real_images[sorted(real_images)[0]], (64, 48), interpolation=cv2.INTER_AREA)
    stacks = {"rgb": np.stack([photo, photo[::-1].copy()]),
              "gray": np.stack([cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)] * 2)}
    for stack in stacks.values():
        stack.flags.writeable = False
    for name in registry.names(exclude_tags={"deep"}):
        definition = registry.get(name)
        if definition.artifact is not None or name in ("always_fails", "needs_missing_module", "runs_out_of_memory",
                                                       "fragile_mean", "edge_density"):
            continue
        params = definition.normalize_params({})
        out = definition.build(params).extract_batch(stacks[definition.view])
        assert out.shape == (2, definition.output_dim(params, (48, 64))), name
