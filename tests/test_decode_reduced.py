"""Reduced-scale JPEG decoding (decode policy point 11, ``decode.reduce``).

The factor function is checked against values worked out by hand in the
comments; decoded pixels against plain ``cv2.imdecode`` calls; the effect on
what the pipeline sees (the resized image) against resizing the full decode,
on real photographs at their native size.
"""

from __future__ import annotations

import io
import pathlib
import sys

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import featurelib.decode as decode_mod
from featurelib import transforms
from featurelib.decode import (
    JPEG_REDUCTIONS,
    RESIZE_MODES,
    IsolatedDecoder,
    decode_image,
    reduction_factor,
    resize_intermediate,
)
from featurelib.errors import DecodeError, SpecError
from featurelib.shard import make_decoder
from featurelib.spec import DecodeSpec, RunSpec

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from badfiles import encode_pil, exif_bytes, photo_rgb  # noqa: E402  (a helper module next to this file)

FULL = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
REDUCED_BGR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def plain_full(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), FULL)


def plain_reduced(data: bytes, d: int) -> np.ndarray:
    """The route the brief describes: IMREAD_REDUCED_COLOR_d (BGR), then BGR -> RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED_BGR[d] | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """1001 x 753 (odd on both axes: ceil matters), a real photograph enlarged."""
    return jpeg(cv2.resize(photo_rgb(), (1001, 753), interpolation=cv2.INTER_CUBIC))


# ---------------------------------------------------------------------------
# The factor
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, target, expected",
    [
        # 2000x1500 to 224x224 stretch: d=4 gives 375x500 >= 224x224; d=8 gives 188 rows < 224.
        (1500, 2000, (224, 224, "stretch"), 4),
        # aspect_crop: s = max(224/1500, 224/2000) = 0.14933 -> 224 x round(298.67) = 224x299 (h x w);
        # d=4: 375x500 >= 224x299 and itself scales to 224x299; d=8: 250 columns < 299.
        (1500, 2000, (224, 224, "aspect_crop"), 4),
        # pad: s = min(...) = 0.112 -> 168x224; d=8: 188x250 >= 168x224, and min(224/188, 224/250) = 0.896
        # scales it to round(168.45) x 224 = 168x224, the same.
        (1500, 2000, (224, 224, "pad"), 8),
        # Exactly 1/8: 512 -> 64.
        (512, 512, (64, 64, "stretch"), 8),
        (512, 512, (112, 112, "stretch"), 4),  # d=4: 128 >= 112; d=8: 64 < 112
        (512, 512, (224, 224, "aspect_crop"), 2),  # 256 >= 224; 128 < 224
        # Tall aspect_crop: s = max(100/1000, 100/600) = 1/6 -> round(166.67) x 100 = 167x100;
        # d=4: 250x150 -> s' = 2/3 -> 167x100, the same; d=8: 75 columns < 100.
        (1000, 600, (100, 100, "aspect_crop"), 4),
        # Non-square stretch: 1000x100 to 100x50: d=2 500x50 fits; d=4 has 25 columns < 50.
        (1000, 100, (100, 50, "stretch"), 2),
        # Tiny target: everything fits, the largest d.
        (100, 100, (1, 1, "stretch"), 8),
        (100, 100, (1, 1, "aspect_crop"), 8),
        (100, 100, (1, 1, "pad"), 8),
        # Target larger than the image, or equal to it: full size.
        (300, 400, (600, 800, "stretch"), 1),
        (300, 400, (600, 800, "aspect_crop"), 1),
        (300, 400, (600, 800, "pad"), 1),
        (512, 512, (512, 512, "stretch"), 1),
        (512, 512, (300, 512, "stretch"), 1),  # one axis needs the full size
        # Odd sizes where ceil changes the geometry: chelsea (300x451) padded to 64x64 is
        # round(300 * 64/451) = round(42.57) = 43 x 64 from the full size, but from d=2 (150x226)
        # round(150 * 64/226) = round(42.48) = 42 rows, from d=4 (75x113) round(42.48) = 42;
        # d=8 (38x57) is too small. So no reduction.
        (300, 451, (64, 64, "pad"), 1),
        # The same image stretched has no such problem: d=4 75x113 >= 64x64; d=8 38 < 64.
        (300, 451, (64, 64, "stretch"), 4),
        # Sides of 1 px: 1x100 to 1x10: every d shrinks the width (1x50, 1x25, 1x13).
        (1, 100, (1, 10, "stretch"), 8),
        # 1x1 to 1x1: no d shrinks anything.
        (1, 1, (1, 1, "stretch"), 1),
        # 3x3 to 1x1: d=2 2x2, d=4 1x1, d=8 1x1 again (no gain): 4.
        (3, 3, (1, 1, "stretch"), 4),
    ],
)
def test_reduction_factor_by_hand(height, width, target, expected):
    assert reduction_factor(height, width, target) == expected


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_resize_intermediate_is_what_resize_image_scales_to(mode, monkeypatch):
    """The mirror in decode.py equals the size resize_image really passes to cv2.resize."""
    seen = []
    real = cv2.resize

    def spy(image, dsize, **kwargs):
        seen.append((dsize[1], dsize[0]))
        return real(image, dsize, **kwargs)

    monkeypatch.setattr(transforms.cv2, "resize", spy)
    rng = np.random.default_rng(11)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 400, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 200, 2))
        seen.clear()
        transforms.resize_image(np.zeros((h, w, 3), np.uint8), (out_h, out_w), mode=mode)
        expected = seen[0] if seen else (h, w)  # no resize call: the image already has the size
        assert resize_intermediate(h, w, (out_h, out_w, mode)) == expected, (h, w, out_h, out_w)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_reduction_never_makes_the_resize_enlarge_or_move(mode):
    rng = np.random.default_rng(5)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(1, 5000, 2))
        target = (int(rng.integers(1, 600)), int(rng.integers(1, 600)), mode)
        d = reduction_factor(h, w, target)
        assert d in JPEG_REDUCTIONS
        need = resize_intermediate(h, w, target)
        reduced = (ceil_div(h, d), ceil_div(w, d))
        if d > 1:  # (d = 1 is the full image, which the resize may enlarge: nothing to decide)
            assert reduced[0] >= need[0] and reduced[1] >= need[1]
            assert resize_intermediate(*reduced, target) == need
        for larger in (x for x in JPEG_REDUCTIONS if x > d):  # each is too small, moves, or gains nothing
            smaller = (ceil_div(h, larger), ceil_div(w, larger))
            assert (smaller[0] < need[0] or smaller[1] < need[1]
                    or resize_intermediate(*smaller, target) != need or smaller == reduced), (h, w, target, larger)


# ---------------------------------------------------------------------------
# Reduced decoding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("target, d", [((64, 64, "stretch"), 8), ((150, 200, "stretch"), 4),
                                       ((300, 300, "aspect_crop"), 2), ((753, 1001, "pad"), 1)])
def test_reduced_shape_and_original_size(big_jpeg, target, d):
    assert reduction_factor(753, 1001, target) == d
    image = decode_image(big_jpeg, target=target)
    px = image.pixels
    assert px.shape == (ceil_div(753, d), ceil_div(1001, d), 3)
    assert px.dtype == np.uint8 and px.flags.c_contiguous and px.flags.writeable
    assert (image.orig_height, image.orig_width, image.format) == (753, 1001, "jpeg")
    expected = plain_full(big_jpeg) if d == 1 else plain_reduced(big_jpeg, d)
    assert np.array_equal(px, expected)


def test_scale_bits_with_rgb_equal_the_reduced_bgr_route(big_jpeg):
    """decode.py ORs the bare scale bit into IMREAD_COLOR_RGB; that must equal IMREAD_REDUCED_COLOR_d + cvtColor."""
    for d in (2, 4, 8):
        flags = decode_mod._OPENCV_RGB_FLAGS | decode_mod._JPEG_SCALE_FLAGS[d]
        assert np.array_equal(cv2.imdecode(np.frombuffer(big_jpeg, np.uint8), flags), plain_reduced(big_jpeg, d))


def test_target_none_is_todays_full_decode(big_jpeg):
    for target in (None, (2000, 2000, "stretch"), (753, 1001, "aspect_crop")):  # the last two give d=1
        image = decode_image(big_jpeg, target=target)
        assert np.array_equal(image.pixels, plain_full(big_jpeg))
        assert (image.orig_height, image.orig_width) == image.pixels.shape[:2] == (753, 1001)


@pytest.mark.parametrize("d, target", [(2, (300, 300, "stretch")), (4, (150, 200, "stretch")),
                                       (8, (64, 64, "stretch"))])
def test_grayscale_cmyk_and_progressive_jpegs_reduced(d, target):
    rgb = cv2.resize(photo_rgb(), (1001, 753), interpolation=cv2.INTER_CUBIC)
    gray = encode_pil(Image.fromarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), "JPEG", quality=90)
    cmyk = encode_pil(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    progressive = encode_pil(Image.fromarray(rgb), "JPEG", quality=90, progressive=True)
    assert b"\xff\xc2" in progressive  # SOF2
    shape = (ceil_div(753, d), ceil_div(1001, d), 3)
    p = decode_image(progressive, target=target)
    assert p.pixels.shape == shape and (p.orig_height, p.orig_width) == (753, 1001)
    assert np.array_equal(p.pixels, plain_reduced(progressive, d))
    g = decode_image(gray, target=target)
    assert g.pixels.shape == shape and (g.orig_height, g.orig_width) == (753, 1001)
    assert np.array_equal(g.pixels[..., 0], g.pixels[..., 1]) and np.array_equal(g.pixels[..., 0], g.pixels[..., 2])
    assert np.array_equal(g.pixels, plain_reduced(gray, d))
    c = decode_image(cmyk, target=target)
    assert c.pixels.shape == shape and (c.orig_height, c.orig_width) == (753, 1001)
    assert np.array_equal(c.pixels, plain_reduced(cmyk, d))
    # Sensible colours: close to the reduced decode of the same photo stored as RGB.
    ref = decode_image(jpeg(rgb, 95), target=target).pixels
    assert np.abs(c.pixels.astype(int) - ref).mean() < 3.0


# The stored pixels S of an image displayed as A for EXIF orientation 6 (row 0 = right side,
# column 0 = top), as in test_decode.py.
def stored_for_6(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[:, ::-1].transpose(1, 0, 2))


def test_exif_orientation_6_reduced():
    shown = cv2.resize(photo_rgb(), (640, 480), interpolation=cv2.INTER_AREA)  # displayed 480x640
    stored = stored_for_6(shown)  # 640x480 as stored
    plain = encode_pil(Image.fromarray(stored), "JPEG", quality=90)
    oriented = encode_pil(Image.fromarray(stored), "JPEG", quality=90, exif=exif_bytes(6))
    # d is computed on the displayed size: (160, 20) stretch on 480x640 allows d=2 (240x320; d=4 has 120
    # rows < 160). On the stored 640x480 it would have allowed d=4 (160x120), so the shape tells.
    image = decode_image(oriented, target=(160, 20, "stretch"))
    assert image.pixels.shape == (240, 320, 3)
    assert (image.orig_height, image.orig_width) == (480, 640)
    # Same scans, only the EXIF block differs: the reduced stored pixels, oriented as today.
    assert np.array_equal(stored_for_6(image.pixels), plain_reduced(plain, 2))
    # And the same orientation as the full decode: the reduced decode enlarged back to 480x640 is
    # close to it, where the same pixels turned by 180 degrees are far off.
    full = decode_image(oriented).pixels.astype(int)
    assert full.shape == (480, 640, 3)
    up = cv2.resize(image.pixels, (640, 480), interpolation=cv2.INTER_LINEAR)
    right, wrong = np.abs(up - full).mean(), np.abs(cv2.rotate(up, cv2.ROTATE_180) - full).mean()
    assert right < 6.0 and wrong > 4 * right, (right, wrong)


def test_other_formats_ignore_the_target():
    rgb = cv2.resize(photo_rgb(), (800, 600), interpolation=cv2.INTER_AREA)
    target = (64, 64, "stretch")
    for fmt, params in (("PNG", {}), ("WEBP", {"quality": 90}), ("BMP", {}), ("TIFF", {})):
        data = encode_pil(Image.fromarray(rgb), fmt, **params)
        full, reduced = decode_image(data), decode_image(data, target=target)
        assert reduced.pixels.shape == (600, 800, 3), fmt
        assert np.array_equal(full.pixels, reduced.pixels), fmt
        assert (reduced.orig_height, reduced.orig_width) == (600, 800)


def test_rejects_do_not_depend_on_the_target(big_jpeg):
    target = (64, 64, "stretch")
    for cut in (len(big_jpeg) // 2, len(big_jpeg) - 2):
        with pytest.raises(DecodeError) as info:
            decode_image(big_jpeg[:cut], target=target)
        assert info.value.reason == "truncated"
    # The cap applies to the full size, not to the reduced one.
    with pytest.raises(DecodeError) as info:
        decode_image(big_jpeg, max_pixels=753 * 1001 - 1, target=target)
    assert info.value.reason == "too_large"
    assert decode_image(big_jpeg, max_pixels=753 * 1001, target=target).pixels.shape == (95, 126, 3)


@pytest.mark.parametrize("target", [(0, 10, "stretch"), (10, 10, "crop"), "64x64", (True, 10, "pad"),
                                    (10, 10), (10.0, 10, "pad"), (2**31, 10, "pad")])
def test_bad_targets_are_caller_errors(big_jpeg, target):
    with pytest.raises(ValueError):
        decode_image(big_jpeg, target=target)
    with pytest.raises(ValueError):
        IsolatedDecoder(target=target)  # refused before any child starts


def test_isolated_decoder_carries_the_target(big_jpeg):
    shown = cv2.resize(photo_rgb(), (640, 480), interpolation=cv2.INTER_AREA)
    inputs = [
        big_jpeg,
        encode_pil(Image.fromarray(stored_for_6(shown)), "JPEG", quality=90, exif=exif_bytes(6)),
        encode_pil(Image.fromarray(shown).convert("L"), "JPEG", quality=90),
        encode_pil(Image.fromarray(shown), "PNG"),
    ]
    for target in ((64, 64, "aspect_crop"), (100, 30, "pad"), None):
        with IsolatedDecoder(timeout_s=60, target=target) as isolated:
            for data in inputs:
                local, remote = decode_image(data, target=target), isolated.decode(data)
                assert np.array_equal(remote.pixels, local.pixels)
                assert (remote.orig_height, remote.orig_width, remote.format) == (
                    local.orig_height, local.orig_width, local.format)
            with pytest.raises(DecodeError) as info:
                isolated.decode(big_jpeg[:1000])
            assert info.value.reason == "truncated"
    # The reduced case really was reduced in the child.
    with IsolatedDecoder(timeout_s=60, target=(64, 64, "stretch")) as isolated:
        image = isolated.decode(big_jpeg)
    assert image.pixels.shape == (95, 126, 3) and (image.orig_height, image.orig_width) == (753, 1001)


# ---------------------------------------------------------------------------
# Effect on what the pipeline sees: resize(reduced decode) vs resize(full decode)
# ---------------------------------------------------------------------------

PHOTOS = ("astronaut", "coffee", "chelsea", "retina", "hubble_deep_field")

# Mean absolute difference (levels, over all pixels and channels) between
# resize_image(full decode) and resize_image(reduced decode), area interpolation,
# JPEG quality 90, measured with OpenCV 4.14 (d in brackets; "-" = d is 1, skipped):
#
#                        64 stretch   64 aspect_crop   112 stretch   112 aspect_crop
#   astronaut 512x512    0.40 [8]     0.40 [8]         3.01 [4]      3.01 [4]
#   coffee 400x600       1.26 [4]     1.67 [4]         0.71 [2]      0.85 [2]
#   chelsea 300x451      1.88 [4]     2.69 [4]         1.60 [2]      -
#   retina 1411x1411     1.18 [8]     1.18 [8]         1.55 [8]      1.55 [8]
#   hubble 872x1000      1.56 [8]     1.70 [8]         1.02 [4]      1.12 [4]
#
# mean 1.59, max 3.01. The largest differences come where the last resize shrinks
# by little (astronaut 128 -> 112: the DCT-scaled image is sharper than an area
# average over 4.6 px, and area resampling by 1.14 filters almost nothing).
# Bounds with margin: every case < 4.0, the mean < 2.0.
MAD_EACH, MAD_MEAN = 4.0, 2.0


def test_resized_pixels_stay_close_on_real_photographs():
    mads = {}
    for name in PHOTOS:
        rgb = getattr(skdata, name)()
        data = jpeg(rgb, 90)
        full = decode_image(data).pixels
        for side in (64, 112):
            for mode in ("stretch", "aspect_crop"):
                target = (side, side, mode)
                d = reduction_factor(rgb.shape[0], rgb.shape[1], target)
                if d == 1:
                    continue
                reduced = decode_image(data, target=target)
                assert reduced.pixels.shape[:2] == (ceil_div(rgb.shape[0], d), ceil_div(rgb.shape[1], d))
                a = transforms.resize_image(full, (side, side), mode=mode, interpolation="area")
                b = transforms.resize_image(reduced.pixels, (side, side), mode=mode, interpolation="area")
                mads[(name, side, mode, d)] = float(np.abs(a.astype(int) - b).mean())
    assert len(mads) == 19, sorted(mads)
    worst = max(mads, key=mads.get)
    assert mads[worst] < MAD_EACH, (worst, mads[worst])
    assert np.mean(list(mads.values())) < MAD_MEAN, mads


# ---------------------------------------------------------------------------
# The spec knob and its plumbing
# ---------------------------------------------------------------------------


def test_decode_reduce_in_the_spec():
    assert DecodeSpec.parse(None).reduce is True
    assert DecodeSpec.parse({"reduce": False}).reduce is False
    for bad in ("yes", 1, 0, None, "true"):
        with pytest.raises(SpecError, match=r"decode\.reduce must be true or false"):
            DecodeSpec.parse({"reduce": bad})
    on = RunSpec.from_dict({"spec_version": 1, "features": [{"name": "color_stats"}]})
    off = RunSpec.from_dict({"spec_version": 1, "features": [{"name": "color_stats"}], "decode": {"reduce": False}})
    assert on.to_dict()["decode"]["reduce"] is True and off.to_dict()["decode"]["reduce"] is False
    assert RunSpec.from_json(off.to_json()).decode.reduce is False
    assert on.feature_fingerprint() != off.feature_fingerprint()


@pytest.mark.parametrize("isolation", ["none", "subprocess"])
def test_make_decoder_passes_the_target(big_jpeg, isolation):
    base = {"spec_version": 1, "features": [{"name": "color_stats"}],
            "image": {"size": [64, 64], "resize": "aspect_crop"}}
    shapes = {}
    for reduce in (True, False):
        spec = RunSpec.from_dict({**base, "decode": {"reduce": reduce, "isolation": isolation}})
        decoder = make_decoder(spec)
        try:
            image = decoder(big_jpeg)
        finally:
            close = getattr(getattr(decoder, "__self__", None), "close", None)
            if close is not None:
                close()
        shapes[reduce] = image.pixels.shape[:2]
        assert (image.orig_height, image.orig_width) == (753, 1001)
    # aspect_crop 64: s = max(64/753, 64/1001) -> 64 x round(85.08) = 64x85; d=8: 95x126 fits.
    assert shapes == {True: (95, 126), False: (753, 1001)}


def test_webp_has_no_scaled_decode_in_these_bindings():
    """Why WebP ignores the target: Pillow's draft() does nothing for WebP, and OpenCV's reduced
    flags on WebP are the full decode followed by a resize (INTER_LINEAR_EXACT)."""
    rgb = cv2.resize(photo_rgb(), (800, 600), interpolation=cv2.INTER_AREA)
    data = encode_pil(Image.fromarray(rgb), "WEBP", quality=90)
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (200, 150))
    assert im.size == (800, 600)
    buf = np.frombuffer(data, np.uint8)
    full = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    reduced = cv2.imdecode(buf, cv2.IMREAD_REDUCED_COLOR_4)
    assert np.array_equal(reduced, cv2.resize(full, (200, 150), interpolation=cv2.INTER_LINEAR_EXACT))
