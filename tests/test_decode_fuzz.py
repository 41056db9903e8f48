"""Bounded fuzz run of the decode policy (issue #11).

Seeds are real photographs bundled with scikit-image (astronaut, coffee,
chelsea, camera), cropped and shrunk to a few dozen pixels a side and encoded
with Pillow/OpenCV in every allowlisted format (JPEG, PNG, WebP, TIFF, GIF,
BMP) and several layouts of each.  Hypothesis mutates them -- bit flips, byte
overwrites, truncation, inserted/deleted/duplicated byte runs, duplicated,
deleted and swapped chunks (PNG chunks, JPEG segments, RIFF chunks, GIF
blocks), header field tweaks (PNG IHDR with its CRC recomputed, JPEG SOF,
GIF screen/frame, BMP info header, TIFF IFD entries, WebP VP8/VP8L/VP8X),
concatenation with another seed -- and checks, for each mutated input, the
property the policy promises (``featurelib.decode``, docs/CONTRACT.md):

- :func:`featurelib.decode.decode_image` (what every engine's decoder calls,
  ``featurelib.shard.make_decoder``) returns a :class:`DecodedImage` that
  keeps the output contract -- ``(H, W, 3)`` ``uint8``, C-contiguous,
  writable, the sniffed format, the header size within ``max_pixels``, the
  pixel size equal to it (or to its reduced-DCT size for a JPEG with a
  ``target``) -- or raises :class:`DecodeError` with one of the six decode
  reasons and a non-empty detail;
- nothing else escapes: no other exception, no Python warning;
- no hang: a decode over :data:`HANG_S` seconds is interrupted and fails the
  test (a hang inside native code that a signal cannot interrupt ends the
  whole process after :data:`HARD_HANG_S`, with every thread's traceback,
  instead of stalling CI); hypothesis' ``deadline`` flags slow examples;
- the same bytes give the same outcome twice (same reason and detail, or
  the same pixels), which engine parity relies on.

A native crash (segfault) would end the pytest process with pytest's
faulthandler traceback: the run cannot pass with one.

The run is bounded and deterministic (``derandomize=True``, no example
database): ``python -m pytest -q tests/test_decode_fuzz.py``.  A longer or
fresh search: ``FEATURELIB_FUZZ_EXAMPLES=3000 FEATURELIB_FUZZ_RANDOM=1``.  Run as a
script, ``python tests/test_decode_fuzz.py`` runs the same searches and
prints the outcome counts per format (the figures in docs/RELIABILITY.md).
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import functools
import io
import os
import pathlib
import re
import signal
import struct
import sys
import time
import warnings
import zlib
from typing import Callable

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from featurelib.decode import ALLOWED_FORMATS, DecodedImage, decode_image, reduction_factor, sniff_format
from featurelib.errors import REASONS, DecodeError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import badfiles  # noqa: E402  (a helper module next to this file)
from badfiles import encode_pil, exif_bytes  # noqa: E402

#: The reasons decode_image may give (its docstring, docs/CONTRACT.md "Rejects", stage decode);
#: ``timeout`` and ``crashed`` come only from the isolated decoder's parent.
DECODE_REASONS = ("empty", "unreadable", "unsupported_format", "too_large", "truncated", "corrupt")
#: Cap for every fuzzed decode: mutated headers may declare big images; keep each decode cheap.
CAP = 1 << 20
#: Formats fuzzed: every format the policy allowlists.
FUZZ_FORMATS = ("jpeg", "png", "webp", "tiff", "gif", "bmp")
#: Examples per format (FEATURELIB_FUZZ_EXAMPLES overrides it for a longer run).
EXAMPLES = int(os.environ.get("FEATURELIB_FUZZ_EXAMPLES", "300"))
#: FEATURELIB_FUZZ_RANDOM=1: fresh random examples on each run instead of the fixed ones.
RANDOM = os.environ.get("FEATURELIB_FUZZ_RANDOM") == "1"
#: A decode running this long is a hang (a decode here takes milliseconds).
HANG_S = 10.0
#: A hang native code does not return from: dump tracebacks and exit the process.
HARD_HANG_S = 60.0
#: The targets decodes are asked for (None: full size); the others take the reduced JPEG path
#: (policy point 11) at 1/4 (stretch 12x16) and 1/4 (aspect_crop 8x8) of a 48x64 seed.
TARGETS = (None, (12, 16, "stretch"), (8, 8, "aspect_crop"), (20, 20, "pad"))

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,  # by default the same examples on every run: CI is deterministic
    database=None,  # writes no .hypothesis folder
    deadline=2000,  # ms per example (two decodes of a small image take a few ms)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------
# Seeds: real photographs, small, in every layout worth fuzzing
# ---------------------------------------------------------------------------


def photo(name: str, height: int = 48, width: int = 64) -> np.ndarray:
    """A scikit-image sample photograph shrunk to ``height x width`` (RGB, or gray for camera)."""
    flag = cv2.IMREAD_GRAYSCALE if name == "camera" else cv2.IMREAD_COLOR_RGB
    full = cv2.imdecode(np.frombuffer(badfiles.skimage_bytes(f"{name}.png"), np.uint8), flag)
    return np.ascontiguousarray(cv2.resize(full, (width, height), interpolation=cv2.INTER_AREA))


def with_alpha(rgb: np.ndarray) -> Image.Image:
    """RGBA: the photo with an alpha ramp (0 on the left edge to 255 on the right)."""
    ramp = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, np.broadcast_to(ramp, rgb.shape[:2])]), "RGBA")


def png_adam7(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG, written by hand (Pillow and OpenCV write no interlaced PNG)."""
    raw = b"".join(b"\x00" + row.tobytes()  # filter type 0 on every row of every pass
                   for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                                          (1, 0, 2, 2), (0, 1, 1, 2))
                   for row in rgb[y0::dy, x0::dx] if row.size)
    return badfiles.png_from_parts(rgb.shape[1], rgb.shape[0], 8, 2, zlib.compress(raw), interlace=1)


