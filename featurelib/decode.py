"""The one decode policy: encoded bytes -> RGB ``uint8`` pixels, or a reject.

Every engine (local, Beam, Spark) and every reader decodes through
:func:`decode_image` (or :class:`IsolatedDecoder`, which runs it in a child
process), so an input decodes to the same pixels, or is rejected with the same
reason, wherever it runs.  :data:`DECODE_POLICY_VERSION` is part of the
feature fingerprint: bump it whenever a change could alter decoded pixels or
which inputs are rejected.

Policy
------
1. **Format from content.**  The format is sniffed from the magic bytes
   (:func:`sniff_format`), never from the file name: PNG bytes named ``.jpg``
   decode as PNG.  Allowed: :data:`ALLOWED_FORMATS`.  Each format has exactly
   one decoder path:

   ========  ============================================================
   jpeg      OpenCV (libjpeg-turbo), ``IMREAD_COLOR_RGB``; CMYK/YCCK are
             converted by OpenCV (within 1 level of Pillow's conversion);
             at a reduced DCT scale when a ``target`` allows (point 11)
   png       OpenCV (libpng); ``IMREAD_COLOR_RGB`` for 8-bit opaque
             images, ``IMREAD_UNCHANGED`` when 16-bit or alpha/tRNS
   gif       Pillow, first frame
   bmp       Pillow
   webp      Pillow, first frame
   tiff      Pillow, first page; 16-bit RGB(A) TIFF goes through OpenCV's
             libtiff reader instead, because Pillow can only truncate it
             (decided from the header tags, so still one path per file)
   ========  ============================================================

2. **Reject reasons** (:class:`featurelib.errors.DecodeError`, ``reason``):

   - ``empty``: zero bytes.
   - ``unreadable``: no known signature (garbage, text, zip, ...).
   - ``unsupported_format``: a recognised image format outside the allowlist
     (EPS/PostScript, PDF, PSD, SVG, ICO, JPEG 2000, JPEG XL, HEIF/AVIF, ...;
     Pillow is never asked to open them, so EPS never reaches Ghostscript),
     and sample layouts the policy has no 8-bit rule for: JPEG with a
     precision other than 8 bits, hierarchical JPEG, TIFF with float, signed,
     32-bit or other non-8/16-bit samples, 16-bit RGB(A) TIFF with separate
     planes (OpenCV's reader returns wrong pixels for them, partly from
     unwritten memory).
   - ``too_large``: width * height **read from the header** exceeds
     ``max_pixels`` (or a decoder's own hard limit: OpenCV's
     ``OPENCV_IO_MAX_IMAGE_PIXELS``/``_WIDTH``/``_HEIGHT``, default 2**30
     pixels and 2**20 per side, or Pillow's ``DecompressionBombError``).  The check happens before any pixel data is
     decoded, so a decompression bomb costs a header parse.  JPEG and PNG
     headers are parsed here; for GIF/BMP/TIFF/WEBP the size comes from
     Pillow's lazy ``Image.open``, which reads only the header.  Pillow's own
     ``DecompressionBombWarning`` is superseded by this check (it is silenced
     for the duration of the call, because our cap has already ruled);
     ``MemoryError`` while decoding is also ``too_large``.
   - ``truncated``: the data ends early.  JPEG: the segment structure is
     walked, and the data must reach an EOI marker (``FFD9``) after the last
     scan; a JPEG cut anywhere, or missing its EOI, is truncated (OpenCV would
     silently fill the rest with grey).  PNG: the chunk structure must reach
     ``IEND``.  WebP: less data than the RIFF header declares.  TIFF: the
     first IFD, or a strip/tile of the first image, lies beyond the data.
     Otherwise (GIF, BMP, ...) when Pillow reports truncation (``EOFError``,
     "truncated" in its message).  Bytes after JPEG's EOI, PNG's IEND or the
     RIFF size are ignored.
   - ``corrupt``: recognised, but decoding failed otherwise: bad header values,
     a PNG chunk whose CRC does not match (every chunk is checked, ancillary
     ones included), a JPEG-compressed TIFF strip/tile holding a JPEG frame
     smaller than itself (libtiff would leave the rest unwritten: pixels from
     stale memory), a missing frame/scan/IDAT, OpenCV returning nothing, any
     exception or **any Python warning** from Pillow.  Limitation: damage
     inside JPEG entropy-coded data that libjpeg recovers from (it only warns
     on stderr, and OpenCV does not report it), including a scan that runs
     out of data inside a structurally complete file, decodes with artefacts.

   Precedence: the first problem met while reading the file front to back
   wins (so a bomb whose header is intact is ``too_large`` even if its body
   is cut short).  Nothing other than :class:`DecodeError` escapes for any
   input bytes; invalid *arguments* raise ``ValueError``/``TypeError``.

3. **Orientation.**  EXIF orientation 2-8 is applied: read by this module
   from JPEG's first APP1 ``Exif``, PNG's ``eXIf`` chunk and WebP's ``EXIF``
   chunk and applied here; for TIFF, Pillow's loader and OpenCV's TIFF reader
   apply the tag themselves (it is never applied twice).  1, missing,
   unreadable or out-of-range values mean "as stored"; XMP orientation is
   ignored.  ``orig_height``/``orig_width`` are the displayed size (of the
   full image, also when point 11 decodes it smaller).
4. **Channels.**  Grayscale is replicated to three equal channels; palette
   images are looked up to RGB; 1/2/4-bit samples are scaled to 0..255
   (``v * 255 / (2**bits - 1)``).
5. **16-bit samples** (colour and alpha) become 8-bit by
   ``round(v / 257)``, computed exactly as ``(v + 128) // 257`` (no ties are
   possible) -- not by dropping the low byte, which is what OpenCV's and
   Pillow's RGB conversions do.
6. **Alpha** (LA, RGBA, palette or gray/RGB with tRNS, GIF transparency) is
   composited over ``background`` in 8-bit after step 5:
   ``out = (c * a + bg * (255 - a) + 127) // 255``, i.e. ``c*a/255 + bg*(1 -
   a/255)`` rounded to nearest (no ties are possible).  Premultiplied alpha
   (rare TIFFs) is un-premultiplied by Pillow first.
7. **Frames.**  Animated GIF/WebP/APNG and multi-page TIFF: the first frame
   (for APNG the default IDAT image).
8. **No colour management.**  ICC profiles, gAMA/cHRM/sRGB are ignored; the
   stored values are the pixels.
9. Output: ``(H, W, 3)`` ``uint8``, C-contiguous, writable.
10. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False`` (Pillow's
    default): if some other code set it, :func:`decode_image` raises
    :class:`PolicyMisconfigured` (a ``RuntimeError``, not a reject) rather
    than silently accept grey-filled images.  No global state of Pillow or
    OpenCV is changed by this module.  Pillow-path decodes record warnings
    with ``warnings.catch_warnings``, which is process-global: decode from one
    thread per process (what every engine does), or a warning raised by
    another thread at that moment could be attributed to the image.
11. **Reduced JPEG decode** (policy version 2).  Given a ``target`` ``(H, W,
    mode)`` -- the size and :func:`featurelib.transforms.resize_image` mode
    the caller brings every image to next (``decode.reduce: true`` in a spec,
    the default) -- a JPEG is decoded at DCT scale ``1/d`` (libjpeg-turbo's
    scaled IDCT; output ``ceil(h/d) x ceil(w/d)``, checked, else
    ``corrupt``), where ``d = reduction_factor(h, w, target)`` is the largest
    of 1, 2, 4, 8 whose reduced displayed size is nowhere smaller than the
    size ``resize_image`` scales the *full* image to before cropping or
    padding -- ``(H, W)`` for ``stretch``, the covering size for
    ``aspect_crop``, the fitting size for ``pad`` -- so the resize after it
    never enlarges, and from which ``resize_image`` computes that same size,
    so crops and pads fall where they would.  EXIF orientation is applied
    after the reduced decode (5-8 swap the axes; ``d`` is computed on the
    displayed size and is the same for both).  The resized pixels then differ
    slightly from resizing the full decode: mean absolute difference 1.5
    levels on average, 3.0 at most, on five real photographs at 64x64 and
    112x112 (``area``; ``tests/test_decode_reduced.py``), 0.9 for 2000x1500
    photos at 224x224, where decode + resize get 3.1x faster
    (``benchmarks/bench_decode.py``).  Everything before pixel decoding
    (header and structure checks, ``max_pixels`` on the full size,
    truncation) is unchanged, so those rejects do not depend on ``target``.
    ``target=None`` decodes at full size.  Other formats ignore ``target``:
    PNG, GIF, BMP and TIFF have no scaled decode, and WebP has none through
    these bindings (libwebp can scale while decoding, but Pillow's WebP plugin
    has no ``draft()``, and OpenCV's ``IMREAD_REDUCED_*`` on WebP decodes at
    full size and then resizes with ``INTER_LINEAR_EXACT``: measured, no
    faster than a full decode).

Isolation
---------
:class:`IsolatedDecoder` runs :func:`decode_image` in a long-lived child
Python process (a plain ``subprocess`` with two pipes, so it works inside
daemonic ``multiprocessing`` pool workers, Beam and Spark workers).  A decode
that takes longer than ``timeout_s`` becomes ``timeout``; a child that dies
(segfault, ``os._exit``, OOM kill) becomes ``crashed``; either way the child
is replaced before the next image.  For tests only, the child honours fault
requests (payloads starting with ``b"FEATURELIB_TEST_FAULT:"``) when the
environment variable ``FEATURELIB_TEST_DECODE_FAULT=1`` is set in it; without
that variable such payloads are just unreadable bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from multiprocessing import BufferTooShort
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageFile

from featurelib.contract import DEFAULT_MAX_PIXELS  # Pillow's MAX_IMAGE_PIXELS; one home for it
from featurelib.errors import REASONS, DecodeError

__all__ = [
    "ALLOWED_FORMATS",
    "DECODE_POLICY_VERSION",
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "PolicyMisconfigured",
    "IsolatedDecoder",
    "JPEG_REDUCTIONS",
    "RESIZE_MODES",
    "decode_image",
    "reduction_factor",
    "sniff_format",
]

#: Bump whenever decoded pixels (or which inputs are rejected) could change.
DECODE_POLICY_VERSION: int = 3  # 3: JPEG-in-TIFF frames smaller than their strip, and planar 16-bit RGB TIFF, are rejected
#: Formats that decode; anything else recognised is ``unsupported_format``.
ALLOWED_FORMATS: tuple[str, ...] = ("jpeg", "png", "bmp", "gif", "tiff", "webp")
#: The ``mode`` of a ``target``: :func:`featurelib.transforms.resize_image`'s modes.
RESIZE_MODES: tuple[str, ...] = ("stretch", "aspect_crop", "pad")
#: DCT scale denominators a JPEG can be decoded at (libjpeg-turbo through OpenCV); 1 is full size.
JPEG_REDUCTIONS: tuple[int, ...] = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded image.

    ``eq=False``: comparing ndarrays with ``==`` is ambiguous; compare
    ``pixels`` explicitly.

    Attributes
    ----------
    pixels : numpy.ndarray
        ``(H, W, 3)`` ``uint8``, C-contiguous, RGB, after EXIF orientation.
    orig_height, orig_width : int
        Full size of the image as displayed (after EXIF orientation), from
        its header: ``pixels.shape[:2]``, except for a JPEG decoded at a
        reduced DCT scale (a ``target`` given, policy point 11), whose pixels
        are ``ceil(orig / d)`` per side.
    format : str
        One of :data:`ALLOWED_FORMATS`, sniffed from the content.
    """

    pixels: np.ndarray
    orig_height: int
    orig_width: int
    format: str


