"""Bad and tricky image files for tests, with the reject reason each must get.

:func:`write_bad_files` writes them under a folder; other tests mix them into
real samples and check the ledger.  Sources are offline only: the photographs
bundled with scikit-image (``rocket.jpg`` is a real camera JPEG), everything
else is encoded here with OpenCV/Pillow or crafted by hand.  The payloads are
built once per process (cached, ~0.2 s); writing the whole set then takes
~10 ms and about 600 KB of disk.

The expected reasons follow the policy documented in :mod:`featurelib.decode`
(``None`` means "must decode"), but this module does not import it: the
expectations are written down independently.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pathlib
import random
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

#: Declared sizes (width, height) of the bombs.
BOMB_90MP = (10_000, 9_000)  # 90,000,000 pixels: just over Pillow's/featurelib's 89,478,485
BOMB_182MP = (13_500, 13_500)  # 182,250,000: over Pillow's hard limit (2 x 89,478,485)


def skimage_data_path(name: str) -> pathlib.Path:
    """Path of a file bundled in ``skimage/data`` (found without importing scikit-image)."""
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "scikit-image is not installed"
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "data" / name


@functools.lru_cache(maxsize=None)
def skimage_bytes(name: str) -> bytes:
    return skimage_data_path(name).read_bytes()


@functools.lru_cache(maxsize=None)
def photo_rgb() -> np.ndarray:
    """A real photograph (chelsea, the cat), ``(300, 451, 3)`` RGB ``uint8``."""
    bgr = cv2.imdecode(np.frombuffer(skimage_bytes("chelsea.png"), np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[..., ::-1])


def encode_pil(image: Image.Image, fmt: str, **params) -> bytes:
    """Encode a Pillow image to bytes."""
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_from_parts(
    width: int, height: int, bit_depth: int, color_type: int, idat: bytes, *, extra: bytes = b"", interlace: int = 0
) -> bytes:
    """A PNG assembled by hand: IHDR, ``extra`` chunks, one IDAT (already compressed), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def zlib_of_zeros(n_bytes: int, block: int = 1 << 20) -> bytes:
    """A valid zlib stream of ``n_bytes`` zero bytes, built in milliseconds.

    Compressing 22 MB of zeros takes ~130 ms; instead one block is compressed
    and followed by a full flush, which resets the compressor, so every later
    identical block compresses to identical bytes and can be repeated.  The
    trailing Adler-32 is then recomputed over the whole (virtual) input.
    """
    full, rest = divmod(n_bytes, block)
    if full < 3:
        return zlib.compress(bytes(n_bytes), 9)
    zeros = bytes(block)
    comp = zlib.compressobj(9)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    repeat = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    assert repeat == again, "zlib did not reproduce a flushed block"
    tail = comp.compress(bytes(rest)) + comp.flush()
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(zeros, adler)
    adler = zlib.adler32(bytes(rest), adler)
    return first + repeat * (full - 1) + tail[:-4] + struct.pack(">I", adler)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale all-black PNG of ``width x height`` (a few KB)."""
    row = 1 + (width + 7) // 8  # filter byte + packed bits
    return png_from_parts(width, height, 1, 0, zlib_of_zeros(row * height))


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Patch the first frame header (SOF0/SOF2) of a JPEG to declare another size."""
    data = bytearray(jpeg)
    pos = 2
    while pos < len(data):
        marker = data[pos + 1]
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, pos + 5, height, width)
            return bytes(data)
        pos += 2 + length
    raise ValueError("no SOF marker")