def png_with_exif(png: bytes, orientation: int) -> bytes:
    """``png`` with an ``eXIf`` chunk (EXIF orientation) inserted before its first IDAT."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    idat = png.index(b"IDAT") - 4
    return png[:idat] + badfiles.png_chunk(b"eXIf", exif.tobytes()) + png[idat:]


@functools.lru_cache(maxsize=None)
def seeds() -> dict[str, tuple[tuple[str, bytes], ...]]:
    """{format: ((name, encoded bytes), ...)}: the valid files mutations start from."""
    astronaut, coffee, chelsea = photo("astronaut"), photo("coffee"), photo("chelsea")
    odd = photo("chelsea", 37, 53)  # partial JPEG MCUs, odd PNG rows
    camera = photo("camera")
    gray16 = (camera.astype(np.uint16) * 257) ^ np.arange(64, dtype=np.uint16)  # low byte carries information
    rgb16 = astronaut.astype(np.uint16) * 257 + 100
    exif6 = exif_bytes(6)
    cmyk = Image.fromarray(coffee).convert("CMYK")
    palette = Image.fromarray(coffee).quantize(64)
    frames = [Image.fromarray(astronaut).quantize(32), Image.fromarray(chelsea).quantize(32)]
    out = {
        "jpeg": (
            ("astronaut_baseline", encode_pil(Image.fromarray(astronaut), "JPEG", quality=85)),
            ("coffee_progressive", encode_pil(Image.fromarray(coffee), "JPEG", quality=80, progressive=True)),
            ("camera_gray", encode_pil(Image.fromarray(camera), "JPEG", quality=90)),
            ("chelsea_444_exif6_restart", encode_pil(Image.fromarray(chelsea), "JPEG", quality=90, subsampling=0,
                                                     exif=exif6, restart_marker_blocks=4)),
            ("chelsea_odd_size", encode_pil(Image.fromarray(odd), "JPEG", quality=75)),
            ("coffee_cmyk", encode_pil(cmyk, "JPEG", quality=90)),
        ),
        "png": (
            ("astronaut_rgb", encode_pil(Image.fromarray(astronaut), "PNG")),
            ("coffee_palette_trns", encode_pil(palette, "PNG", transparency=0)),
            ("camera_gray16", encode_pil(Image.fromarray(gray16), "PNG")),
            ("chelsea_rgba", encode_pil(with_alpha(chelsea), "PNG")),
            ("chelsea_odd_interlaced", png_adam7(odd)),
            ("astronaut_rgb16_exif3", png_with_exif(cv2.imencode(".png", rgb16[..., ::-1])[1].tobytes(), 3)),
            ("camera_1bit", encode_pil(Image.fromarray(camera).convert("1"), "PNG")),
        ),
        "webp": (
            ("coffee_lossy", encode_pil(Image.fromarray(coffee), "WEBP", quality=75)),
            ("astronaut_lossless", encode_pil(Image.fromarray(astronaut), "WEBP", lossless=True)),
            ("chelsea_lossy_alpha", encode_pil(with_alpha(chelsea), "WEBP", quality=70)),
            ("chelsea_exif6", encode_pil(Image.fromarray(chelsea), "WEBP", quality=70, exif=exif6)),
            ("animated", encode_pil(Image.fromarray(astronaut), "WEBP", save_all=True, lossless=True,
                                    append_images=[Image.fromarray(coffee)], duration=100)),
        ),
        "tiff": (
            ("astronaut_raw", encode_pil(Image.fromarray(astronaut), "TIFF")),
            ("coffee_lzw", encode_pil(Image.fromarray(coffee), "TIFF", compression="tiff_lzw")),
            ("chelsea_deflate_rgba", encode_pil(with_alpha(chelsea), "TIFF", compression="tiff_adobe_deflate")),
            ("camera_packbits", encode_pil(Image.fromarray(camera), "TIFF", compression="packbits")),
            ("coffee_jpeg", encode_pil(Image.fromarray(coffee), "TIFF", compression="jpeg")),
            ("camera_gray16", encode_pil(Image.fromarray(gray16), "TIFF")),
            ("astronaut_rgb16", cv2.imencode(".tiff", rgb16[..., ::-1])[1].tobytes()),
            ("chelsea_orientation6_multipage", encode_pil(Image.fromarray(chelsea), "TIFF", tiffinfo={0x0112: 6},
                                                          save_all=True, append_images=[Image.fromarray(coffee)])),
        ),
        "gif": (
            ("coffee", encode_pil(palette, "GIF")),
            ("chelsea_transparent", encode_pil(Image.fromarray(chelsea).quantize(16), "GIF", transparency=0)),
            ("animated", encode_pil(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)),
            ("camera_interlaced", encode_pil(Image.fromarray(camera), "GIF", interlace=True)),
        ),
        "bmp": (
            ("astronaut_24bit", encode_pil(Image.fromarray(astronaut), "BMP")),
            ("coffee_8bit_palette", encode_pil(palette, "BMP")),
            ("camera_1bit", encode_pil(Image.fromarray(camera).convert("1"), "BMP")),
            ("chelsea_odd_24bit", encode_pil(Image.fromarray(odd), "BMP")),
        ),
    }
    return out


@functools.lru_cache(maxsize=None)
def all_seeds() -> tuple[bytes, ...]:
    """Every seed of every format, for concatenations."""
    return tuple(data for fmt in FUZZ_FORMATS for _, data in seeds()[fmt])


# ---------------------------------------------------------------------------
# Structure: chunks and header fields of each format (best effort on mutated data)
# ---------------------------------------------------------------------------

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_SCAN_END = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def kind_of(data: bytes) -> str | None:
    """The format by its magic bytes, written independently of sniff_format (enough to find fields)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return None


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """``[start, end)`` of each marker segment after SOI (a scan includes its entropy-coded data)."""
    segments, pos, n = [], 2, len(data)
    while pos + 2 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xD9:
            segments.append((pos, pos + 2))
            break
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xFF):
            segments.append((pos, pos + 2))
            pos += 2
            continue
        if pos + 4 > n:
            break
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        if end > n or end < pos + 4:
            break
        if marker == 0xDA:
            match = _JPEG_SCAN_END.search(data, end)
            end = match.start() if match else n
        segments.append((pos, end))
        pos = end
    return segments


