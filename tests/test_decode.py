"""Tests of the decode policy (featurelib.decode).

References are independent of the code under test: Pillow and plain
``cv2.imdecode`` decodes, the source arrays of lossless encodes, and values
computed by hand in comments.
"""

from __future__ import annotations

import importlib.util
import io
import multiprocessing
import os
import pathlib
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

import featurelib.decode as decode_mod
from featurelib.decode import (
    ALLOWED_FORMATS,
    DECODE_POLICY_VERSION,
    DEFAULT_MAX_PIXELS,
    FAULT_ENV,
    FAULT_PREFIX,
    DecodedImage,
    IsolatedDecoder,
    PolicyMisconfigured,
    decode_image,
    sniff_format,
)
from featurelib.errors import REASONS, DecodeError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import badfiles  # noqa: E402  (a helper module next to this file)
from badfiles import encode_pil, exif_bytes, png_chunk, png_from_parts  # noqa: E402

BG = (10, 200, 30)  # a background no test image contains, so compositing shows


def reason_of(data: bytes, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_image(data, **kwargs)
    assert info.value.reason in REASONS and info.value.detail
    return info.value


def sklearn_jpeg(name: str) -> bytes:
    """A photo bundled with scikit-learn, found without importing it (slow)."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations
    return (pathlib.Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images" / name).read_bytes()


def pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def cv2_rgb(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def check_contract(image: DecodedImage) -> None:
    px = image.pixels
    assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
    assert px.flags.c_contiguous and px.flags.writeable
    assert (image.orig_height, image.orig_width) == px.shape[:2]
    assert image.format in ALLOWED_FORMATS


# ---------------------------------------------------------------------------
# badfiles: every file gets its reason
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory) -> tuple[pathlib.Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("bad")
    return root, badfiles.write_bad_files(root, label_dir="mixed")


def test_every_bad_file_gets_its_reason(bad_set):
    root, expected = bad_set
    wrong = {}
    for rel, reason in expected.items():
        data = (root / rel).read_bytes()
        try:
            image = decode_image(data)
        except DecodeError as exc:
            assert exc.detail, rel
            got = exc.reason
        else:
            check_contract(image)
            got = None
        if got != reason:
            wrong[rel] = (reason, got)
    assert not wrong, f"expected vs got: {wrong}"


def test_bad_file_details(bad_set):
    root, _ = bad_set

    def detail(name: str) -> str:
        return reason_of((root / "mixed" / name).read_bytes()).detail

    assert "EOI" in detail("photo_truncated_50.jpg")
    assert "EOI" in detail("photo_no_eoi.jpg")
    assert "CRC" in detail("bad_crc.png") and "IDAT" in detail("bad_crc.png")
    assert "10000x9000 = 90000000 pixels > max_pixels 89478485" in detail("bomb_90mp.png")
    assert "13500x13500" in detail("bomb_182mp.png")
    assert "10000x9000" in detail("bomb_90mp.jpg")
    assert detail("figure.eps").startswith("eps ")
    assert detail("layers.psd").startswith("psd ")
    assert "IEND" in detail("truncated.png") or "past the end" in detail("truncated.png")


def test_bad_files_layout_size_and_speed(tmp_path):
    badfiles._payloads.cache_clear()
    start = time.perf_counter()
    expected = badfiles.write_bad_files(tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 2_000_000
    assert all("/" not in k for k in expected)  # no label_dir: directly under root
    labelled = badfiles.write_bad_files(tmp_path, label_dir="cats")
    assert set(labelled) == {f"cats/{k}" for k in expected}
    reasons = {"empty", "unreadable", "unsupported_format", "too_large", "truncated", "corrupt", None}
    assert set(expected.values()) >= reasons


@pytest.mark.parametrize("size", [badfiles.BOMB_90MP, (1000, 9000), (9000, 1000)])
def test_png_bombs_are_real_small_and_declare_their_size(size):
    data = badfiles.png_bomb(*size)
    assert len(data) < 30_000
    width, height = struct.unpack_from(">II", data, 16)
    assert (width, height) == size
    idat_len = struct.unpack_from(">I", data, 33)[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])  # a valid stream of the full image
    assert len(raw) == height * (1 + (width + 7) // 8) and not any(raw[:: 1 << 16])


def test_progressive_and_cmyk_samples_are_what_they_claim(bad_set):
    root, _ = bad_set
    assert b"\xff\xc2" in (root / "mixed" / "progressive.jpg").read_bytes()  # SOF2
    assert Image.open(root / "mixed" / "cmyk.jpg").mode == "CMYK"
    assert getattr(Image.open(root / "mixed" / "animated.gif"), "n_frames", 1) > 1
    assert getattr(Image.open(root / "mixed" / "multipage.tif"), "n_frames", 1) > 1


# ---------------------------------------------------------------------------
# Sniffing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head, fmt",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "png"),
        (b"GIF89a\x01\x00", "gif"),
        (b"GIF87a\x01\x00", "gif"),
        (b"II*\x00\x08\x00\x00\x00", "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "webp"),
        (b"BM" + bytes(12) + struct.pack("<I", 40), "bmp"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "eps"),
        (b"%!PS-Adobe-3.0\n", "postscript"),
        (b"\xc5\xd0\xd3\xc6\x1e\x00", "eps"),
        (b"%PDF-1.7\n", "pdf"),
        (b"8BPS\x00\x01", "psd"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10", "ico"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
        (b"\xff\x4f\xff\x51\x00\x2f", "jpeg2000"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00", "heif"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00", "avif"),
        (b"\xef\xbb\xbf  <svg xmlns='http://www.w3.org/2000/svg'/>", "svg"),
        (b"P6\n16 16\n255\n", "pnm"),
        (b"RIFF\x10\x00\x00\x00AVI LIST", None),
        (b"\x00\x00\x00\x18ftypisom\x00\x00", None),  # an MP4 video is not an image
        (b"PK\x03\x04", None),
        (b"BMW is a car, not a bitmap", None),
        (b"<html><body></body></html>", None),
        (b"\xff\xd8", None),  # too short to be sure
        (b"", None),
    ],
)
def test_sniff_format(head, fmt):
    assert sniff_format(head) == fmt


def test_format_comes_from_content_not_name(bad_set):
    root, _ = bad_set
    png_as_jpg = (root / "mixed" / "png_named.jpg").read_bytes()
    image = decode_image(png_as_jpg)
    assert image.format == "png"
    assert np.array_equal(image.pixels, pil_rgb(png_as_jpg))


def test_eps_never_reaches_pillow(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("Pillow must not be asked to open an EPS")

    monkeypatch.setattr(decode_mod.Image, "open", forbidden)
    assert reason_of(badfiles.EPS).reason == "unsupported_format"


# ---------------------------------------------------------------------------
# Pixels against independent references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(badfiles.skimage_bytes("rocket.jpg"), id="rocket.jpg"),
        pytest.param(badfiles.skimage_bytes("retina.jpg"), id="retina.jpg"),
        pytest.param(sklearn_jpeg("china.jpg"), id="china.jpg"),
        pytest.param(sklearn_jpeg("flower.jpg"), id="flower.jpg"),
    ],
)
def test_real_jpegs_equal_opencv_and_pillow(data):
    # Both bundle libjpeg-turbo with the same IDCT and upsampling: exact equality.
    image = decode_image(data)
    check_contract(image)
    assert image.format == "jpeg"
    assert np.array_equal(image.pixels, cv2_rgb(data))
    assert np.array_equal(image.pixels, pil_rgb(data))


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "brick.png"])
def test_real_pngs_equal_pillow(name):
    data = badfiles.skimage_bytes(name)
    image = decode_image(data)
    check_contract(image)
    assert np.array_equal(image.pixels, pil_rgb(data))  # lossless: exact


@pytest.mark.parametrize(
    "fmt, params",
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"compression": "tiff_deflate"}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_lossless_formats_return_the_source_pixels(fmt, params):
    rgb = badfiles.photo_rgb()
    image = decode_image(encode_pil(Image.fromarray(rgb), fmt, **params))
    check_contract(image)
    assert np.array_equal(image.pixels, rgb)


def test_lossy_webp_equals_pillow():
    data = encode_pil(Image.fromarray(badfiles.photo_rgb()), "WEBP", quality=80)
    assert np.array_equal(decode_image(data).pixels, pil_rgb(data))


def test_progressive_jpeg_equals_references(bad_set):
    root, _ = bad_set
    data = (root / "mixed" / "progressive.jpg").read_bytes()
    assert np.array_equal(decode_image(data).pixels, cv2_rgb(data))
    assert np.array_equal(decode_image(data).pixels, pil_rgb(data))


def test_trailing_bytes_after_eoi_are_ignored():
    data = badfiles.skimage_bytes("rocket.jpg")
    assert np.array_equal(decode_image(data + b"\x00garbage\xff\xd9").pixels, decode_image(data).pixels)


def test_cmyk_jpeg_gives_sensible_colours():
    rgb = badfiles.photo_rgb()
    data = encode_pil(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    image = decode_image(data)
    assert image.format == "jpeg" and image.pixels.shape == rgb.shape
    diff = np.abs(image.pixels.astype(int) - rgb)
    assert diff.mean() < 3.0  # the JPEG round trip of the RGB photo itself is ~1-2
    # OpenCV's CMYK conversion, against Pillow's: within one level.
    assert np.abs(image.pixels.astype(int) - pil_rgb(data)).max() <= 1
    # Channel means (colour cast) stay within 2 levels of the original.
    assert np.abs(image.pixels.mean(axis=(0, 1)) - rgb.mean(axis=(0, 1))).max() < 2.0


# ---------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------

# The stored pixels S of an image displayed as A, for each EXIF orientation,
# written from the EXIF specification ("the 0th row is the visual ..., the 0th
# column is the visual ..."), e.g. 6: row 0 = right side, column 0 = top,
# so S[i, j] = A[j, W - 1 - i].
STORED_FROM_DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # row 0 top, column 0 right
    3: lambda a: a[::-1, ::-1],  # row 0 bottom, column 0 right
    4: lambda a: a[::-1, :],  # row 0 bottom, column 0 left
    5: lambda a: a.transpose(1, 0, 2),  # row 0 left, column 0 top
    6: lambda a: a[:, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 top
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 bottom
    8: lambda a: a[::-1, :].transpose(1, 0, 2),  # row 0 left, column 0 bottom
}


def display_image() -> np.ndarray:
    return np.ascontiguousarray(badfiles.photo_rgb()[40:80, 100:164])  # 40x64: not square


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])  # RGBA (opaque) takes the IMREAD_UNCHANGED path
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_matches_hand_transposition(orientation, mode):
    shown = display_image()
    stored = np.ascontiguousarray(STORED_FROM_DISPLAY[orientation](shown))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode_pil(Image.fromarray(stored).convert(mode), "PNG", exif=exif)
    image = decode_image(data)
    assert np.array_equal(image.pixels, shown)
    assert (image.orig_height, image.orig_width) == shown.shape[:2]
    # Pillow's exif_transpose agrees.
    transposed = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(image.pixels, np.asarray(transposed))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_jpeg_matches_hand_transposition(orientation):
    stored = np.ascontiguousarray(STORED_FROM_DISPLAY[orientation](display_image()))
    # Same pixels, same quality: identical scans, only the EXIF block differs.
    plain = decode_image(encode_pil(Image.fromarray(stored), "JPEG", quality=90)).pixels
    oriented = decode_image(encode_pil(Image.fromarray(stored), "JPEG", quality=90, exif=exif_bytes(orientation)))
    assert np.array_equal(STORED_FROM_DISPLAY[orientation](oriented.pixels), plain)
    assert (oriented.orig_height, oriented.orig_width) == (40, 64)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["TIFF", "WEBP"])
def test_exif_orientation_tiff_and_webp(fmt, orientation):
    shown = display_image()
    stored = Image.fromarray(np.ascontiguousarray(STORED_FROM_DISPLAY[orientation](shown)))
    if fmt == "TIFF":
        data = encode_pil(stored, "TIFF", tiffinfo={0x0112: orientation})
    else:
        data = encode_pil(stored, "WEBP", lossless=True, exif=exif_bytes(orientation))
    assert np.array_equal(decode_image(data).pixels, shown)


def tiff_rgb16(pixels: np.ndarray, orientation: int) -> bytes:
    """A minimal uncompressed little-endian 16-bit RGB TIFF, written by hand."""
    height, width, _ = pixels.shape
    body = pixels.astype("<u2").tobytes()
    entries = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, None),  # BitsPerSample 16,16,16: stored after the IFD
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, None),  # StripOffsets: after the bits
        (274, 3, 1, orientation),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, len(body)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    strip_at = bits_at + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = {258: bits_at, 273: strip_at}.get(tag, value)
        field = struct.pack("<H2x", value) if typ == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + field
    out += struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16) + body
    return bytes(out)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit_tiff(orientation):
    shown16 = (display_image().astype(np.uint16) * 257) + 100  # 8-bit value v -> round((257 v + 100) / 257) = v
    stored = np.ascontiguousarray(STORED_FROM_DISPLAY[orientation](shown16))
    image = decode_image(tiff_rgb16(stored, orientation))
    assert np.array_equal(image.pixels, display_image())


@pytest.mark.parametrize("value", [0, 9, 255])
def test_out_of_range_orientation_means_as_stored(value):
    stored = display_image()
    exif = Image.Exif()
    exif[0x0112] = value
    assert np.array_equal(decode_image(encode_pil(Image.fromarray(stored), "PNG", exif=exif)).pixels, stored)


def test_broken_exif_block_is_ignored():
    stored = display_image()
    jpeg = encode_pil(Image.fromarray(stored), "JPEG", quality=90)
    app1 = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"  # IFD offset far beyond the block
    broken = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    assert np.array_equal(decode_image(broken).pixels, decode_image(jpeg).pixels)


# ---------------------------------------------------------------------------
# 16-bit, grayscale, alpha
# ---------------------------------------------------------------------------

# round(v / 257), by hand: 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1,
# 385/257 = 1.498 -> 1, 386/257 = 1.502 -> 2, 25828/257 = 100.498 -> 100,
# 25829/257 = 100.502 -> 101.  Dropping the low byte (v >> 8) would give
# 0, 0, 1, 1, 100, 100 -- different in three places.
V16 = [0, 128, 129, 385, 386, 25828, 25829, 65535]
V8 = [0, 0, 1, 1, 2, 100, 101, 255]


def test_16bit_gray_png_rule():
    data = encode_pil(Image.fromarray(np.array([V16], np.uint16)), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    px = decode_image(data).pixels
    assert px[0, :, 0].tolist() == V8
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 0], px[..., 2])


def test_16bit_rgb_png_rule():
    rgb16 = np.array([[V16, V16[::-1], [V16[3]] * 8]], np.uint16).transpose(0, 2, 1)  # (1, 8, 3)
    data = cv2.imencode(".png", np.ascontiguousarray(rgb16[..., ::-1]))[1].tobytes()
    px = decode_image(data).pixels
    assert px[0, :, 0].tolist() == V8
    assert px[0, :, 1].tolist() == V8[::-1]
    assert px[0, :, 2].tolist() == [1] * 8


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_tiff_rule(channels):
    values = np.array(V16, np.uint16).reshape(1, 8)
    if channels == 1:
        data = encode_pil(Image.fromarray(values), "TIFF")
    else:
        planes = [values, values[:, ::-1], np.full_like(values, 385)]  # R, G, B
        alpha = [np.full_like(values, 65535)] if channels == 4 else []
        data = cv2.imencode(".tiff", np.dstack(planes[::-1] + alpha))[1].tobytes()  # OpenCV writes BGR(A)
    px = decode_image(data).pixels
    assert px[0, :, 0].tolist() == V8
    if channels > 1:
        assert px[0, :, 1].tolist() == V8[::-1] and px[0, :, 2].tolist() == [1] * 8


def test_16bit_rgba_reduces_before_compositing():
    # (250, 0, 100, 128) * 257 reduces to (250, 0, 100, 128), which composites
    # to (130, 100, 65) over BG (see test_alpha_compositing_by_hand).
    rgba16 = (np.array([[[250, 0, 100, 128]]], np.uint32) * 257).astype(np.uint16)
    data = cv2.imencode(".png", np.ascontiguousarray(rgba16[..., [2, 1, 0, 3]]))[1].tobytes()
    assert decode_image(data, background=BG).pixels.tolist() == [[[130, 100, 65]]]


def test_grayscale_is_replicated(bad_set):
    root, _ = bad_set
    for name in ("gray.png", "gray.jpg"):
        data = (root / "mixed" / name).read_bytes()
        px = decode_image(data).pixels
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        for c in range(3):
            assert np.array_equal(px[..., c], gray), name


@pytest.mark.parametrize(
    "bits, row, expected",
    [
        (1, bytes([0b01100000]), [0, 255, 255, 0]),  # samples 0 1 1 0, padded
        (2, bytes([0b00011011]), [0, 85, 170, 255]),  # samples 0 1 2 3: v * 255 / 3
        (4, bytes([0x01, 0xEF]), [0, 17, 238, 255]),  # samples 0 1 14 15: v * 255 / 15
    ],
)
def test_low_bit_depth_gray_is_scaled(bits, row, expected):
    data = png_from_parts(4, 1, bits, 0, zlib.compress(b"\x00" + row))
    assert decode_image(data).pixels[0, :, 0].tolist() == expected


def test_alpha_compositing_by_hand():
    # out = (c * a + bg * (255 - a) + 127) // 255 with bg = (10, 200, 30):
    #   a = 0   -> bg exactly
    #   a = 255 -> c exactly
    #   (250, 0, 100, 128): R (32000 + 1270 + 127) // 255 = 130   (exact 130.47)
    #                       G (0 + 25400 + 127) // 255 = 100      (exact 99.61)
    #                       B (12800 + 3810 + 127) // 255 = 65    (exact 65.14)
    #   (0, 255, 255, 1):   R (0 + 2540 + 127) // 255 = 10        (exact 9.96)
    #                       G (255 + 50800 + 127) // 255 = 200    (exact 200.22)
    #                       B (255 + 7620 + 127) // 255 = 31      (exact 30.88)
    #   (1, 1, 1, 128):     R (128 + 1270 + 127) // 255 = 5       (exact 5.48)
    #                       G (128 + 25400 + 127) // 255 = 100    (exact 100.11)
    #                       B (128 + 3810 + 127) // 255 = 15      (exact 15.44)
    rgba = np.array(
        [[[250, 0, 100, 0], [250, 0, 100, 255], [250, 0, 100, 128], [0, 255, 255, 1], [1, 1, 1, 128]]], np.uint8
    )
    expected = [[[10, 200, 30], [250, 0, 100], [130, 100, 65], [10, 200, 31], [5, 100, 15]]]
    sources = {
        "png": encode_pil(Image.fromarray(rgba, "RGBA"), "PNG"),
        "webp": encode_pil(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True, exact=True),
        "tiff": encode_pil(Image.fromarray(rgba, "RGBA"), "TIFF"),
    }
    for fmt, data in sources.items():
        assert decode_image(data, background=BG).pixels.tolist() == expected, fmt
    # Default background: white.
    assert decode_image(sources["png"]).pixels[0, 0].tolist() == [255, 255, 255]


def test_gray_alpha_png_by_hand():
    # gray 200, alpha 64: R (12800 + 1910 + 127) // 255 = 58, G (12800 + 38200 + 127) // 255 = 200,
    # B (12800 + 5730 + 127) // 255 = 73
    data = encode_pil(Image.fromarray(np.array([[[200, 64], [7, 255]]], np.uint8), "LA"), "PNG")
    assert decode_image(data, background=BG).pixels.tolist() == [[[58, 200, 73], [7, 7, 7]]]


def test_palette_with_transparency_by_hand():
    # palette red, green, blue with alpha 0, 128, 255; green at 128:
    # R (0 + 1270 + 127) // 255 = 5, G (32640 + 25400 + 127) // 255 = 228, B (0 + 3810 + 127) // 255 = 15
    image = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    data = encode_pil(image, "PNG", transparency=bytes([0, 128, 255]))
    assert decode_image(data, background=BG).pixels.tolist() == [[[10, 200, 30], [5, 228, 15], [0, 0, 255]]]


def test_gray_and_rgb_trns_key_colour():
    # OpenCV ignores a grayscale tRNS key; the policy honours it.
    gray = encode_pil(Image.fromarray(np.array([[0, 100, 200]], np.uint8)), "PNG", transparency=100)
    assert decode_image(gray, background=BG).pixels.tolist() == [[[0, 0, 0], [10, 200, 30], [200, 200, 200]]]
    trns16 = png_chunk(b"tRNS", struct.pack(">H", 2000))
    gray16 = png_from_parts(2, 1, 16, 0, zlib.compress(b"\x00" + struct.pack(">2H", 1000, 2000)), extra=trns16)
    assert decode_image(gray16, background=BG).pixels.tolist() == [[[4, 4, 4], [10, 200, 30]]]  # 1000/257 = 3.89
    trns1 = png_chunk(b"tRNS", struct.pack(">H", 1))
    gray1 = png_from_parts(4, 1, 1, 0, zlib.compress(b"\x00" + bytes([0b01010000])), extra=trns1)
    assert decode_image(gray1, background=BG).pixels[0, :, 1].tolist() == [0, 200, 0, 200]
    rgb = encode_pil(Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)), "PNG", transparency=(4, 5, 6))
    assert decode_image(rgb, background=BG).pixels.tolist() == [[[1, 2, 3], [10, 200, 30]]]


def test_gif_transparency_is_composited():
    image = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    image.putpalette([1, 2, 3, 200, 100, 50] + [0] * 762)
    data = encode_pil(image, "GIF", transparency=0)
    assert decode_image(data, background=BG).pixels.tolist() == [[[10, 200, 30], [200, 100, 50]]]


# ---------------------------------------------------------------------------
# Frames, tiny images
# ---------------------------------------------------------------------------


def test_first_frame_of_animated_gif():
    frames = [Image.new("RGB", (5, 3), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = decode_image(out.getvalue())
    assert image.format == "gif" and image.pixels.shape == (3, 5, 3)
    assert (image.pixels == [255, 0, 0]).all()


def test_first_frame_of_real_animated_gif():
    data = badfiles.skimage_bytes("no_time_for_that_tiny.gif")
    reference = Image.open(io.BytesIO(data))
    assert reference.n_frames > 1
    assert np.array_equal(decode_image(data).pixels, np.asarray(reference.convert("RGB")))


def test_first_page_of_multipage_tiff():
    pages = [Image.new("RGB", (4, 2), colour) for colour in [(9, 8, 7), (1, 2, 3)]]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])
    assert (decode_image(out.getvalue()).pixels == [9, 8, 7]).all()
    data = badfiles.skimage_bytes("multipage.tif")
    assert np.array_equal(decode_image(data).pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1)])
def test_tiny_images(fmt, shape):
    rgb = np.zeros(shape + (3,), np.uint8)
    rgb[..., 0] = 200
    image = decode_image(encode_pil(Image.fromarray(rgb), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    check_contract(image)
    assert image.pixels.shape == rgb.shape
    assert np.abs(image.pixels.astype(int) - rgb).max() <= 3  # JPEG: a few levels


# ---------------------------------------------------------------------------
# Pixel cap: checked from the header, before decoding
# ---------------------------------------------------------------------------


def forbid_decoding(monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("pixel data decoded despite the cap")

    monkeypatch.setattr(decode_mod.cv2, "imdecode", no_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "TIFF16"])
def test_pixel_cap_exact_limit_passes_one_over_fails_without_decoding(fmt, monkeypatch):
    rgb = badfiles.photo_rgb()[:5, :7]  # 35 pixels
    if fmt == "TIFF16":
        data = cv2.imencode(".tiff", (rgb.astype(np.uint16) * 257)[..., ::-1].copy())[1].tobytes()
    else:
        data = encode_pil(Image.fromarray(rgb), fmt)
    assert decode_image(data, max_pixels=35).pixels.shape == (5, 7, 3)
    forbid_decoding(monkeypatch)
    exc = reason_of(data, max_pixels=34)
    assert exc.reason == "too_large"
    assert "7x5 = 35 pixels > max_pixels 34" in exc.detail


def test_bombs_are_rejected_from_the_header(bad_set, monkeypatch):
    root, _ = bad_set
    forbid_decoding(monkeypatch)
    for name in ("bomb_90mp.png", "bomb_182mp.png", "bomb_90mp.jpg", "bomb_screen.gif"):
        data = (root / "mixed" / name).read_bytes()
        start = time.perf_counter()
        assert reason_of(data).reason == "too_large", name
        assert time.perf_counter() - start < 0.05, name


def test_opencv_side_limit_is_too_large_not_corrupt():
    # 2,000,000 x 1 is under max_pixels but over OpenCV's 2**20 width limit.
    exc = reason_of(png_from_parts(2_000_000, 1, 1, 0, zlib.compress(bytes(250_001))))
    assert exc.reason == "too_large" and "OpenCV" in exc.detail


def test_raising_the_cap_lets_a_pillow_format_past_pillows_warning(monkeypatch):
    # Pillow warns above its MAX_IMAGE_PIXELS; our cap has authority over that warning.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    data = encode_pil(Image.new("RGB", (7, 5)), "GIF")
    assert decode_image(data, max_pixels=35).pixels.shape == (5, 7, 3)
    assert reason_of(data, max_pixels=34).reason == "too_large"


# ---------------------------------------------------------------------------
# Truncation and corruption
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["baseline", "progressive", "png", "png_interlaced"])
def test_every_prefix_is_rejected(kind):
    rgb = badfiles.photo_rgb()[:12, :20]
    if kind == "baseline":
        data = encode_pil(Image.fromarray(rgb), "JPEG", quality=90)
    elif kind == "progressive":
        data = encode_pil(Image.fromarray(rgb), "JPEG", quality=90, progressive=True)
    elif kind == "png":
        data = encode_pil(Image.fromarray(rgb), "PNG")
    else:
        data = encode_pil(Image.fromarray(rgb), "PNG", interlace=1)
    decode_image(data)  # the whole file decodes
    signature = 3 if kind in ("baseline", "progressive") else 8
    for cut in range(len(data)):
        with pytest.raises(DecodeError) as info:
            decode_image(data[:cut])
        expected = "empty" if cut == 0 else "unreadable" if cut < signature else "truncated"
        assert info.value.reason == expected, (cut, info.value)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP"])
def test_truncated_pillow_formats(fmt):
    data = encode_pil(Image.fromarray(badfiles.photo_rgb()), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    for fraction in (0.33, 0.5, 0.9):
        assert reason_of(data[: int(len(data) * fraction)]).reason == "truncated", (fmt, fraction)


def test_crc_is_checked_in_every_chunk():
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encode_pil(Image.fromarray(badfiles.photo_rgb()[:8, :8]), "PNG", exif=exif)
    for chunk in (b"IHDR", b"eXIf", b"IDAT", b"IEND"):
        exc = reason_of(badfiles.break_crc(data, chunk))
        assert exc.reason == "corrupt" and chunk.decode() in exc.detail


def test_corrupt_headers():
    assert reason_of(png_from_parts(0, 5, 8, 2, zlib.compress(b""))).reason == "corrupt"  # zero width
    no_idat = png_from_parts(1, 1, 8, 0, b"")[:-24] + png_chunk(b"IEND", b"")
    assert "IDAT" in reason_of(no_idat).detail
    bad_zlib = png_from_parts(4, 4, 8, 2, b"not zlib at all")
    assert reason_of(bad_zlib).reason == "corrupt"
    jpeg = bytearray(encode_pil(Image.new("RGB", (8, 8)), "JPEG"))
    sos = jpeg.index(b"\xff\xda")
    jpeg[sos + 2 : sos + 4] = b"\x00\x01"  # segment length 1
    assert reason_of(bytes(jpeg)).reason == "corrupt"


def test_jpeg_with_12_bit_precision_is_unsupported():
    jpeg = bytearray(encode_pil(Image.new("RGB", (8, 8)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 4] = 12
    exc = reason_of(bytes(jpeg))
    assert exc.reason == "unsupported_format" and "12-bit" in exc.detail


def test_pillow_warning_is_a_reject(monkeypatch):
    original = ImageFile.ImageFile.load

    def warning_load(self):
        warnings.warn("something odd in this file", UserWarning)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", warning_load)
    exc = reason_of(encode_pil(Image.new("RGB", (3, 3)), "BMP"))
    assert exc.reason == "corrupt" and "something odd" in exc.detail


def test_load_truncated_images_must_stay_off(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(PolicyMisconfigured):
        decode_image(encode_pil(Image.new("RGB", (3, 3)), "GIF"))


def test_reject_details_are_reproducible():
    data = encode_pil(Image.new("RGB", (8, 8)), "TIFF", compression="tiff_lzw")
    broken = data[:8] + b"\x00" * (len(data) - 8)
    details = {reason_of(broken).detail for _ in range(3)}
    assert len(details) == 1 and "0x" not in details.pop()


def test_bad_arguments_are_caller_errors():
    data = encode_pil(Image.new("RGB", (2, 2)), "PNG")
    with pytest.raises(ValueError):
        decode_image(data, background=(0, 0, 256))
    with pytest.raises(ValueError):
        decode_image(data, max_pixels=0)
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]
    assert decode_image(bytearray(data)).pixels.shape == (2, 2, 3)


def test_constants():
    assert DECODE_POLICY_VERSION == 3
    assert DEFAULT_MAX_PIXELS == 89_478_485
    assert ALLOWED_FORMATS == ("jpeg", "png", "bmp", "gif", "tiff", "webp")


# ---------------------------------------------------------------------------
# Property test: only DecodeError, whatever the bytes
# ---------------------------------------------------------------------------


def _seed_files() -> list[bytes]:
    rgb = badfiles.photo_rgb()[:12, :16]
    im = Image.fromarray(rgb)
    rgba = Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA")
    return [
        encode_pil(im, "JPEG", quality=80),
        encode_pil(im, "JPEG", quality=80, progressive=True, exif=exif_bytes(6)),
        encode_pil(im, "PNG"),
        encode_pil(rgba, "PNG"),
        encode_pil(im.convert("P"), "PNG", transparency=3),
        encode_pil(Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "PNG"),
        encode_pil(im.convert("P"), "GIF"),
        encode_pil(im, "BMP"),
        encode_pil(rgba, "TIFF", compression="tiff_lzw"),
        encode_pil(im, "WEBP", quality=60),
        encode_pil(rgba, "WEBP", lossless=True),
    ]


SEEDS = _seed_files()
CAP = 1 << 18  # mutated headers may declare big images: keep each decode cheap


def refresh_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk CRC (best effort), so mutations reach libpng."""
    out = bytearray(data)
    pos = 8
    while pos + 12 <= len(out):
        length = struct.unpack_from(">I", out, pos)[0]
        if pos + 12 + length > len(out):
            break
        struct.pack_into(">I", out, pos + 8 + length, zlib.crc32(out[pos + 4 : pos + 8 + length]))
        pos += 12 + length
    return bytes(out)


def assert_only_decode_errors(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning leaking out is a failure too
        try:
            image = decode_image(data, max_pixels=CAP)
        except DecodeError as exc:
            assert exc.reason in REASONS
            return
    check_contract(image)
    assert image.pixels.shape[0] * image.pixels.shape[1] <= CAP


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_decode_error(data):
    assert_only_decode_errors(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
    fix_crc=st.booleans(),
)
def test_mutated_images_only_raise_decode_error(seed, edits, cut, fix_crc):
    data = bytearray(SEEDS[seed])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    data = bytes(data)
    if fix_crc and data.startswith(b"\x89PNG"):
        data = refresh_png_crcs(data)
    assert_only_decode_errors(data)


# ---------------------------------------------------------------------------
# IsolatedDecoder
# ---------------------------------------------------------------------------


@pytest.fixture
def faulty_env(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1")  # inherited by children started from now on


@pytest.fixture(scope="module")
def shared_isolated():
    # Only the child's start sees the variable removed: a module-long removal would leak
    # into every process started meanwhile (the multiprocessing forkserver is started once
    # per test run and keeps the environment it was started with).
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(FAULT_ENV, raising=False)  # this child never honours faults
        isolated = IsolatedDecoder(timeout_s=20)
    with isolated:
        yield isolated


def test_isolated_matches_in_process(bad_set, shared_isolated):
    root, expected = bad_set
    for rel in expected:
        data = (root / rel).read_bytes()
        try:
            local = decode_image(data)
        except DecodeError as exc:
            with pytest.raises(DecodeError) as info:
                shared_isolated.decode(data)
            assert (info.value.reason, info.value.detail) == (exc.reason, exc.detail), rel
        else:
            remote = shared_isolated.decode(data)
            check_contract(remote)
            assert np.array_equal(remote.pixels, local.pixels), rel
            assert (remote.format, remote.orig_height, remote.orig_width) == (
                local.format,
                local.orig_height,
                local.orig_width,
            )


def test_isolated_passes_cap_and_background():
    data = encode_pil(Image.fromarray(np.array([[[9, 9, 9, 0]]], np.uint8), "RGBA"), "PNG")
    with IsolatedDecoder(timeout_s=20, max_pixels=1, background=BG) as isolated:
        assert isolated.decode(data).pixels.tolist() == [[[10, 200, 30]]]
        with pytest.raises(DecodeError) as info:
            isolated.decode(encode_pil(Image.new("RGB", (2, 1)), "PNG"))
        assert info.value.reason == "too_large"


def test_isolated_hang_and_crashes_become_rejects_and_it_recovers(faulty_env):
    photo = badfiles.skimage_bytes("rocket.jpg")
    reference = decode_image(photo).pixels
    with IsolatedDecoder(timeout_s=1.0) as isolated:
        first_pid = isolated.pid
        assert np.array_equal(isolated.decode(photo).pixels, reference)

        start = time.perf_counter()
        with pytest.raises(DecodeError) as info:
            isolated.decode(FAULT_PREFIX + b"hang")
        assert info.value.reason == "timeout" and "within 1 s" in info.value.detail
        assert 0.9 < time.perf_counter() - start < 5.0
        assert np.array_equal(isolated.decode(photo).pixels, reference)
        assert isolated.pid != first_pid

        with pytest.raises(DecodeError) as info:
            isolated.decode(FAULT_PREFIX + b"exit")
        assert info.value.reason == "crashed" and "exit code 70" in info.value.detail
        assert np.array_equal(isolated.decode(photo).pixels, reference)

        with pytest.raises(DecodeError) as info:
            isolated.decode(FAULT_PREFIX + b"segfault")
        assert info.value.reason == "crashed" and "SIGSEGV" in info.value.detail
        assert np.array_equal(isolated.decode(photo).pixels, reference)


def test_child_killed_between_calls_is_not_blamed_on_the_next_image():
    photo = badfiles.skimage_bytes("rocket.jpg")
    with IsolatedDecoder(timeout_s=20) as isolated:
        pid = isolated.pid
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert isolated.decode(photo).pixels.shape == (427, 640, 3)
        assert isolated.pid != pid


def test_fault_payload_is_inert_without_the_variable(shared_isolated):
    with pytest.raises(DecodeError) as info:
        shared_isolated.decode(FAULT_PREFIX + b"hang")
    assert info.value.reason == "unreadable"


def test_close_stops_the_child():
    isolated = IsolatedDecoder(timeout_s=5)
    pid = isolated.pid
    isolated.close()
    assert isolated.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    isolated.close()  # idempotent


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_isolated_inside_a_multiprocessing_worker(method):
    photo = badfiles.skimage_bytes("rocket.jpg")
    with multiprocessing.get_context(method).Pool(1) as pool:
        daemon, shape, reason = pool.apply(badfiles.decode_in_pool_worker, (photo,))
    assert daemon  # where multiprocessing.Process would be refused
    assert shape == (427, 640, 3) and reason == "truncated"


def test_child_exits_when_its_parent_dies(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys
        from featurelib.decode import IsolatedDecoder
        d = IsolatedDecoder(timeout_s=5)
        print(d.pid, flush=True)
        os._exit(0)  # no close(): the child is orphaned
        """
    )
    root = pathlib.Path(decode_mod.__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root)
    child = int(out.stdout.strip())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            status = pathlib.Path(f"/proc/{child}/status").read_text()
        except FileNotFoundError:
            return
        if "\nState:\tZ" in status:  # exited; waiting for init to reap it
            return
        time.sleep(0.1)
    pytest.fail("the orphaned decoder process is still running")


def test_isolated_decoder_is_not_picklable(shared_isolated):
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(shared_isolated)