# --------------------------------------------------------------------------
# Sniffing
# --------------------------------------------------------------------------

# DIB header sizes of real BMP variants (core, v2/v3 info, v4, v5, OS/2 2.x).
# "BM" alone is two ASCII letters; requiring a known DIB size keeps text that
# starts with "BM" unreadable instead of a corrupt BMP.
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# Recognised formats outside the allowlist: (prefix, name), checked in order.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%!PS-Adobe-", "postscript"),  # refined to "eps" below when EPSF
    (b"%!PS", "postscript"),
    (b"\xc5\xd0\xd3\xc6", "eps"),  # DOS EPS binary header
    (b"%PDF-", "pdf"),
    (b"8BPS", "psd"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),  # raw J2K codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jpegxl"),
    (b"\xff\x0a", "jpegxl"),
    (b"\x8aMNG\r\n\x1a\n", "mng"),
    (b"\x8bJNG\r\n\x1a\n", "jng"),
    (b"icns", "icns"),
    (b"DDS ", "dds"),
    (b"qoif", "qoi"),
    (b"v/1\x01", "openexr"),
    (b"gimp xcf", "xcf"),
    (b"SIMPLE  =", "fits"),
    (b"farbfeld", "farbfeld"),
    (b"#?RADIANCE", "hdr"),
    (b"#?RGBE", "hdr"),
    (b"\x59\xa6\x6a\x95", "sunraster"),
    (b"\xd7\xcd\xc6\x9a", "wmf"),
    (b"/* XPM */", "xpm"),
)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_PNM = re.compile(rb"P[1-7][ \t\r\n#]")


def sniff_format(data: bytes) -> str | None:
    """Name the image format of ``data`` from its magic bytes alone.

    Parameters
    ----------
    data : bytes
        The encoded file (only the first bytes are looked at).

    Returns
    -------
    str or None
        One of :data:`ALLOWED_FORMATS`, or the name of a recognised format
        outside it (``"eps"``, ``"postscript"``, ``"pdf"``, ``"psd"``,
        ``"svg"``, ``"ico"``, ``"cur"``, ``"jpeg2000"``, ``"jpegxl"``,
        ``"heif"``, ``"avif"``, ``"pnm"``, ``"dicom"``, ...), or ``None`` when
        nothing matches.  BMP needs 18 bytes to be recognised.
    """
    head = bytes(data[:1024])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
            return "bmp"
    for prefix, name in _OTHER_SIGNATURES:
        if head.startswith(prefix):
            if name == "postscript" and b"EPSF" in head.split(b"\n", 1)[0]:
                return "eps"
            return name
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and len(head) >= 6:
        count = int.from_bytes(head[4:6], "little")
        if 0 < count <= 256:
            return "ico" if head[2] == 1 else "cur"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "avif"
        if brand in _HEIF_BRANDS:
            return "heif"
    if len(data) >= 132 and bytes(data[128:132]) == b"DICM":
        return "dicom"
    if head[40:44] == b" EMF":
        return "emf"
    if _PNM.match(head):
        return "pnm"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in text):
        return "svg"
    return None


# --------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------