def length_prefixed_chunks(data: bytes, pos: int, header: int, end_of: Callable[[int], int]) -> list[tuple[int, int]]:
    """``[start, end)`` of consecutive chunks from ``pos`` while a whole ``header`` and the chunk fit."""
    chunks = []
    while pos + header <= len(data) and (end := end_of(pos)) <= len(data):
        chunks.append((pos, end))
        pos = end
    return chunks


def png_chunks(data: bytes) -> list[tuple[int, int]]:
    """PNG: big-endian length, type, payload, CRC."""
    return length_prefixed_chunks(data, 8, 12, lambda at: at + 12 + struct.unpack_from(">I", data, at)[0])


def riff_chunks(data: bytes) -> list[tuple[int, int]]:
    """RIFF (WebP): FourCC, little-endian length, payload padded to an even size."""

    def end_of(at: int) -> int:
        length = struct.unpack_from("<I", data, at + 4)[0]
        return at + 8 + length + (length & 1)

    return length_prefixed_chunks(data, 12, 8, end_of)


def gif_blocks(data: bytes) -> list[tuple[int, int]]:
    """Extension blocks, images (descriptor, colour table, LZW data) and the trailer."""
    n = len(data)
    if n < 13:
        return []
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    blocks = []
    while pos < n:
        start, introducer = pos, data[pos]
        if introducer == 0x3B:
            blocks.append((pos, pos + 1))
            break
        if introducer == 0x21:
            pos += 2
        elif introducer == 0x2C and pos + 10 <= n:
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1  # + LZW minimum code size
        else:
            break
        while pos < n and data[pos]:  # data sub-blocks up to the 0 terminator
            pos += 1 + data[pos]
        pos += 1
        if pos > n:
            break
        blocks.append((start, pos))
    return blocks


def chunks_of(data: bytes) -> list[tuple[int, int]]:
    """The format's own units, or ``[]`` (TIFF, BMP: byte runs stand in for chunks)."""
    kind = kind_of(data)
    return {"jpeg": jpeg_segments, "png": png_chunks, "webp": riff_chunks, "gif": gif_blocks}.get(
        kind, lambda _: [])(data)


