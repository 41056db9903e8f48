"""Small, real, labelled image sets built from images bundled with the libraries.

Every set is written as ``root/<label>/<file>``: one folder per class, the
folder name is the label (the layout ``input.path`` expects, docs/CONTRACT.md
"Record identity, labels, splits, shards"). Nothing is downloaded: the sources
are the files that ship inside the scikit-learn and scikit-image wheels, so a
sample can be built offline, in CI, or on a cluster node without network.

Sets (defaults, ``scale=1``)
----------------------------
``digits``
    All 1,797 images of :func:`sklearn.datasets.load_digits`, 10 classes
    (folders ``0`` .. ``9``, 174..183 images each). Each 8x8 image (values
    0..16) is mapped to 0..255 with ``(255 * v + 8) // 16`` (round half up)
    and enlarged 4x to 32x32 with nearest-neighbour interpolation (see
    :func:`digit_to_image` for why), then saved as an 8-bit single-channel PNG
    named by its index in the dataset, e.g. ``3/digit-00042.png``. About
    0.32 MB of data (1,797 small files: about 7 MB on disk with 4 KiB blocks).
    ``seed`` has no effect (the set is the dataset itself); ``scale=k`` writes
    ``k`` copies of every image
    (``digit-00042.png``, ``digit-00042-r1.png``, ...), pixel-identical, for
    benchmark corpora (``dedup: content`` would drop all but one copy).
``textures``
    3 classes ``brick``, ``grass``, ``gravel`` (``skimage.data``, 512x512
    grayscale photographs). 40 crops per class at seeded random positions and
    sizes (square, 96..192 px), resized to 128x128 and saved as 8-bit
    single-channel PNG, e.g. ``grass/grass-0007.png``. 120 images, about 1.3 MB.
``photos``
    10 classes, one per bundled colour photograph, the folder named after the
    photograph: ``astronaut``, ``chelsea``, ``coffee``, ``hubble_deep_field``,
    ``immunohistochemistry``, ``motorcycle`` (the left view of
    ``skimage.data.stereo_motorcycle``), ``retina``, ``rocket`` (scikit-image)
    and ``china``, ``flower`` (:func:`sklearn.datasets.load_sample_images`).
    Per class, 10 landscape JPEGs of 500x375 (width x height; a seeded random
    4:3 crop covering 60..100 % of the largest 4:3 region of the photograph)
    named ``<class>-0000.jpg`` .. and 2 "large" JPEGs of 2000x1500 (a seeded
    4:3 crop covering 85..100 % of that region, upscaled with bicubic
    interpolation) named ``<class>-large-0000.jpg`` ... JPEG quality is drawn
    per image from 75..95. 120 images, about 10.5 MB.
    Crops larger than the target are shrunk with ``INTER_AREA``; smaller ones
    are enlarged with ``INTER_CUBIC``: all 2000x1500 images, and many 500x375
    ones, since most sources are only 451..741 px wide (``retina``, 1411 px,
    and ``hubble_deep_field``, 1000 px, are the exceptions).

``scale=k`` multiplies every per-class count by ``k``; for ``textures`` and
``photos`` the images of ``scale=1`` are exactly the first images of
``scale=k`` (each class draws from its own seeded stream, in file order).

Determinism
-----------
The same ``(name, seed, scale)`` gives byte-identical files on the same
library versions: random draws come from :func:`numpy.random.default_rng`
seeded with ``[seed, class index, stream]``, files are written in a fixed
order, and encoding goes through :func:`cv2.imencode` with every parameter
that influences the bytes given explicitly. Other versions of OpenCV (its
libpng/libjpeg/zlib), NumPy or the bundled data may give different bytes.

License
-------
The sources ship inside the scikit-image and scikit-learn wheels; the derived
sets carry the sources' terms and are meant for tests, examples and
benchmarks. Per the ``skimage.data`` docstrings: ``brick``, ``grass``,
``gravel``, ``chelsea``, ``coffee`` and ``retina`` are CC0; ``astronaut``,
``hubble_deep_field`` (NASA) and ``rocket`` (SpaceX) are public domain;
``immunohistochemistry`` has no known copyright restrictions; ``motorcycle``
is from the Middlebury 2014 stereo benchmark (reference in that docstring).
``china`` and ``flower`` are CC BY 2.0, with the attribution given in
``sklearn/datasets/images/README.txt``; the digits are the UCI "Optical
Recognition of Handwritten Digits" data (see scikit-learn's description of
``load_digits``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

__all__ = ["SAMPLES", "SampleSummary", "make_sample"]

#: Names accepted by :func:`make_sample`.
SAMPLES = ("digits", "textures", "photos")

# --- digits -----------------------------------------------------------------
DIGIT_SIDE = 32  # 8x8 -> 32x32: an exact 4x integer enlargement
DIGIT_MAX = 16  # load_digits values are counts of set pixels in 4x4 blocks, 0..16

# --- textures ---------------------------------------------------------------
TEXTURE_CLASSES = ("brick", "grass", "gravel")
TEXTURES_PER_CLASS = 40
TEXTURE_CROP = (96, 192)  # inclusive range of the square crop side, px
TEXTURE_SIDE = 128

# --- photos -----------------------------------------------------------------
PHOTO_CLASSES = (
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
PHOTOS_PER_CLASS = 10
PHOTO_SIZE = (500, 375)  # (width, height)
PHOTO_CROP_FRACTION = (0.6, 1.0)  # fraction of the largest 4:3 region's width
LARGE_PER_CLASS = 2
LARGE_SIZE = (2000, 1500)  # (width, height)
LARGE_CROP_FRACTION = (0.85, 1.0)  # the same, for the 2000x1500 images
JPEG_QUALITY = (75, 95)  # inclusive

# Random streams per class; separate streams keep the small and large photos
# independent, so changing one count never changes the other's images.
_STREAM_CROPS = 0
_STREAM_LARGE = 1

# PNG: zlib level and strategy fixed so the bytes do not depend on defaults.
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    6,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_DEFAULT,
]


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`make_sample` wrote.

    Attributes
    ----------
    name : str
        The sample's name, one of :data:`SAMPLES`.
    root : pathlib.Path
        The folder the sample was written into.
    n_images : int
        Number of image files written.
    n_classes : int
        Number of class folders.
    bytes : int
        Total size of the files written.
    labels : tuple of str
        Class folder names, sorted.
    """

    name: str
    root: Path
    n_images: int
    n_classes: int
    bytes: int
    labels: tuple[str, ...]