def gif_with_screen(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen declares ``width x height``."""
    data = bytearray(encode_pil(Image.new("P", (1, 1)), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    return bytes(data)


def strip_eoi(jpeg: bytes) -> bytes:
    """The JPEG without its final EOI marker (and anything after it)."""
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[:end]


def break_crc(png: bytes, ctype: bytes = b"IDAT") -> bytes:
    """Flip one bit in the CRC of the first ``ctype`` chunk."""
    data = bytearray(png)
    pos = 8
    while True:
        length, name = struct.unpack_from(">I4s", data, pos)
        if name == ctype:
            data[pos + 8 + length] ^= 0x01
            return bytes(data)
        pos += 12 + length


def exif_bytes(orientation: int) -> bytes:
    """An EXIF block carrying only the orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
    b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
)
PSD = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3) + struct.pack(">III", 0, 0, 0) + bytes(64)
SVG = (
    b'<?xml version="1.0"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>\n'
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@functools.lru_cache(maxsize=None)
def _payloads() -> tuple[tuple[str, bytes, str | None], ...]:
    """(file name, bytes, expected reason) for every file in the set."""
    photo_jpeg = skimage_bytes("rocket.jpg")  # a real camera JPEG, 640x427
    rgb = photo_rgb()[100:164, 150:246]  # 64x96 crop of a real photo
    rgb_im = Image.fromarray(rgb)
    gray = cv2.imdecode(np.frombuffer(skimage_bytes("camera.png"), np.uint8), cv2.IMREAD_GRAYSCALE)[200:248, 200:264]
    logo = cv2.imdecode(np.frombuffer(skimage_bytes("logo.png"), np.uint8), cv2.IMREAD_UNCHANGED)
    rgba = cv2.cvtColor(cv2.resize(logo, (64, 64), interpolation=cv2.INTER_AREA), cv2.COLOR_BGRA2RGBA)
    png_rgb = encode_pil(rgb_im, "PNG")
    ramp16 = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    rgb16 = np.dstack([ramp16, ramp16[::-1], 65535 - ramp16])
    noise = random.Random(20240601).randbytes(4096)
    palette = Image.fromarray((rgb // 64 * 64).astype(np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0

    items: list[tuple[str, bytes, str | None]] = [
        # --- must be rejected -------------------------------------------------
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"This is a text file that happens to be named .jpg\n" * 4, "unreadable"),
        ("random_bytes.png", b"\x00RND" + noise, "unreadable"),
        ("page.png", b"<!DOCTYPE html>\n<html><body>not an image</body></html>\n", "unreadable"),
        ("photo_truncated_50.jpg", photo_jpeg[: len(photo_jpeg) // 2], "truncated"),
        ("photo_truncated_33.jpg", photo_jpeg[: len(photo_jpeg) // 3], "truncated"),
        ("photo_no_eoi.jpg", strip_eoi(photo_jpeg), "truncated"),
        ("truncated.png", png_rgb[: len(png_rgb) // 2], "truncated"),
        ("bad_crc.png", break_crc(png_rgb), "corrupt"),
        ("bad_header.png", png_from_parts(8, 8, 3, 2, zlib.compress(bytes(8 * 25))), "corrupt"),
        ("bomb_90mp.png", png_bomb(*BOMB_90MP), "too_large"),
        ("bomb_182mp.png", png_bomb(*BOMB_182MP), "too_large"),
        ("bomb_90mp.jpg", jpeg_with_size(encode_pil(rgb_im, "JPEG"), *BOMB_90MP), "too_large"),
        ("bomb_screen.gif", gif_with_screen(65_535, 65_535), "too_large"),
        ("figure.eps", EPS, "unsupported_format"),
        ("figure_eps_named.jpg", EPS, "unsupported_format"),
        ("layers.psd", PSD, "unsupported_format"),
        ("scan.jpg", PDF, "unsupported_format"),
        ("drawing.png", SVG, "unsupported_format"),
        ("float_multipage.tif", skimage_bytes("multipage_rgb.tif"), "unsupported_format"),
        # --- tricky but must decode -------------------------------------------
        ("photo.jpg", photo_jpeg, None),
        ("photo_trailing_bytes.jpg", photo_jpeg + b"\x00" * 16 + b"trailer", None),
        ("png_named.jpg", png_rgb, None),
        ("gray.png", encode_pil(Image.fromarray(gray), "PNG"), None),
        ("gray.jpg", encode_pil(Image.fromarray(gray), "JPEG", quality=90), None),
        ("gray_alpha.png", encode_pil(Image.fromarray(np.dstack([gray, gray[::-1]]), "LA"), "PNG"), None),
        ("rgba.png", encode_pil(Image.fromarray(rgba, "RGBA"), "PNG"), None),
        ("palette_transparency.png", encode_pil(palette, "PNG", transparency=0), None),
        ("gray16.png", encode_pil(Image.fromarray(ramp16), "PNG"), None),
        ("rgb16.png", cv2.imencode(".png", rgb16[..., ::-1])[1].tobytes(), None),
        ("cmyk.jpg", encode_pil(rgb_im.convert("CMYK"), "JPEG", quality=92), None),
        ("progressive.jpg", encode_pil(rgb_im, "JPEG", quality=90, progressive=True), None),
        ("orientation_6.jpg", encode_pil(rgb_im, "JPEG", quality=90, exif=exif_bytes(6)), None),
        ("animated.gif", skimage_bytes("no_time_for_that_tiny.gif"), None),
        ("multipage.tif", skimage_bytes("multipage.tif"), None),
        ("one_pixel.png", encode_pil(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), None),
        ("strip_1x7.jpg", encode_pil(Image.fromarray(rgb[:1, :7]), "JPEG"), None),
        ("strip_7x1.png", encode_pil(Image.fromarray(rgb[:7, :1]), "PNG"), None),
        ("photo.bmp", encode_pil(rgb_im, "BMP"), None),
        ("photo.webp", encode_pil(rgb_im, "WEBP", lossless=True), None),
        ("photo.tif", encode_pil(rgb_im, "TIFF", compression="tiff_lzw"), None),
    ]
    return tuple(items)


def write_bad_files(root: pathlib.Path, *, label_dir: str | None = None) -> dict[str, str | None]:
    """Writes bad and tricky files under root (or root/label_dir) and returns
    {path relative to root with '/' separators: expected reject reason, or None if it must decode}.

    Parameters
    ----------
    root : pathlib.Path
        Created if missing.
    label_dir : str, optional
        A sub-folder (a label name, in the contract's layout) to write into.

    Returns
    -------
    dict
        ``{"label/name.ext": reason or None}``; reasons are from
        ``featurelib.errors.REASONS``.
    """
    root = pathlib.Path(root)
    folder = root / label_dir if label_dir else root
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for name, payload, reason in _payloads():
        path = folder / name
        path.write_bytes(payload)
        expected[path.relative_to(root).as_posix()] = reason
    return expected


def decode_in_pool_worker(data: bytes) -> tuple[bool, tuple[int, ...], str]:
    """Decode ``data`` (and its first half) with an IsolatedDecoder inside a pool worker.

    Lives here rather than in a test module so a spawned worker imports little.
    Returns whether the worker is daemonic, the pixel shape and the half's reason.
    """
    import multiprocessing

    from featurelib.decode import IsolatedDecoder
    from featurelib.errors import DecodeError

    with IsolatedDecoder(timeout_s=20) as isolated:
        image = isolated.decode(data)
        try:
            isolated.decode(data[: len(data) // 2])
            reason = "none"
        except DecodeError as exc:
            reason = exc.reason
    return multiprocessing.current_process().daemon, image.pixels.shape, reason