def tiff_entry_fields(data: bytes) -> list[tuple[int, str]]:
    """Count and inline value fields of the first IFD's entries (SHORT/LONG values)."""
    e = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return []
    ifd = struct.unpack_from(e + "I", data, 4)[0]
    if ifd + 2 > len(data):
        return [(4, e + "I")]
    fields = [(4, e + "I"), (ifd, e + "H")]
    for i in range(min(struct.unpack_from(e + "H", data, ifd)[0], 32)):
        at = ifd + 2 + 12 * i
        if at + 12 > len(data):
            break
        typ, count = struct.unpack_from(e + "HI", data, at + 2)
        fields.append((at + 4, e + "I"))
        if typ == 3 and count <= 2:
            fields.append((at + 8, e + "H"))
        elif typ == 4 and count == 1 or count * {3: 2, 4: 4}.get(typ, 1) > 4:
            fields.append((at + 8, e + "I"))  # the value, or the offset of the values
    return fields


def header_fields(data: bytes) -> list[tuple[int, str]]:
    """``(offset, struct code)`` of header fields worth tweaking: sizes, depths, counts, lengths."""
    kind, n = kind_of(data), len(data)
    fields: list[tuple[int, str]] = []
    if kind == "png":
        fields = [(16, ">I"), (20, ">I"), (24, "B"), (25, "B"), (28, "B")]  # width, height, depth, colour, interlace
        fields += [(start, ">I") for start, _ in png_chunks(data)[1:8]]  # chunk lengths
    elif kind == "jpeg":
        for start, end in jpeg_segments(data)[:12]:
            marker = data[start + 1]
            if end - start >= 4:
                fields.append((start + 2, ">H"))  # segment length
            if marker in _JPEG_SOF and end - start >= 12:
                # precision, height, width, components, first component's sampling factors
                fields += [(start + 4, "B"), (start + 5, ">H"), (start + 7, ">H"), (start + 9, "B"), (start + 11, "B")]
            elif marker == 0xDD and end - start >= 6:
                fields.append((start + 4, ">H"))  # restart interval
            elif marker == 0xDA and end - start >= 5:
                fields.append((start + 4, "B"))  # components in the scan
    elif kind == "webp":
        fields = [(4, "<I")]
        for start, end in riff_chunks(data):
            fields.append((start + 4, "<I"))
            fourcc = data[start : start + 4]
            if fourcc == b"VP8X" and end - start >= 18:
                fields += [(start + 8, "B"), (start + 12, "<H"), (start + 15, "<H")]  # flags, canvas size - 1
            elif fourcc == b"VP8 " and end - start >= 18:
                fields += [(start + 14, "<H"), (start + 16, "<H")]  # frame width, height
            elif fourcc == b"VP8L" and end - start >= 13:
                fields.append((start + 9, "<I"))  # packed width - 1, height - 1, alpha, version
            elif fourcc == b"ALPH" and end - start >= 9:
                fields.append((start + 8, "B"))
    elif kind == "tiff":
        fields = tiff_entry_fields(data)
    elif kind == "gif":
        fields = [(6, "<H"), (8, "<H"), (10, "B")]  # logical screen, flags
        for start, end in gif_blocks(data):
            if data[start] == 0x2C and end - start >= 11:
                fields += [(start + 1 + 2 * i, "<H") for i in range(4)] + [(start + 9, "B")]
    elif kind == "bmp":
        # file size, pixel offset, DIB size, width, height, planes, bit count, compression, image size, colours
        fields = [(2, "<I"), (10, "<I"), (14, "<I"), (18, "<I"), (22, "<I"), (26, "<H"), (28, "<H"),
                  (30, "<I"), (34, "<I"), (46, "<I")]
    return [(at, code) for at, code in fields if at + struct.calcsize(code) <= n]


def refresh_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk CRC, so a mutation reaches libpng instead of the CRC check."""
    out = bytearray(data)
    for start, end in png_chunks(data):
        struct.pack_into(">I", out, end - 4, zlib.crc32(out[start + 4 : end - 4]))
    return bytes(out)


def refresh_riff_size(data: bytes) -> bytes:
    """Make a RIFF header declare the data's length, so a mutation reaches libwebp."""
    return data[:4] + struct.pack("<I", (len(data) - 8) & 0xFFFFFFFF) + data[8:] if len(data) >= 12 else data


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------

# Offsets are drawn as plain integers and taken modulo the current length when
# applied, biased to bytes 8-95, where the headers are (past the magic bytes).
_offset = st.one_of(st.integers(8, 95), st.integers(0, 1 << 20))
_interesting = st.sampled_from([0, 1, 2, 3, 7, 8, 15, 16, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                                0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])