# --- encoding ---------------------------------------------------------------


def encode_png(image: np.ndarray) -> bytes:
    """Encode an 8-bit grayscale or BGR image as PNG with fixed parameters.

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` array, ``(H, W)`` or ``(H, W, 3)`` in BGR order.

    Returns
    -------
    bytes
        The PNG file.
    """
    ok, buf = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:  # pragma: no cover - only on an OpenCV build without PNG
        raise RuntimeError("cv2.imencode failed to encode PNG")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Encode a BGR image as a baseline JPEG with fixed parameters.

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` array ``(H, W, 3)`` in BGR order.
    quality : int
        JPEG quality, 0..100.

    Returns
    -------
    bytes
        The JPEG file.
    """
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        int(quality),
        # Baseline, non-optimised Huffman tables, 4:2:0: the most common
        # camera/web JPEG, and every knob that changes the bytes pinned down.
        cv2.IMWRITE_JPEG_PROGRESSIVE,
        0,
        cv2.IMWRITE_JPEG_OPTIMIZE,
        0,
        cv2.IMWRITE_JPEG_RST_INTERVAL,
        0,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    ]
    ok, buf = cv2.imencode(".jpg", image, params)
    if not ok:  # pragma: no cover - only on an OpenCV build without JPEG
        raise RuntimeError("cv2.imencode failed to encode JPEG")
    return buf.tobytes()


# --- pure image helpers -----------------------------------------------------


def digit_to_image(digit: np.ndarray) -> np.ndarray:
    """Turn one 8x8 ``load_digits`` image into a 32x32 ``uint8`` image.

    Values 0..16 map to ``round(v * 255 / 16)`` (0 -> 0, 16 -> 255), computed
    in integers so no float rounding differs between platforms. The 4x
    enlargement is nearest-neighbour: each source pixel becomes a 4x4 block,
    so no intensity is invented, the original data is recovered exactly by
    taking every 4th pixel, and the blocky look is what the data really is (a
    count of set pixels per 4x4 block of the original 32x32 bitmap).

    Parameters
    ----------
    digit : numpy.ndarray
        ``(8, 8)`` array of values 0..16.

    Returns
    -------
    numpy.ndarray
        ``(32, 32)`` ``uint8`` array.
    """
    values = np.asarray(digit).astype(np.int64)
    if values.shape != (8, 8) or values.min() < 0 or values.max() > DIGIT_MAX:
        raise ValueError("a digit must be an 8x8 array of values 0..16")
    small = ((values * 255 + DIGIT_MAX // 2) // DIGIT_MAX).astype(np.uint8)
    factor = DIGIT_SIDE // 8
    # Block replication is nearest-neighbour at an integer factor, exactly.
    return np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)


def largest_4x3(width: int, height: int) -> tuple[int, int]:
    """Largest 4:3 landscape ``(width, height)`` that fits, width a multiple of 4.

    A multiple of 4 keeps the height (``3 * width / 4``) an exact integer.

    Parameters
    ----------
    width, height : int
        Size of the source image.

    Returns
    -------
    tuple of int
        ``(w, h)`` with ``w / h == 4 / 3``, ``w <= width``, ``h <= height``.
    """
    w = min(width, (height * 4) // 3) // 4 * 4
    if w < 4:
        raise ValueError(f"image of {width}x{height} is too small for a 4:3 crop")
    return w, w * 3 // 4


def random_crop_4x3(
    rng: np.random.Generator, width: int, height: int, fraction: tuple[float, float]
) -> tuple[int, int, int, int]:
    """Draw a 4:3 crop box covering a random fraction of the largest 4:3 region.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (three draws per call).
    width, height : int
        Size of the source image.
    fraction : tuple of float
        ``(low, high)`` range of the crop width relative to the largest 4:3
        width that fits.

    Returns
    -------
    tuple of int
        ``(x, y, w, h)`` with ``w / h == 4 / 3``, inside the image.
    """
    max_w, _ = largest_4x3(width, height)
    w = max(4, int(round(max_w * rng.uniform(*fraction))) // 4 * 4)
    h = w * 3 // 4
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    return x, y, w, h


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` = ``(width, height)``, area when shrinking, cubic when enlarging.

    ``INTER_AREA`` averages all source pixels under a target pixel, which is
    the alias-free choice for shrinking; when enlarging it degenerates to a
    bilinear-like filter, so bicubic is used there instead (sharper).

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` image.
    size : tuple of int
        Target ``(width, height)``.

    Returns
    -------
    numpy.ndarray
        The resized image.
    """
    shrinking = size[0] <= image.shape[1] and size[1] <= image.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=interpolation)


def class_rng(seed: int, class_index: int, stream: int) -> np.random.Generator:
    """Random generator for one class and stream of a sample.

    Parameters
    ----------
    seed : int
        The user's seed.
    class_index : int
        Position of the class in its sample's class tuple.
    stream : int
        Which stream of draws (crops, large photos).

    Returns
    -------
    numpy.random.Generator
        A PCG64 generator; its stream is fixed by NumPy's compatibility policy.
    """
    return np.random.default_rng([seed, class_index, stream])


# --- sources (bundled data only) ---------------------------------------------
# The imports are lazy: sklearn.datasets alone takes 1.5..3 s to import, and
# nothing else in featurelib should pay that for importing this module.


def _load_texture(name: str) -> np.ndarray:
    """Load a bundled skimage grayscale texture (``brick``, ``grass``, ``gravel``)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.ascontiguousarray(image, dtype=np.uint8)


def _skimage_rgb(name: str) -> Callable[[], np.ndarray]:
    """Loader of the bundled skimage colour photograph ``skimage.data.<name>``."""

    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    """Left view of the bundled Middlebury stereo pair (the pair loads as one)."""
    import skimage.data

    left, _right, _disparity = skimage.data.stereo_motorcycle()
    return left


def _sklearn_photo(filename: str) -> Callable[[], np.ndarray]:
    """Loader of a photograph bundled with scikit-learn (``china.jpg``, ``flower.jpg``)."""

    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


_PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage_rgb("astronaut"),
    "chelsea": _skimage_rgb("chelsea"),
    "china": _sklearn_photo("china.jpg"),
    "coffee": _skimage_rgb("coffee"),
    "flower": _sklearn_photo("flower.jpg"),
    "hubble_deep_field": _skimage_rgb("hubble_deep_field"),
    "immunohistochemistry": _skimage_rgb("immunohistochemistry"),
    "motorcycle": _motorcycle,
    "retina": _skimage_rgb("retina"),
    "rocket": _skimage_rgb("rocket"),
}


def load_photo_bgr(name: str) -> np.ndarray:
    """Load one bundled colour photograph as a contiguous BGR ``uint8`` array.

    Parameters
    ----------
    name : str
        One of :data:`PHOTO_CLASSES`.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` BGR image, OpenCV's channel order.
    """
    rgb = np.asarray(_PHOTO_LOADERS[name](), dtype=np.uint8)[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1])


# --- per-set file generators: yield (relative path, bytes) in a fixed order ---


def _digit_files(seed: int, scale: int) -> Iterator[tuple[str, bytes]]:
    """Files of ``digits``; ``seed`` is unused (the set is the dataset itself)."""
    del seed
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        data = encode_png(digit_to_image(image))
        for rep in range(scale):
            suffix = "" if rep == 0 else f"-r{rep}"
            yield f"{int(target)}/digit-{index:05d}{suffix}.png", data


def _texture_files(seed: int, scale: int) -> Iterator[tuple[str, bytes]]:
    """Files of ``textures``: seeded square crops resized to 128x128."""
    for class_index, name in enumerate(TEXTURE_CLASSES):
        source = _load_texture(name)
        height, width = source.shape
        rng = class_rng(seed, class_index, _STREAM_CROPS)
        for i in range(TEXTURES_PER_CLASS * scale):
            side = int(rng.integers(TEXTURE_CROP[0], TEXTURE_CROP[1] + 1))
            x = int(rng.integers(0, width - side + 1))
            y = int(rng.integers(0, height - side + 1))
            crop = source[y : y + side, x : x + side]
            yield f"{name}/{name}-{i:04d}.png", encode_png(resize(crop, (TEXTURE_SIDE,) * 2))


def _photo_files(seed: int, scale: int) -> Iterator[tuple[str, bytes]]:
    """Files of ``photos``: seeded 4:3 crops as 500x375 and 2000x1500 JPEGs."""
    for class_index, name in enumerate(PHOTO_CLASSES):
        source = load_photo_bgr(name)
        height, width = source.shape[:2]
        kinds = (
            ("", _STREAM_CROPS, PHOTOS_PER_CLASS, PHOTO_SIZE, PHOTO_CROP_FRACTION),
            ("-large", _STREAM_LARGE, LARGE_PER_CLASS, LARGE_SIZE, LARGE_CROP_FRACTION),
        )
        for tag, stream, count, size, fraction in kinds:
            rng = class_rng(seed, class_index, stream)
            for i in range(count * scale):
                x, y, w, h = random_crop_4x3(rng, width, height, fraction)
                quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
                image = resize(source[y : y + h, x : x + w], size)
                yield f"{name}/{name}{tag}-{i:04d}.jpg", encode_jpeg(image, quality)


_GENERATORS: dict[str, Callable[[int, int], Iterator[tuple[str, bytes]]]] = {
    "digits": _digit_files,
    "textures": _texture_files,
    "photos": _photo_files,
}


# --- public entry point -----------------------------------------------------


def _check_arguments(name: str, seed: int, scale: int) -> None:
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; known samples: {', '.join(SAMPLES)}")
    # bool is an int subclass; reject it so seed=True is not silently 1.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def _prepare_root(root: Path) -> None:
    """Create ``root`` or accept it only when it is an empty folder.

    Writing into a non-empty folder would mix the sample with other files
    (which the pipeline would then list as inputs), so it is refused.
    """
    if root.exists() and not root.is_dir():
        raise ValueError(f"sample root {str(root)!r} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(
            f"sample root {str(root)!r} is not empty; "
            "choose a new or empty folder (existing files are never overwritten)"
        )
    root.mkdir(parents=True, exist_ok=True)


def make_sample(
    name: str, root: str | os.PathLike, *, seed: int = 0, scale: int = 1
) -> SampleSummary:
    """Write the labelled sample ``name`` under ``root/<label>/<file>``.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLES`: ``"digits"``, ``"textures"`` or ``"photos"``
        (see the module docstring for what each holds).
    root : str or os.PathLike
        Folder to write into. It is created (with its parents) when missing;
        an existing folder must be empty.
    seed : int, default 0
        Non-negative seed of the random crops and JPEG qualities. Ignored by
        ``digits``, which is the dataset itself.
    scale : int, default 1
        Positive multiplier of every per-class count, for benchmark corpora.

    Returns
    -------
    SampleSummary
        Name, root, counts, total bytes and sorted labels of what was written.

    Raises
    ------
    ValueError
        For an unknown ``name`` (the message lists the known ones), a bad
        ``seed`` or ``scale``, or a ``root`` that is a file or a non-empty
        folder. Nothing is written in these cases.

    Notes
    -----
    A build that fails half-way (disk full, interrupted) leaves a partial
    folder; remove it before building again.

    Examples
    --------
    >>> summary = make_sample("digits", "data/digits")  # doctest: +SKIP
    >>> summary.n_images, summary.n_classes
    (1797, 10)
    """
    _check_arguments(name, seed, scale)
    root = Path(root)
    _prepare_root(root)

    n_images = 0
    total = 0
    labels: set[str] = set()
    for relative, data in _GENERATORS[name](int(seed), int(scale)):
        label = relative.split("/", 1)[0]
        if label not in labels:
            (root / label).mkdir()
            labels.add(label)
        (root / relative).write_bytes(data)
        n_images += 1
        total += len(data)
    return SampleSummary(
        name=name,
        root=root,
        n_images=n_images,
        n_classes=len(labels),
        bytes=total,
        labels=tuple(sorted(labels)),
    )