def _opencv_limit(name: str, default: int) -> int:
    """One of OpenCV's own image-size limits (read by OpenCV from the environment)."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


Target = tuple[int, int, str]


def _check_target(target: object) -> Target | None:
    """``None``, or ``(height, width, mode)`` with positive int sides and a mode of :data:`RESIZE_MODES`."""
    if target is None:
        return None
    if not isinstance(target, (tuple, list)) or len(target) != 3:
        raise ValueError(f"target must be None or (height, width, mode), got {target!r}")
    height, width, mode = target
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not 0 < side < 2**31:
            raise ValueError(f"target sides must be positive integers below 2**31, got {target!r}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"target mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
    return int(height), int(width), mode


def resize_intermediate(height: int, width: int, target: Target) -> tuple[int, int]:
    """The size :func:`featurelib.transforms.resize_image` scales a ``height x width`` image to.

    That is the size before ``aspect_crop`` crops or ``pad`` pads, computed
    with the same expressions (so the same float rounding):
    ``(H, W)`` for ``stretch``; ``max(H, round(h * s)), max(W, round(w * s))``
    with ``s = max(H / h, W / w)`` for ``aspect_crop``; ``max(1, min(H,
    round(h * s)))``, ... with ``s = min(H / h, W / w)`` for ``pad``; the image
    itself when it already has the target size.  A test pins it to what
    ``resize_image`` passes to ``cv2.resize``.
    """
    out_h, out_w, mode = target
    if (height, width) == (out_h, out_w) or mode == "stretch":
        return out_h, out_w
    if mode == "aspect_crop":
        scale = max(out_h / height, out_w / width)
        return max(out_h, round(height * scale)), max(out_w, round(width * scale))
    scale = min(out_h / height, out_w / width)
    return max(1, min(out_h, round(height * scale))), max(1, min(out_w, round(width * scale)))


def reduction_factor(height: int, width: int, target: Target) -> int:
    """The DCT scale denominator to decode a ``height x width`` JPEG at, for ``target``.

    Parameters
    ----------
    height, width : int
        The full size as displayed (after EXIF orientation).
    target : (int, int, str)
        ``(H, W, mode)``: the size and :func:`featurelib.transforms.resize_image`
        mode the decoded image is brought to next.

    Returns
    -------
    int
        The largest ``d`` of :data:`JPEG_REDUCTIONS` whose reduced size
        ``ceil(height / d) x ceil(width / d)``

        - is, on both axes, at least :func:`resize_intermediate` of the
          *full* size, so the resize after the reduced decode never enlarges;
        - has that same intermediate size itself, so ``aspect_crop`` crops
          and ``pad`` pads exactly as it would the full image (``ceil`` can
          change the aspect ratio of odd sizes by a pixel, and the rounding
          then a whole row or column of the result: a 451 x 300 image padded
          to 64 x 64 is 64 x 43 from the full size but 64 x 42 from 113 x 75);
        - shrinks something beyond the previous ``d`` (sides of 1 px do not).

        1 when no reduction qualifies (a target that needs the full size, or
        more).
    """
    need = resize_intermediate(height, width, target)
    best, best_size = 1, (height, width)
    for d in JPEG_REDUCTIONS[1:]:
        size = (-(-height // d), -(-width // d))
        if size[0] < need[0] or size[1] < need[1]:
            break
        if size != best_size and resize_intermediate(*size, target) == need:
            best, best_size = d, size
    return best


# OpenCV refuses images beyond these (imdecode then returns None); inputs that
# pass max_pixels but not these are too_large too, not corrupt.
_OPENCV_MAX_PIXELS = _opencv_limit("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30)
_OPENCV_MAX_WIDTH = _opencv_limit("OPENCV_IO_MAX_IMAGE_WIDTH", 1 << 20)
_OPENCV_MAX_HEIGHT = _opencv_limit("OPENCV_IO_MAX_IMAGE_HEIGHT", 1 << 20)


def _check_cap(width: int, height: int, max_pixels: int, *, opencv: bool = False) -> None:
    """Raise ``too_large`` when ``width * height`` exceeds the cap (or OpenCV's limits)."""
    pixels = width * height
    if pixels > max_pixels:
        raise DecodeError("too_large", f"{width}x{height} = {pixels} pixels > max_pixels {max_pixels}")
    if opencv and (pixels > _OPENCV_MAX_PIXELS or width > _OPENCV_MAX_WIDTH or height > _OPENCV_MAX_HEIGHT):
        raise DecodeError(
            "too_large",
            f"{width}x{height} exceeds OpenCV's limits ({_OPENCV_MAX_PIXELS} pixels, "
            f"{_OPENCV_MAX_WIDTH} wide, {_OPENCV_MAX_HEIGHT} high)",
        )


def _reduce16(values: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8-bit by ``round(v / 257)``.

    Parameters
    ----------
    values : numpy.ndarray
        Any shape, unsigned 16-bit (either byte order).

    Returns
    -------
    numpy.ndarray
        Same shape, ``uint8``.  ``(v + 128) // 257`` equals ``round(v / 257)``
        exactly: ``v / 257`` is never a half-integer for integer ``v``.
    """
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Composite straight (non-premultiplied) alpha over a solid background.

    Parameters
    ----------
    rgba : numpy.ndarray
        ``(H, W, 4)`` ``uint8``, RGBA.
    background : tuple of 3 int
        RGB, 0..255.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` ``uint8``: ``(c * a + bg * (255 - a) + 127) // 255``
        (round to nearest; ``x / 255`` is never a half-integer).
    """
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:  # opaque: the formula gives c exactly; skip the arithmetic
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    # uint16 is enough: c*a + bg*(255-a) <= 255*255 = 65025, +127 < 65536.
    out = rgba[..., :3].astype(np.uint16) * a
    out += np.asarray(background, np.uint16) * (255 - a)
    out += 127
    out //= 255
    return out.astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``(H, W)`` ``uint8`` -> ``(H, W, 3)`` with three equal channels."""
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


# TIFF field types this module reads: BYTE, SHORT, LONG, LONG8 -> (size, struct code).
_TIFF_TYPES = {1: (1, "B"), 3: (2, "H"), 4: (4, "I"), 16: (8, "Q")}


def _tiff_ifd0(
    tiff: bytes, wanted: frozenset[int], *, max_values: int = 64, strict: bool = False
) -> dict[int, tuple[int, ...]]:
    """Integer values of selected tags in the first IFD of a TIFF/EXIF structure.

    Parameters
    ----------
    tiff : bytes
        Starts with a TIFF header (``II*\\0``, ``MM\\0*``, or BigTIFF's ``+``).
    wanted : frozenset of int
        Tag numbers to read.
    max_values : int
        Tags with more values than this are left out.
    strict : bool
        When the IFD or a wanted tag's values lie beyond the end of ``tiff``,
        raise ``truncated`` instead of leaving them out (for whole TIFF files;
        an EXIF block inside another format is read leniently).

    Returns
    -------
    dict
        ``{tag: values}`` for the wanted tags that are present, well-formed
        and of an integer type; anything malformed is left out (callers fall
        back to the TIFF defaults).
    """
    n = len(tiff)
    if n < 8 or tiff[:2] not in (b"II", b"MM"):
        return {}
    e = "<" if tiff[:2] == b"II" else ">"
    magic = struct.unpack_from(e + "H", tiff, 2)[0]
    if magic == 42:
        ifd = struct.unpack_from(e + "I", tiff, 4)[0]
        count_fmt, entry_size, inline, offset_fmt = "H", 12, 4, "I"
    elif magic == 43 and n >= 16:  # BigTIFF: 8-byte counts and offsets, 20-byte entries
        ifd = struct.unpack_from(e + "Q", tiff, 8)[0]
        count_fmt, entry_size, inline, offset_fmt = "Q", 20, 8, "Q"
    else:
        return {}

    def beyond(what: str) -> dict[int, tuple[int, ...]]:
        if strict:
            raise DecodeError("truncated", f"TIFF {what} lies beyond the end of the data ({n} bytes)")
        return {}

    head = struct.calcsize(count_fmt)
    if ifd + head > n:
        return beyond("first IFD")
    entries = struct.unpack_from(e + count_fmt, tiff, ifd)[0]
    found: dict[int, tuple[int, ...]] = {}
    for i in range(min(entries, 4096)):
        at = ifd + head + i * entry_size
        if at + entry_size > n:
            beyond("first IFD")
            break
        tag, typ = struct.unpack_from(e + "HH", tiff, at)
        if tag not in wanted or typ not in _TIFF_TYPES:
            continue
        count = struct.unpack_from(e + offset_fmt, tiff, at + 4)[0]
        size, code = _TIFF_TYPES[typ]
        if not 0 < count <= max_values:
            continue
        value_at = at + 4 + inline
        if count * size > inline:  # values stored elsewhere; the field holds their offset
            value_at = struct.unpack_from(e + offset_fmt, tiff, value_at)[0]
        if value_at + count * size > n:
            beyond(f"tag {tag}")
            continue
        found[tag] = struct.unpack_from(f"{e}{count}{code}", tiff, value_at)
    return found


_ORIENTATION_TAG = 0x0112


def _exif_orientation(tiff: bytes) -> int:
    """EXIF orientation (tag 0x0112 of the first IFD), 1..8.

    A missing, malformed or out-of-range value is 1 ("as stored"): a broken
    EXIF block never rejects an image that otherwise decodes.
    """
    value = _tiff_ifd0(tiff, frozenset({_ORIENTATION_TAG})).get(_ORIENTATION_TAG, (1,))[0]
    return value if 1 <= value <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into displayed pixels for EXIF orientation 1..8.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(H, W, C)`` as stored.
    orientation : int
        EXIF value; 5-8 swap height and width.

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)`` or ``(W, H, C)``, C-contiguous (OpenCV's flips and
        rotations copy once, where numpy views would need another copy).
    """
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def _finish(pixels: np.ndarray) -> np.ndarray:
    """Guarantee the output contract: (H, W, 3) uint8, C-contiguous, writable."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise DecodeError("corrupt", f"decoder produced {pixels.dtype} {pixels.shape}, expected (H, W, 3) uint8")
    if not (pixels.flags.c_contiguous and pixels.flags.writeable):
        pixels = np.array(pixels, order="C", copy=True)
    return pixels


# --------------------------------------------------------------------------
# JPEG (OpenCV)
# --------------------------------------------------------------------------

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_HIERARCHICAL = frozenset({0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF})
# The marker ending a scan: 0xFF followed by anything but 0x00 (byte stuffing),
# RST0-7 (restart markers live inside scans) or 0xFF (fill bytes; the regex
# then matches at the last 0xFF of the run).
_JPEG_SCAN_END = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_OPENCV_RGB_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
# The bare DCT-scale bits: IMREAD_REDUCED_GRAYSCALE_d is the scale bit alone
# (IMREAD_GRAYSCALE is 0), and with IMREAD_COLOR_RGB it decodes RGB at 1/d --
# equal to IMREAD_REDUCED_COLOR_d + cvtColor(BGR2RGB) (pinned by a test), one
# pass less.  IMREAD_REDUCED_COLOR_d itself includes IMREAD_COLOR (BGR), which
# OpenCV refuses next to IMREAD_COLOR_RGB.
_JPEG_SCALE_FLAGS = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def _scan_jpeg(data: bytes, max_pixels: int) -> tuple[int, int, int]:
    """Walk a JPEG's marker structure from SOI to EOI without decoding it.

    Parameters
    ----------
    data : bytes
        Starts with ``FFD8FF``.
    max_pixels : int
        Checked as soon as the frame header (SOFn) is read.

    Returns
    -------
    width, height, orientation : int

    Raises
    ------
    DecodeError
        ``truncated`` when the data ends before EOI, ``corrupt`` for bad
        structure, ``too_large``, ``unsupported_format`` (precision other
        than 8 bits, hierarchical JPEG).
    """
    n = len(data)
    pos = 2
    size: tuple[int, int] | None = None
    orientation = 1
    exif_seen = False
    scans = 0
    while True:
        if pos >= n:
            raise DecodeError("truncated", f"data ends at byte {n} before the EOI marker")
        if data[pos] != 0xFF:
            raise DecodeError("corrupt", f"expected a JPEG marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        if pos >= n:
            raise DecodeError("truncated", f"data ends at byte {n} before the EOI marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI: complete
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            continue
        if marker in (0x00, 0xD8):
            raise DecodeError("corrupt", f"invalid JPEG marker 0xFF{marker:02X} at byte {pos - 2}")
        if pos + 2 > n:
            raise DecodeError("truncated", f"data ends inside the 0xFF{marker:02X} segment header")
        end = pos + ((data[pos] << 8) | data[pos + 1])
        if end < pos + 2:
            raise DecodeError("corrupt", f"JPEG segment 0xFF{marker:02X} at byte {pos - 2} has length < 2")
        if end > n:
            raise DecodeError(
                "truncated", f"JPEG segment 0xFF{marker:02X} at byte {pos - 2} runs past the end ({n} bytes)"
            )
        if marker in _JPEG_SOF and size is None:
            if end - pos < 8:
                raise DecodeError("corrupt", "JPEG frame header (SOF) too short")
            precision, height, width, components = struct.unpack_from(">BHHB", data, pos + 2)
            if marker in _JPEG_HIERARCHICAL:
                raise DecodeError("unsupported_format", f"hierarchical JPEG (SOF{marker - 0xC0})")
            if precision != 8:
                raise DecodeError("unsupported_format", f"JPEG with {precision}-bit samples (only 8-bit is decoded)")
            if width == 0 or height == 0:
                # height 0 means "defined later by a DNL marker", which libjpeg rejects
                raise DecodeError("corrupt", f"JPEG frame header declares {width}x{height}")
            if components not in (1, 3, 4):
                raise DecodeError("corrupt", f"JPEG with {components} components")
            _check_cap(width, height, max_pixels, opencv=True)
            size = (width, height)
        elif marker == 0xE1 and not exif_seen and data.startswith(b"Exif\x00\x00", pos + 2):
            exif_seen = True  # only the first Exif block counts (later ones are often thumbnails' or junk)
            orientation = _exif_orientation(data[pos + 8 : end])
        elif marker == 0xDA:  # SOS: entropy-coded data follows the header
            if size is None:
                raise DecodeError("corrupt", "JPEG scan (SOS) before any frame header (SOF)")
            scans += 1
            match = _JPEG_SCAN_END.search(data, end)
            if match is None:
                raise DecodeError("truncated", f"data ends inside scan {scans} (no EOI marker)")
            pos = match.start()
            continue
        pos = end
    if size is None:
        raise DecodeError("corrupt", "JPEG has no frame header (SOF) before EOI")
    if scans == 0:
        raise DecodeError("corrupt", "JPEG has no scan (SOS) before EOI")
    return size[0], size[1], orientation


def _decode_jpeg(data: bytes, max_pixels: int, target: Target | None) -> tuple[np.ndarray, tuple[int, int]]:
    """JPEG -> (``(H, W, 3)`` RGB ``uint8`` oriented, full displayed ``(height, width)``).

    At DCT scale ``1 / reduction_factor(...)`` when ``target`` is given
    (policy point 11), else at full size.  No alpha, so no background.
    """
    width, height, orientation = _scan_jpeg(data, max_pixels)
    shown = (width, height) if orientation >= 5 else (height, width)
    d = 1 if target is None else reduction_factor(*shown, target)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _OPENCV_RGB_FLAGS | _JPEG_SCALE_FLAGS[d])
    if pixels is None:
        raise DecodeError("corrupt", "OpenCV (libjpeg-turbo) could not decode the JPEG data")
    expected = (-(-height // d), -(-width // d))
    if pixels.shape[:2] != expected:
        scale = f" (at scale 1/{d}: {expected[1]}x{expected[0]})" if d > 1 else ""
        raise DecodeError(
            "corrupt", f"decoded {pixels.shape[1]}x{pixels.shape[0]}, header says {width}x{height}{scale}"
        )
    return _apply_orientation(pixels, orientation), shown


# --------------------------------------------------------------------------
# PNG (OpenCV)
# --------------------------------------------------------------------------

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


@dataclasses.dataclass(frozen=True)
class _PngInfo:
    width: int
    height: int
    bit_depth: int
    color_type: int
    trns: bytes | None
    orientation: int


def _chunk_name(ctype: bytes) -> str:
    return ctype.decode("ascii", "replace")


def _scan_png(data: bytes, max_pixels: int) -> _PngInfo:
    """Validate a PNG's chunk structure and CRCs, read IHDR/tRNS/eXIf; no decoding.

    Raises
    ------
    DecodeError
        ``corrupt`` (bad IHDR, CRC mismatch, no IDAT), ``too_large``,
        ``truncated`` (data ends before IEND).
    """
    n = len(data)
    if n >= 16 and (data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d"):
        raise DecodeError("corrupt", "PNG does not start with a 13-byte IHDR chunk")
    if n < 33:
        raise DecodeError("truncated", f"data ends at byte {n}, inside the IHDR chunk")
    if zlib.crc32(data[12:29]) != struct.unpack_from(">I", data, 29)[0]:
        raise DecodeError("corrupt", "CRC mismatch in the IHDR chunk")
    width, height, depth, color, compression, filter_, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise DecodeError("corrupt", f"PNG header declares {width}x{height}")
    if depth not in _PNG_DEPTHS.get(color, ()) or compression or filter_ or interlace > 1:
        raise DecodeError(
            "corrupt",
            f"invalid PNG header: bit depth {depth}, colour type {color}, "
            f"compression {compression}, filter {filter_}, interlace {interlace}",
        )
    _check_cap(width, height, max_pixels, opencv=True)

    view = memoryview(data)  # CRCs over slices of a memoryview copy nothing
    pos = 33
    trns: bytes | None = None
    exif: bytes | None = None
    has_idat = False
    while True:
        if pos + 8 > n:
            raise DecodeError("truncated", f"data ends at byte {n} before the IEND chunk")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if length >= 2**31:
            raise DecodeError("corrupt", f"PNG chunk at byte {pos} declares length {length}")
        end = pos + 12 + length
        if end > n:
            raise DecodeError("truncated", f"{_chunk_name(ctype)} chunk at byte {pos} runs past the end ({n} bytes)")
        if zlib.crc32(view[pos + 4 : pos + 8 + length]) != struct.unpack_from(">I", data, pos + 8 + length)[0]:
            raise DecodeError("corrupt", f"CRC mismatch in the {_chunk_name(ctype)} chunk at byte {pos}")
        if ctype == b"IEND":
            break
        if ctype == b"IDAT":
            has_idat = True
        elif ctype == b"IHDR":
            raise DecodeError("corrupt", "second IHDR chunk")
        elif ctype == b"tRNS" and trns is None:
            trns = bytes(view[pos + 8 : pos + 8 + length])
        elif ctype == b"eXIf" and exif is None:
            exif = bytes(view[pos + 8 : pos + 8 + length])
        pos = end
    if not has_idat:
        raise DecodeError("corrupt", "PNG has no IDAT chunk")
    if color == 0 and trns is not None and len(trns) != 2:
        raise DecodeError("corrupt", f"grayscale tRNS chunk of {len(trns)} bytes (expected 2)")
    orientation = _exif_orientation(exif) if exif else 1
    return _PngInfo(width, height, depth, color, trns, orientation)


def _decode_png(data: bytes, max_pixels: int, background: tuple[int, int, int]) -> np.ndarray:
    """PNG -> ``(H, W, 3)`` RGB ``uint8``: 16-bit rule, alpha composited, oriented."""
    info = _scan_png(data, max_pixels)
    buf = np.frombuffer(data, np.uint8)
    needs_raw = info.bit_depth == 16 or info.color_type in (4, 6) or info.trns is not None
    if not needs_raw:
        # 8-bit (or less) opaque: libpng expands palette/gray/low bit depths to RGB itself.
        pixels = cv2.imdecode(buf, _OPENCV_RGB_FLAGS)
    else:
        # IMREAD_UNCHANGED keeps 16 bits and alpha (and ignores EXIF, which we apply).
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        pixels = None if raw is None else _png_raw_to_rgb(raw, info, background)
    if pixels is None:
        raise DecodeError("corrupt", "OpenCV (libpng) could not decode the PNG data")
    if pixels.shape[:2] != (info.height, info.width):
        raise DecodeError(
            "corrupt", f"decoded {pixels.shape[1]}x{pixels.shape[0]}, header says {info.width}x{info.height}"
        )
    return _apply_orientation(pixels, info.orientation)


def _png_raw_to_rgb(raw: np.ndarray, info: _PngInfo, background: tuple[int, int, int]) -> np.ndarray:
    """OpenCV's ``IMREAD_UNCHANGED`` PNG output -> RGB ``uint8``.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(H, W)`` gray, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA; ``uint8`` or
        ``uint16``.  OpenCV applies tRNS for palette and RGB images (BGRA) but
        ignores it for grayscale, which is handled here.
    """
    if raw.ndim == 2:
        gray_alpha = None
        if info.color_type == 0 and info.trns is not None:
            key = int.from_bytes(info.trns, "big")
            if info.bit_depth < 8:  # libpng scaled the samples to 0..255; scale the key alike
                key *= 255 // (2**info.bit_depth - 1)
            gray_alpha = np.where(raw == key, 0, 255).astype(np.uint8)
        gray = _reduce16(raw) if raw.dtype == np.uint16 else raw
        rgb = _gray_to_rgb(gray)
        if gray_alpha is None:
            return rgb
        return _composite(np.dstack([rgb, gray_alpha]), background)
    if raw.dtype == np.uint16:
        raw = _reduce16(raw)
    if raw.shape[2] == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    if raw.shape[2] == 4:
        return _composite(cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA), background)
    raise DecodeError("corrupt", f"PNG decoded to {raw.shape[2]} channels")


# --------------------------------------------------------------------------
# GIF, BMP, TIFF, WEBP (Pillow)
# --------------------------------------------------------------------------

_PIL_FORMAT = {"gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP"}
_PIL_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PIL_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class PolicyMisconfigured(RuntimeError):
    """The process is configured so that the policy cannot hold (not a reject)."""


_OBJECT_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _pillow_error(exc: BaseException, fmt: str) -> DecodeError:
    """Map an exception raised by Pillow to a reject."""
    if isinstance(exc, DecodeError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        return DecodeError("too_large", f"Pillow: {exc}")
    if isinstance(exc, MemoryError):
        return DecodeError("too_large", f"out of memory while decoding the {fmt}")
    # Pillow names the file object (with its address) in some messages; keep details reproducible.
    message = _OBJECT_ADDRESS.sub("<data>", f"Pillow ({fmt}): {type(exc).__name__}: {exc}")
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return DecodeError("truncated", message)
    return DecodeError("corrupt", message)


# BitsPerSample, Photometric, SamplesPerPixel, SampleFormat; Strip/Tile offsets and byte counts.
_TIFF_LAYOUT_TAGS = frozenset({258, 262, 277, 339, 273, 279, 324, 325})
# ImageWidth/Length, Compression, Photometric, RowsPerStrip, PlanarConfiguration, TileWidth/Length,
# YCbCrSubSampling: what sizes each strip/tile (read leniently: a malformed one skips the check).
_TIFF_SEGMENT_TAGS = frozenset({256, 257, 259, 262, 278, 284, 322, 323, 530})


def _jpeg_frame_size(stream: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the first SOFn of a JPEG stream, or ``None`` (no SOFn before a scan)."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    pos = 2  # after SOI
    while pos + 9 <= len(stream) and stream[pos] == 0xFF:
        marker = stream[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
        elif marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", stream, pos + 5)
            return width, height
        elif marker == 0xDA:
            return None
        else:
            pos += 2 + ((stream[pos + 2] << 8) | stream[pos + 3])
    return None


def _check_tiff_jpeg_frames(data: bytes, layout: dict[int, tuple[int, ...]]) -> None:
    """A JPEG-compressed TIFF (Compression 7) whose strip or tile holds a smaller JPEG frame is ``corrupt``.

    libtiff only warns about such a frame and leaves the rest of the strip's
    buffer unwritten, so the pixels would be whatever that memory held, and
    differ from one decode to the next.  Each strip/tile (per plane, with
    separate planes) is sized as libtiff sizes it for this comparison.
    """
    tags = _tiff_ifd0(data, _TIFF_SEGMENT_TAGS)
    if tags.get(259, (1,))[0] != 7:
        return
    width, height = tags.get(256, (0,))[0], tags.get(257, (0,))[0]
    tiled = 322 in tags or 323 in tags
    if tiled:
        seg_w, rows = tags.get(322, (width,))[0], tags.get(323, (height,))[0]
        offsets, counts = layout.get(324) or layout.get(273, ()), layout.get(325) or layout.get(279, ())
        per_plane = -(-width // max(seg_w, 1)) * -(-height // max(rows, 1))
    else:
        seg_w, rows = width, min(tags.get(278, (height,))[0], height)
        offsets, counts = layout.get(273, ()), layout.get(279, ())
        per_plane = -(-height // max(rows, 1))
    per_plane = max(per_plane, 1)
    separate = tags.get(284, (1,))[0] == 2
    sampling = tags.get(530, (2, 2)) if tags.get(262, (-1,))[0] == 6 else (1, 1)
    sub_w, sub_h = (max(v, 1) for v in sampling) if len(sampling) == 2 else (2, 2)
    for i, (offset, count) in enumerate(zip(offsets, counts)):
        want_w, want_h = seg_w, rows if tiled else min(rows, height - (i % per_plane) * rows)
        if separate and i >= per_plane:  # a chroma plane: subsampled (YCbCr)
            want_w, want_h = -(-want_w // sub_w), -(-want_h // sub_h)
        frame = _jpeg_frame_size(data[offset : offset + count])
        if frame is not None and (frame[0] < want_w or frame[1] < want_h):
            raise DecodeError(
                "corrupt", f"JPEG-compressed TIFF: strip/tile {i} holds a {frame[0]}x{frame[1]} JPEG frame, "
                f"smaller than the strip/tile ({want_w}x{want_h})"
            )


def _tiff_route(data: bytes) -> str:
    """Which reader a TIFF needs, from its first IFD: ``"pillow"`` or ``"opencv"``.

    Pillow decodes 8-bit (and 1/2/4-bit) layouts and single-channel 16-bit
    exactly, but reduces 16-bit RGB(A) by dropping the low byte; those go to
    OpenCV, which returns the 16-bit samples.  Other layouts (float, signed,
    32-bit, 16-bit CMYK, ...) have no 8-bit rule here: ``unsupported_format``.
    Decided before Pillow sees the file, so a float TIFF that Pillow cannot
    even identify is still ``unsupported_format``, not ``corrupt``; a first
    IFD or strip/tile that lies beyond the data is ``truncated``.
    """
    tags = _tiff_ifd0(data, _TIFF_LAYOUT_TAGS, max_values=1 << 20, strict=True)
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):
        for offset, count in zip(tags.get(offsets_tag, ()), tags.get(counts_tag, ())):
            if offset + count > len(data):
                raise DecodeError(
                    "truncated", f"a TIFF strip/tile ends at byte {offset + count}, beyond the data ({len(data)} bytes)"
                )
    _check_tiff_jpeg_frames(data, tags)
    bits = tags.get(258, (1,))
    photometric = tags.get(262, (-1,))[0]
    samples = tags.get(277, (1,))[0]
    sample_format = tags.get(339, (1,))
    if any(f != 1 for f in sample_format):
        detail = f"TIFF with non-unsigned-integer samples (SampleFormat {sample_format})"
        raise DecodeError("unsupported_format", detail)
    if all(b in (1, 2, 4, 8) for b in bits):
        return "pillow"
    if all(b == 16 for b in bits):
        if samples == 1:
            return "pillow"
        if photometric == 2 and samples in (3, 4):
            if _tiff_ifd0(data, frozenset({284})).get(284, (1,))[0] == 2:
                # OpenCV 4.14 mis-decodes separate planes, leaving rows of unwritten memory in its output.
                detail = "16-bit RGB(A) TIFF with separate planes (PlanarConfiguration 2)"
                raise DecodeError("unsupported_format", detail)
            return "opencv"
    raise DecodeError(
        "unsupported_format", f"TIFF with {bits}-bit samples, {samples} per pixel, photometric {photometric}"
    )


def _tiff_16bit_rgb(data: bytes, background: tuple[int, int, int]) -> np.ndarray:
    """16-bit RGB(A) TIFF via OpenCV's libtiff reader, then the 16-bit and alpha rules.

    OpenCV's TIFF reader applies the orientation tag itself, even with
    ``IMREAD_UNCHANGED | IMREAD_IGNORE_ORIENTATION`` (measured on 4.14 and
    pinned by a test), so the result is already as displayed.
    """
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    tags = _tiff_ifd0(data, frozenset({256, 257}))
    width, height = tags.get(256, (-1,))[0], tags.get(257, (-1,))[0]
    if _exif_orientation(data) >= 5:
        width, height = height, width
    if raw is None or raw.ndim != 3 or raw.shape[:2] != (height, width) or raw.shape[2] not in (3, 4):
        raise DecodeError("corrupt", "OpenCV (libtiff) could not decode the 16-bit TIFF")
    if raw.dtype == np.uint16:
        raw = _reduce16(raw)
    if raw.dtype != np.uint8:
        raise DecodeError("corrupt", f"OpenCV decoded the 16-bit TIFF as {raw.dtype}")
    if raw.shape[2] == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    return _composite(cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA), background)


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """A loaded Pillow image -> ``(H, W, 3)`` RGB ``uint8`` by the policy's rules."""
    mode = im.mode
    if mode in _PIL_16BIT_MODES:
        return _gray_to_rgb(_reduce16(np.asarray(im)))
    if mode in ("I", "F", "I;32", "I;32B", "I;32L") or mode.startswith("I;16S"):
        raise DecodeError("unsupported_format", f"{im.format} with Pillow mode {mode} (32-bit or float samples)")
    try:
        if mode in _PIL_ALPHA_MODES or "transparency" in im.info:
            return _composite(np.asarray(im.convert("RGBA")), background)
        if mode != "RGB":
            im = im.convert("RGB")
    except ValueError as exc:  # e.g. "conversion from LAB to RGB not supported"
        raise DecodeError("unsupported_format", f"{im.format} with Pillow mode {mode}: {exc}") from None
    # np.asarray(im) and np.frombuffer(im.tobytes(), ...) cost the same (both pack Pillow's 4 bytes per
    # RGB pixel with tobytes: 5.9 vs 6.0 ms on 3 MP, _finish's copy included). Pillow's zero-copy Arrow
    # export + cvtColor is 2.7x faster but crashes (SIGSEGV) on images over mapped memory, so it is not used.
    return np.asarray(im)


def _riff_exif(data: bytes) -> bytes | None:
    """The payload of a WebP's ``EXIF`` chunk, without an ``Exif\\0\\0`` prefix."""
    pos, n = 12, len(data)
    while pos + 8 <= n:
        fourcc = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if fourcc == b"EXIF":
            payload = data[pos + 8 : pos + 8 + length]
            return payload[6:] if payload.startswith(b"Exif\x00\x00") else payload
        pos += 8 + length + (length & 1)  # RIFF chunks are padded to even sizes
    return None


def _check_riff_size(data: bytes) -> None:
    """WebP: the RIFF header states the file size; less data than that is truncated."""
    declared = int.from_bytes(data[4:8], "little") + 8
    if declared < 20:
        raise DecodeError("corrupt", f"RIFF header declares {declared} bytes")
    if len(data) < declared:
        raise DecodeError("truncated", f"RIFF header declares {declared} bytes, data has {len(data)}")


def _orientation_for(fmt: str, data: bytes) -> int:
    """EXIF orientation of a Pillow-path file, read by this module."""
    if fmt == "tiff":
        return _exif_orientation(data)  # a TIFF file *is* the EXIF structure
    if fmt == "webp":
        exif = _riff_exif(data)
        return _exif_orientation(exif) if exif else 1
    return 1  # GIF and BMP carry no EXIF


def _decode_pillow(data: bytes, fmt: str, max_pixels: int, background: tuple[int, int, int]) -> np.ndarray:
    """GIF/BMP/TIFF/WEBP through Pillow: header size -> cap -> decode -> RGB."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise PolicyMisconfigured(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some other code): truncated images would "
            "decode as grey; featurelib's decode policy requires Pillow's default (False)"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Our cap (checked right after the lazy open, before load) has authority;
        # Pillow's hard DecompressionBombError still maps to too_large.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        route = _tiff_route(data) if fmt == "tiff" else "pillow"
        if fmt == "webp":
            _check_riff_size(data)
        try:
            # formats=[...]: Pillow tries exactly this plugin (never EPS/Ghostscript).
            im = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])
        except Exception as exc:
            raise _pillow_error(exc, fmt) from None
        with im:
            _check_cap(im.width, im.height, max_pixels, opencv=route == "opencv")
            orientation = _orientation_for(fmt, data)
            try:
                if route == "opencv":
                    pixels = _tiff_16bit_rgb(data, background)
                    orientation = 1  # applied by OpenCV's TIFF reader
                else:
                    im.load()  # the first frame only: no seek()
                    pixels = _pil_to_rgb(im, background)
                    if fmt == "tiff" and _ORIENTATION_TAG not in im.tag_v2:
                        # Pillow's TIFF loader applies the orientation itself
                        # (ImageOps.exif_transpose in load_end) and then deletes
                        # the tag; apply ours only if it did not.
                        orientation = 1
            except Exception as exc:
                raise _pillow_error(exc, fmt) from None
    if caught:
        w = caught[0]
        raise DecodeError("corrupt", f"Pillow ({fmt}) warned: {w.category.__name__}: {w.message}")
    return _apply_orientation(pixels, orientation)


def _decode_gif(data, max_pixels, background):
    return _decode_pillow(data, "gif", max_pixels, background)


def _decode_bmp(data, max_pixels, background):
    return _decode_pillow(data, "bmp", max_pixels, background)


def _decode_tiff(data, max_pixels, background):
    return _decode_pillow(data, "tiff", max_pixels, background)


def _decode_webp(data, max_pixels, background):
    return _decode_pillow(data, "webp", max_pixels, background)


# JPEG, the one format with a reduced decode, is called by decode_image itself.
_DECODERS: dict[str, Callable[[bytes, int, tuple[int, int, int]], np.ndarray]] = {
    "png": _decode_png,
    "gif": _decode_gif,
    "bmp": _decode_bmp,
    "tiff": _decode_tiff,
    "webp": _decode_webp,
}


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def _check_args(max_pixels: int, background: tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    bg = tuple(int(v) for v in background)
    if len(bg) != 3 or not all(0 <= v <= 255 for v in bg):
        raise ValueError(f"background must be three integers in 0..255, got {background!r}")
    return bg  # type: ignore[return-value]


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    target: Target | None = None,
) -> DecodedImage:
    """Decode encoded image bytes by the policy in this module's docstring.

    Parameters
    ----------
    data : bytes
        The whole encoded file (``bytearray``/``memoryview`` are accepted).
    max_pixels : int, optional
        Largest ``width * height`` accepted, read from the header before
        decoding.
    background : tuple of 3 int, optional
        RGB that alpha is composited over.
    target : (int, int, str), optional
        ``(H, W, mode)``, the size and resize mode (one of
        :data:`RESIZE_MODES`) the caller brings the image to next: a JPEG is
        then decoded at the reduced DCT scale :func:`reduction_factor` allows
        (policy point 11).  ``None`` (default): full size.  Other formats
        ignore it.

    Returns
    -------
    DecodedImage
        ``pixels`` is ``(H, W, 3)`` ``uint8`` RGB, C-contiguous, after EXIF
        orientation; ``orig_height``/``orig_width`` the full displayed size.

    Raises
    ------
    featurelib.errors.DecodeError
        For every problem with ``data``: ``empty``, ``unreadable``,
        ``unsupported_format``, ``too_large``, ``truncated``, ``corrupt``.
    ValueError, TypeError
        Invalid arguments (a caller's bug, not a reject).
    """
    bg = _check_args(max_pixels, background)
    target = _check_target(target)
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if not data:
        raise DecodeError("empty", "0 bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError("unreadable", f"no known image signature ({len(data)} bytes)")
    if fmt not in ALLOWED_FORMATS:
        raise DecodeError("unsupported_format", f"{fmt} is not one of {', '.join(ALLOWED_FORMATS)}")
    try:
        if fmt == "jpeg":
            pixels, shown = _decode_jpeg(data, int(max_pixels), target)
        else:
            pixels = _DECODERS[fmt](data, int(max_pixels), bg)
            shown = pixels.shape[:2]
        pixels = _finish(pixels)
    except (DecodeError, PolicyMisconfigured):
        raise
    except MemoryError:
        raise DecodeError("too_large", f"out of memory while decoding the {fmt}") from None
    except Exception as exc:  # anything a decoder or a conversion raises is this input's fault
        raise DecodeError("corrupt", f"{fmt}: {type(exc).__name__}: {exc}") from None
    return DecodedImage(pixels=pixels, orig_height=int(shown[0]), orig_width=int(shown[1]), format=fmt)


# --------------------------------------------------------------------------
# Isolation in a child process
# --------------------------------------------------------------------------

#: Environment variable that lets a *child* honour injected faults (tests only).
FAULT_ENV = "FEATURELIB_TEST_DECODE_FAULT"
#: Payload prefix of a fault request: ``FAULT_PREFIX + b"hang" | b"exit" | b"segfault"``.
FAULT_PREFIX = b"FEATURELIB_TEST_FAULT:"

_READY = b"featurelib-decoder-ready"
_REQUEST = struct.Struct("<QBBBIIB")  # max_pixels, background RGB, target height, width, mode (0: no target)
_OK = struct.Struct("<cIIIIB")  # b"K", pixels' height, width, orig_height, orig_width, format index
_ERR = struct.Struct("<cB")  # b"E", reason index; the detail (UTF-8) follows
_CHILD_CODE = "import sys; from featurelib.decode import _child_main; _child_main(int(sys.argv[1]), int(sys.argv[2]))"


def _inject_fault(kind: bytes) -> None:
    """Misbehave on purpose (child side, only with ``FEATURELIB_TEST_DECODE_FAULT=1``)."""
    if kind == b"hang":
        while True:
            time.sleep(3600)
    if kind == b"exit":
        os._exit(70)
    if kind == b"segfault":
        import ctypes

        ctypes.string_at(0)  # reads address 0: a real SIGSEGV


def _exit_when_orphaned(parent_pid: int) -> None:
    """Child watchdog: a hung child must not outlive its parent."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _child_main(read_fd: int, write_fd: int) -> None:
    """Serve decode requests over two pipes until the parent closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    requests = Connection(read_fd, writable=False)
    replies = Connection(write_fd, readable=False)
    faults = os.environ.get(FAULT_ENV) == "1"
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    replies.send_bytes(_READY)
    while True:
        try:
            header = requests.recv_bytes()
            data = requests.recv_bytes()
        except (EOFError, OSError):
            return
        max_pixels, r, g, b, target_height, target_width, mode = _REQUEST.unpack(header)
        target = (target_height, target_width, RESIZE_MODES[mode - 1]) if mode else None
        if faults and data.startswith(FAULT_PREFIX):
            _inject_fault(data[len(FAULT_PREFIX) :])
        try:
            image = decode_image(data, max_pixels=max_pixels, background=(r, g, b), target=target)
        except DecodeError as exc:
            replies.send_bytes(_ERR.pack(b"E", REASONS.index(exc.reason)) + exc.detail.encode("utf-8", "replace"))
            continue
        height, width = image.pixels.shape[:2]
        fmt = ALLOWED_FORMATS.index(image.format)
        replies.send_bytes(_OK.pack(b"K", height, width, image.orig_height, image.orig_width, fmt))
        replies.send_bytes(image.pixels.reshape(-1))  # 1-D: Connection measures len(), not nbytes


class IsolatedDecoder:
    """Runs :func:`decode_image` in a child process (``decode.isolation: subprocess``).

    A decoder that hangs or crashes the process becomes a reject ``timeout`` /
    ``crashed`` instead of killing the shard task.  One long-lived child,
    started by the constructor and replaced after a timeout or crash.  The
    child is a plain ``subprocess`` (``sys.executable -c ...``) talking over
    two pipes, so it works inside daemonic ``multiprocessing`` workers, where
    ``multiprocessing.Process`` is forbidden.  Create it inside the worker;
    it is not picklable.  POSIX only.  Calls are serialised by a lock.

    Parameters
    ----------
    timeout_s : float
        Longest wall time one :meth:`decode` may take (send, decode, reply).
    max_pixels, background, target
        As in :func:`decode_image`.
    startup_timeout_s : float
        Longest wait for a new child to import and report ready; not part of
        any image's ``timeout_s``.

    Raises
    ------
    RuntimeError
        When a child cannot be started (an environment problem, not a reject).
    """

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        background: tuple[int, int, int] = (255, 255, 255),
        target: Target | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self._background = _check_args(max_pixels, background)
        checked = _check_target(target)
        sizes = (0, 0, 0) if checked is None else (checked[0], checked[1], RESIZE_MODES.index(checked[2]) + 1)
        self._header = _REQUEST.pack(int(max_pixels), *self._background, *sizes)
        self._timeout_s = float(timeout_s)
        self._startup_timeout_s = float(startup_timeout_s)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._start()

    # -- child lifecycle ---------------------------------------------------

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        # The child must import this very package, even when it is not installed.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # a worker's stdout may be a protocol channel
                env=env,
            )
        except BaseException:
            os.close(to_child_w)
            os.close(from_child_r)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._requests = Connection(to_child_w, readable=False)
        self._replies = Connection(from_child_r, writable=False)
        try:
            ready = self._replies.poll(self._startup_timeout_s) and self._replies.recv_bytes() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            status = self._kill()
            raise RuntimeError(f"the isolated decoder process did not start ({status}); see its stderr")

    def _kill(self) -> str:
        """Kill the child (if any), release the pipes; describe how it ended."""
        proc, self._proc = self._proc, None
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        self._requests = self._replies = None
        if proc is None:
            return "no process"
        if proc.poll() is None:
            proc.kill()
        return _describe_exit(proc.wait())

    def _died(self) -> DecodeError:
        """The child is gone mid-request: reap it and build the reject."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)  # the pipe closes a moment before the exit status exists
        return DecodeError("crashed", f"decoder process died: {self._kill()}")

    # -- public API --------------------------------------------------------

    def decode(self, data: bytes) -> DecodedImage:
        """Decode ``data`` in the child.

        Returns
        -------
        DecodedImage
            Pixels equal to ``decode_image(data, ...)`` in this process.

        Raises
        ------
        featurelib.errors.DecodeError
            Any reason of :func:`decode_image`, plus ``timeout`` and
            ``crashed``.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                # Replace a missing or already-dead child *before* this input,
                # so a child killed between calls is not blamed on this image.
                self._kill()
                self._start()
            deadline = time.monotonic() + self._timeout_s
            assert self._requests is not None and self._replies is not None
            try:
                self._requests.send_bytes(self._header)
                self._requests.send_bytes(data)
                reply = self._receive(deadline)
                if reply[:1] == b"E":
                    _, reason = _ERR.unpack_from(reply)
                    raise DecodeError(REASONS[reason], reply[_ERR.size :].decode("utf-8", "replace"))
                _, height, width, orig_height, orig_width, fmt = _OK.unpack(reply)
                pixels = np.empty((height, width, 3), np.uint8)
                if not self._replies.poll(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError
                received = self._replies.recv_bytes_into(pixels.reshape(-1))
            except TimeoutError:
                self._kill()
                detail = f"no answer from the decoder process within {self._timeout_s:g} s"
                raise DecodeError("timeout", detail) from None
            except (EOFError, OSError):
                raise self._died() from None
            except (struct.error, IndexError, ValueError, BufferTooShort) as exc:  # a garbled reply
                self._kill()
                raise DecodeError("crashed", f"bad reply from the decoder process: {exc}") from None
            if received != pixels.nbytes:
                self._kill()
                raise DecodeError("crashed", f"decoder process sent {received} bytes, expected {pixels.nbytes}")
            return DecodedImage(
                pixels=pixels, orig_height=orig_height, orig_width=orig_width, format=ALLOWED_FORMATS[fmt]
            )

    def _receive(self, deadline: float) -> bytes:
        assert self._replies is not None
        if not self._replies.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError
        return self._replies.recv_bytes()

    @property
    def pid(self) -> int | None:
        """The current child's process id (``None`` between a failure and the next call)."""
        return None if self._proc is None else self._proc.pid

    def close(self) -> None:
        """Stop the child: close its request pipe (it exits), kill it if it lingers."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if self._requests is not None:
                self._requests.close()
                self._requests = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)  # a clean exit first; killed below if it does not come
            self._kill()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown anything may already be gone; never raise from __del__.
        with contextlib.suppress(Exception):
            self.close()

    def __reduce__(self):
        raise TypeError("IsolatedDecoder owns a child process and cannot be pickled; create it inside the worker")


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