MUTATIONS = {
    "flip": st.tuples(st.just("flip"), _offset, st.integers(0, 7)),
    "set": st.tuples(st.just("set"), _offset, st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01, 0xD9, 0xDA])
                     | st.integers(0, 255)),
    "truncate": st.tuples(st.just("truncate"), _offset),
    "insert": st.tuples(st.just("insert"), _offset, st.binary(min_size=1, max_size=64)),
    "delete": st.tuples(st.just("delete"), _offset, st.integers(1, 256)),
    "duplicate_run": st.tuples(st.just("duplicate_run"), _offset, st.integers(1, 512)),
    "chunk_duplicate": st.tuples(st.just("chunk_duplicate"), st.integers(0, 63)),
    "chunk_delete": st.tuples(st.just("chunk_delete"), st.integers(0, 63)),
    "chunk_swap": st.tuples(st.just("chunk_swap"), st.integers(0, 63)),
    "header_set": st.tuples(st.just("header_set"), st.integers(0, 63), _interesting | st.integers(0, 0xFFFFFFFF)),
    "header_add": st.tuples(st.just("header_add"), st.integers(0, 63), st.integers(-4, 4).filter(bool)),
    "concat": st.tuples(st.just("concat"), st.integers(0, 63), st.booleans()),
}


def apply(data: bytes, op: tuple) -> bytes:
    """One mutation; offsets and indices are taken modulo what the data has."""
    kind, *args = op
    n = len(data)
    if kind == "concat":
        other = all_seeds()[args[0] % len(all_seeds())]
        return other + data if args[1] else data + other
    if n == 0:
        return data
    if kind in ("flip", "set"):
        out = bytearray(data)
        at = args[0] % n
        out[at] = out[at] ^ (1 << args[1]) if kind == "flip" else args[1]
        return bytes(out)
    if kind == "truncate":
        return data[: args[0] % n]
    if kind == "insert":
        at = args[0] % (n + 1)
        return data[:at] + args[1] + data[at:]
    if kind == "delete":
        at = args[0] % n
        return data[:at] + data[at + args[1] :]
    if kind == "duplicate_run":
        at = args[0] % n
        return data[: at + args[1]] + data[at : at + args[1]] + data[at + args[1] :]
    if kind.startswith("chunk_"):
        chunks = chunks_of(data)
        if not chunks:  # no chunk structure (TIFF, BMP, or broken): a byte run instead
            return apply(data, ("duplicate_run", args[0] * 97, 16 + args[0] * 8))
        i = args[0] % len(chunks)
        start, end = chunks[i]
        if kind == "chunk_duplicate":
            return data[:end] + data[start:end] + data[end:]
        if kind == "chunk_delete":
            return data[:start] + data[end:]
        if i + 1 >= len(chunks):
            return data
        start2, end2 = chunks[i + 1]  # adjacent: end == start2
        return data[:start] + data[start2:end2] + data[start:end] + data[end2:]
    if kind.startswith("header_"):
        fields = header_fields(data)
        if not fields:
            return apply(data, ("flip", args[0], 0))
        at, code = fields[args[0] % len(fields)]
        bits = 8 * struct.calcsize(code)
        old = struct.unpack_from(code, data, at)[0]
        new = args[1] if kind == "header_set" else old + args[1]
        out = bytearray(data)
        struct.pack_into(code, out, at, new % (1 << bits))
        if kind_of(data) == "png" and at < 29 and n >= 33:  # an IHDR field: recompute the IHDR CRC
            struct.pack_into(">I", out, 29, zlib.crc32(out[12:29]))
        return bytes(out)
    raise AssertionError(f"unknown mutation {kind}")


@st.composite
def plans(draw):
    """``(seed index, [mutation, ...], refresh lengths/CRCs, target)``."""
    seed = draw(st.integers(0, 63))
    ops = draw(st.lists(st.one_of(*MUTATIONS.values()), min_size=1, max_size=4))
    refresh = draw(st.booleans())
    target = draw(st.sampled_from(TARGETS))
    return seed, ops, refresh, target


def mutate(fmt: str, seed: int, ops: list[tuple], refresh: bool) -> bytes:
    pool = seeds()[fmt]
    data = pool[seed % len(pool)][1]
    for op in ops:
        data = apply(data, op)
    if refresh:  # so that structural mutations get past CRCs and the RIFF size, into the codecs
        kind = kind_of(data)
        data = refresh_png_crcs(data) if kind == "png" else refresh_riff_size(data) if kind == "webp" else data
    return data


# ---------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------

#: {format: Counter(outcome)}: "decoded", a reason, or "other:<exception>" / "hang".
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


class Hang(BaseException):
    """A decode ran past HANG_S (a BaseException, so no ``except Exception`` inside the policy absorbs it)."""


@contextlib.contextmanager
def time_bound(seconds: float):
    """Interrupt the block after ``seconds`` (Python code; native code when it returns to Python), and end the
    process with tracebacks after :data:`HARD_HANG_S` if native code never returns."""

    def on_alarm(signum, frame):
        raise Hang(f"decode still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # an outer timer (pytest-timeout's) is kept
    start = time.monotonic()
    faulthandler.dump_traceback_later(HARD_HANG_S, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))
        faulthandler.cancel_dump_traceback_later()


def outcome_of(data: bytes, target) -> DecodedImage | DecodeError:
    """decode_image's result or reject; any other exception, a warning or a hang propagates."""
    with time_bound(HANG_S), warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning leaking out of the policy is a failure too
        try:
            return decode_image(data, max_pixels=CAP, target=target)
        except DecodeError as exc:
            return exc


def check_decoded(image: DecodedImage, data: bytes, target) -> None:
    px = image.pixels
    assert isinstance(image, DecodedImage) and isinstance(px, np.ndarray)
    assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3 and px.shape[0] >= 1 and px.shape[1] >= 1
    assert px.flags.c_contiguous and px.flags.writeable
    assert image.format in ALLOWED_FORMATS and image.format == sniff_format(data)
    assert 1 <= image.orig_height * image.orig_width <= CAP
    if image.format == "jpeg" and target is not None:
        d = reduction_factor(image.orig_height, image.orig_width, target)
        assert px.shape[:2] == (-(-image.orig_height // d), -(-image.orig_width // d))
    else:
        assert px.shape[:2] == (image.orig_height, image.orig_width)


def check_policy(fmt: str, data: bytes, target) -> str:
    """The fuzz property for one input; returns its outcome ("decoded" or the reason)."""
    start = time.perf_counter()
    try:
        first = outcome_of(data, target)
    except Hang:
        OUTCOMES[fmt]["hang"] += 1
        raise
    except BaseException as exc:
        OUTCOMES[fmt][f"other:{type(exc).__name__}"] += 1
        raise
    elapsed = time.perf_counter() - start
    second = outcome_of(data, target)  # the same bytes, the same outcome (engine parity relies on it)
    if isinstance(first, DecodeError):
        assert first.reason in DECODE_REASONS, first.reason
        assert isinstance(first.detail, str) and first.detail
        assert isinstance(second, DecodeError) and (second.reason, second.detail) == (first.reason, first.detail)
        outcome = first.reason
    else:
        check_decoded(first, data, target)
        assert isinstance(second, DecodedImage) and np.array_equal(second.pixels, first.pixels)
        assert (second.orig_height, second.orig_width) == (first.orig_height, first.orig_width)
        outcome = "decoded"
    OUTCOMES[fmt][outcome] += 1
    OUTCOMES[fmt]["slowest_ms"] = max(OUTCOMES[fmt]["slowest_ms"], round(elapsed * 1000))
    return outcome


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_decode_reasons_are_contract_reasons():
    assert set(DECODE_REASONS) <= set(REASONS)
    assert set(FUZZ_FORMATS) == set(ALLOWED_FORMATS)


@pytest.mark.parametrize("fmt", FUZZ_FORMATS)
def test_seeds_are_valid_files_of_their_format(fmt):
    for name, data in seeds()[fmt]:
        image = decode_image(data, max_pixels=CAP)
        check_decoded(image, data, None)
        assert image.format == fmt, name
        assert chunks_of(data) or fmt in ("tiff", "bmp"), name
        assert header_fields(data), name
    assert len(seeds()[fmt]) >= 4


def test_seeds_have_the_layouts_they_are_named_for():
    def named(fmt: str) -> dict[str, bytes]:
        return dict(seeds()[fmt])

    def pil(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(data))

    jpeg = named("jpeg")
    assert b"\xff\xc2" in jpeg["coffee_progressive"] and b"\xff\xdd" in jpeg["chelsea_444_exif6_restart"]
    assert pil(jpeg["coffee_cmyk"]).mode == "CMYK" and pil(jpeg["camera_gray"]).mode == "L"
    assert pil(jpeg["chelsea_odd_size"]).size == (53, 37)
    # IHDR bit depth, colour type, interlace method
    png = {name: struct.unpack_from(">BBxxB", data, 24) for name, data in named("png").items()}
    assert png == {"astronaut_rgb": (8, 2, 0), "coffee_palette_trns": (8, 3, 0), "camera_gray16": (16, 0, 0),
                   "chelsea_rgba": (8, 6, 0), "chelsea_odd_interlaced": (8, 2, 1), "astronaut_rgb16_exif3": (16, 2, 0),
                   "camera_1bit": (1, 0, 0)}
    odd = named("png")["chelsea_odd_interlaced"]
    assert np.array_equal(np.asarray(pil(odd).convert("RGB")), photo("chelsea", 37, 53))
    assert b"tRNS" in named("png")["coffee_palette_trns"] and b"eXIf" in named("png")["astronaut_rgb16_exif3"]
    webp = {name: [data[s : s + 4] for s, _ in riff_chunks(data)] for name, data in named("webp").items()}
    assert webp["coffee_lossy"] == [b"VP8 "] and webp["astronaut_lossless"] == [b"VP8L"]
    assert b"ALPH" in webp["chelsea_lossy_alpha"] and b"EXIF" in webp["chelsea_exif6"]
    assert webp["animated"].count(b"ANMF") == 2
    tiff = {name: pil(data) for name, data in named("tiff").items()}
    assert [im.info.get("compression") for im in tiff.values()][:5] == ["raw", "tiff_lzw", "tiff_adobe_deflate",
                                                                        "packbits", "jpeg"]
    assert tiff["chelsea_deflate_rgba"].mode == "RGBA" and tiff["camera_gray16"].mode.startswith("I;16")
    assert tiff["astronaut_rgb16"].tag_v2[258] == (16, 16, 16)  # the OpenCV (libtiff) route
    multipage = tiff["chelsea_orientation6_multipage"]
    assert multipage.n_frames == 2 and multipage.tag_v2[274] == 6
    gif = {name: pil(data) for name, data in named("gif").items()}
    assert gif["animated"].n_frames == 2 and "transparency" in gif["chelsea_transparent"].info
    assert named("gif")["camera_interlaced"][gif_blocks(named("gif")["camera_interlaced"])[-2][0] + 9] & 0x40
    bmp = {name: struct.unpack_from("<H", data, 28)[0] for name, data in named("bmp").items()}
    assert bmp == {"astronaut_24bit": 24, "coffee_8bit_palette": 8, "camera_1bit": 1, "chelsea_odd_24bit": 24}


def test_mutations_do_what_they_say():
    png = seeds()["png"][0][1]
    chunks = png_chunks(png)
    assert [png[s + 4 : s + 8] for s, _ in chunks][0] == b"IHDR" and png[chunks[-1][0] + 4 :][:4] == b"IEND"
    # Chunk duplication keeps the structure walkable; a width tweak keeps IHDR's CRC valid.
    assert len(png_chunks(apply(png, ("chunk_duplicate", 1)))) == len(chunks) + 1
    wide = apply(png, ("header_set", 0, 1 << 20))
    assert struct.unpack_from(">I", wide, 16)[0] == 1 << 20
    with pytest.raises(DecodeError) as info:
        decode_image(wide, max_pixels=CAP)
    assert info.value.reason == "too_large"  # not "corrupt": the CRC was recomputed
    jpeg = seeds()["jpeg"][0][1]
    markers = [jpeg[s + 1] for s, _ in jpeg_segments(jpeg)]
    assert 0xC0 in markers and 0xDA in markers and markers[-1] == 0xD9
    sof = jpeg_segments(jpeg)[markers.index(0xC0)][0]
    fields = header_fields(jpeg)
    assert (sof + 5, ">H") in fields and (sof + 7, ">H") in fields
    gif = dict(seeds()["gif"])["animated"]
    assert [gif[start] for start, _ in gif_blocks(gif)].count(0x2C) == 2  # two image descriptors
    webp = dict(seeds()["webp"])["chelsea_lossy_alpha"]
    assert webp[riff_chunks(webp)[0][0] :][:4] == b"VP8X"
    assert refresh_riff_size(webp + b"xx")[4:8] == struct.pack("<I", len(webp) + 2 - 8)


def test_time_bound_interrupts_a_python_loop():
    with pytest.raises(Hang):
        with time_bound(0.05):
            while True:
                pass


def tiff_with(data: bytes, **values: int) -> bytes:
    """``data`` (a little-endian TIFF) with inline SHORT/LONG values of first-IFD tags replaced, e.g. ``t256=255``."""
    out = bytearray(data)
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from("<HH", data, at)
        if f"t{tag}" in values:
            struct.pack_into("<H" if typ == 3 else "<I", out, at + 8, values.pop(f"t{tag}"))
    assert not values, f"tags not in the IFD: {values}"
    return bytes(out)


def tiff_rgb16_planes(rgb16: np.ndarray) -> bytes:
    """A valid uncompressed 16-bit RGB TIFF with separate planes (PlanarConfiguration 2), written by hand."""
    height, width, _ = rgb16.shape
    planes = [np.ascontiguousarray(rgb16[..., k]).astype("<u2").tobytes() for k in range(3)]
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 3, None), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 3, None), (284, 3, 1, 2)]
    extra = 8 + 2 + 12 * len(entries) + 4  # BitsPerSample, StripOffsets, StripByteCounts follow the IFD
    first_strip = extra + 6 + 12 + 12
    pointers = {258: extra, 273: extra + 6, 279: extra + 18}
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, typ, count, value in entries:
        field = struct.pack("<I", pointers[tag]) if value is None else struct.pack(
            "<H2x" if typ == 3 else "<I", value)
        out += struct.pack("<HHI", tag, typ, count) + field
    out += struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16)
    out += struct.pack("<3I", *(first_strip + k * len(planes[0]) for k in range(3)))
    out += struct.pack("<3I", *(len(p) for p in planes)) + b"".join(planes)
    return bytes(out)


# --- regressions: inputs the fuzzer found (both decoded to pixels from stale memory) -------------


@pytest.mark.parametrize("tags", [{"t256": 255}, {"t256": 65}, {"t257": 96, "t278": 96}])
def test_regression_jpeg_tiff_strip_larger_than_its_jpeg_frame_is_corrupt(tags):
    # Found as seed coffee_jpeg + ("header_set", 3, 255): ImageWidth 64 -> 255. libtiff only warns
    # ("Improper JPEG strip/tile size") and leaves the strip's other columns/rows unwritten.
    data = tiff_with(dict(seeds()["tiff"])["coffee_jpeg"], **tags)
    assert check_policy("tiff", data, None) == "corrupt"
    with pytest.raises(DecodeError, match="JPEG frame"):
        decode_image(data)
    # Strips whose frames cover them still decode, the short last strip included.
    photo_rgb = Image.fromarray(badfiles.photo_rgb())
    for params in ({}, {"strip_size": 8 * 451 * 3}):
        assert check_policy("tiff", encode_pil(photo_rgb, "TIFF", compression="jpeg", **params), None) == "decoded"
        ycbcr = encode_pil(photo_rgb.convert("YCbCr"), "TIFF", compression="jpeg", **params)
        assert check_policy("tiff", ycbcr, None) == "decoded"


def test_regression_16bit_rgb_tiff_with_separate_planes_is_unsupported():
    # Found as seed astronaut_rgb16 with PlanarConfiguration 1 -> 2; a valid planar file fares no
    # better: OpenCV 4.14 returns wrong pixels for it, rows of them from memory it never wrote.
    mutated = tiff_with(dict(seeds()["tiff"])["astronaut_rgb16"], t284=2)
    valid = tiff_rgb16_planes(photo("astronaut").astype(np.uint16) * 257 + 100)
    assert Image.open(io.BytesIO(valid)).size == (64, 48)  # Pillow reads the hand-written file
    for data in (mutated, valid):
        assert check_policy("tiff", data, None) == "unsupported_format"


@pytest.mark.parametrize("fmt", FUZZ_FORMATS)
@FUZZ_SETTINGS
@given(plan=plans())
def test_mutated_files_decode_or_are_rejected_with_a_documented_reason(fmt, plan):
    seed, ops, refresh, target = plan
    check_policy(fmt, mutate(fmt, seed, ops, refresh), target)


# ---------------------------------------------------------------------------
# Script mode: the figures of docs/RELIABILITY.md
# ---------------------------------------------------------------------------


def main() -> int:
    """Run every format's search once and print the outcome counts (libjpeg's stderr chatter is silenced)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    failures = {}
    start = time.perf_counter()
    os.dup2(devnull, 2)
    try:
        for fmt in FUZZ_FORMATS:
            try:
                test_mutated_files_decode_or_are_rejected_with_a_documented_reason(fmt=fmt)
            except BaseException as exc:  # report, then go on with the next format
                failures[fmt] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
    elapsed = time.perf_counter() - start
    reasons = [r for r in DECODE_REASONS if any(OUTCOMES[f][r] for f in FUZZ_FORMATS)]
    other = sorted({k for f in FUZZ_FORMATS for k in OUTCOMES[f] if k.startswith("other:")})
    columns = ["format", "examples", "decoded", *reasons, "other exceptions", "hangs", "slowest decode"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    total = collections.Counter()
    for fmt in FUZZ_FORMATS:
        counts = OUTCOMES[fmt]
        n = sum(v for k, v in counts.items() if k != "slowest_ms")
        row = {"format": fmt, "examples": n, "decoded": counts["decoded"], **{r: counts[r] for r in reasons},
               "other exceptions": sum(counts[k] for k in other), "hangs": counts["hang"],
               "slowest decode": f"{counts['slowest_ms']} ms"}
        total.update({k: v for k, v in row.items() if isinstance(v, int)})
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    print("| **all** | " + " | ".join(str(total[c]) for c in columns[1:-1]) + " | |")
    print(f"\n{elapsed:.1f} s; failures: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
