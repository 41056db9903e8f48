"""Local keypoint descriptors encoded as a bag of visual words against a fitted vocabulary.

``keypoints_bovw`` is an extractor with a fitted artefact (see
:class:`featurelib.registry.ArtifactDef`): a pre-pass samples local descriptors
from train images on the workers, the driver fits one seeded k-means on them
(the vocabulary, ``OUT/artifacts/<column>.vocab.npz``), and the main pass
encodes every image as the histogram of its descriptors' nearest words.

Descriptors (OpenCV): ``sift`` (128 floats), ``rootsift`` (SIFT, L1-normalised
then square-rooted: Arandjelovic and Zisserman 2012), ``orb`` (256 bits),
``brisk`` (512 bits), ``akaze`` (61 bytes: 488 bits). Binary descriptors are unpacked to
0/1 values and clustered with the Euclidean distance on those bits (the square
root of the Hamming distance). SURF is patented and absent from the OpenCV
wheels; SIFT is free since OpenCV 4.4.
"""

from __future__ import annotations

import functools
import io
import math

import cv2
import numpy as np

from featurelib import registry

DESCRIPTORS = ("sift", "rootsift", "orb", "brisk", "akaze")
NORMALIZE = ("l1", "l2")
#: Above this many sampled descriptors the vocabulary is fitted with MiniBatchKMeans.
MINIBATCH_ABOVE = 20_000
#: Images with a side shorter than this have no keypoints (OpenCV's BRISK fails below 6 px, ORB and
#: AKAZE on 1 px; no detector finds a usable keypoint there anyway).
MIN_SIDE = 16
#: Values per descriptor row (binary ones unpacked to bits).
DIMENSIONS = {"sift": 128, "rootsift": 128, "orb": 256, "brisk": 512, "akaze": 488}


@functools.lru_cache(maxsize=8)
def _detector(descriptor: str, max_keypoints: int):
    """The OpenCV detector, built once per process (workers run one thread: no sharing across threads)."""
    if descriptor in ("sift", "rootsift"):
        return cv2.SIFT_create(nfeatures=max_keypoints)
    if descriptor == "orb":
        return cv2.ORB_create(nfeatures=max_keypoints)
    if descriptor == "brisk":
        return cv2.BRISK_create()
    return cv2.AKAZE_create()


def local_descriptors(gray: np.ndarray, *, descriptor: str = "sift", max_keypoints: int = 500) -> np.ndarray:
    """The descriptors of the strongest keypoints of a grayscale image.

    Parameters
    ----------
    gray : (H, W) uint8 ndarray
    descriptor : {'sift', 'rootsift', 'orb', 'brisk', 'akaze'}
    max_keypoints : int
        Keep the strongest this many (by response; ties broken by position, size
        and angle, so the order never depends on OpenCV's threads).

    Returns
    -------
    (n, D) float32 ndarray, n <= max_keypoints
        Binary descriptors unpacked to 0/1 bits; ``(0, D)`` when nothing is found.
    """
    dim = DIMENSIONS[descriptor]
    if min(gray.shape) < MIN_SIDE:
        return np.zeros((0, dim), dtype=np.float32)
    keypoints, values = _detector(descriptor, max_keypoints).detectAndCompute(gray, None)
    if values is None or not keypoints:
        return np.zeros((0, dim), dtype=np.float32)
    order = sorted(range(len(keypoints)), key=lambda i: (-keypoints[i].response, keypoints[i].pt[1],
                                                          keypoints[i].pt[0], keypoints[i].size, keypoints[i].angle))
    values = values[order[:max_keypoints]]
    if descriptor in ("sift", "rootsift"):
        values = values.astype(np.float32)
        if descriptor == "rootsift":
            values = np.sqrt(values / (np.abs(values).sum(axis=1, keepdims=True) + 1e-7))
        return values
    return np.unpackbits(values, axis=1).astype(np.float32)


def _sample(params, gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to ``sample_per_image`` of an image's descriptors, drawn without replacement (seeded per image)."""
    values = local_descriptors(gray, descriptor=params["descriptor"], max_keypoints=params["max_keypoints"])
    if len(values) > params["sample_per_image"]:
        values = values[np.sort(rng.choice(len(values), params["sample_per_image"], replace=False))]
    return values


def nearest_words(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center (Euclidean) of each row; (n,) int64."""
    distances = (centers * centers).sum(axis=1)[None, :] - 2.0 * values @ centers.T
    return np.argmin(distances, axis=1)


def _fit(params, samples: list[np.ndarray], seed: int) -> bytes:
    """Fit the vocabulary (and the idf weights) on the sampled descriptors; an ``.npz`` file's bytes."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    k = params["vocabulary_size"]
    data = np.concatenate([s for s in samples if len(s)]) if any(len(s) for s in samples) else np.zeros((0, 1))
    if len(data) < k:
        raise ValueError(f"{len(data)} descriptors sampled, fewer than vocabulary_size = {k}")
    # One thread: the same sums in the same order on every machine, whatever the engine.
    with threadpool_limits(1):
        if len(data) > MINIBATCH_ABOVE:
            model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096).fit(data)
        else:
            model = KMeans(n_clusters=k, random_state=seed, n_init=3).fit(data)
    centers = model.cluster_centers_.astype(np.float32)
    documents = [s for s in samples if len(s)]
    df = np.zeros(k)
    for values in documents:
        df[np.unique(nearest_words(values, centers))] += 1
    idf = np.log((1 + len(documents)) / (1 + df)) + 1  # smoothed, as scikit-learn's TfidfTransformer
    return npz_bytes({"centers": centers, "idf": idf.astype(np.float32)})


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``np.load``) whose bytes depend on the arrays only.

    ``np.savez`` stamps the current time into its zip entries; the vocabulary's
    sha256 enters the feature fingerprint, so every engine and run must write the
    same bytes: fixed entry times, fixed order, no compression.
    """
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), entry.getvalue())
    return buffer.getvalue()


def encode(values: np.ndarray, centers: np.ndarray, idf: np.ndarray | None, normalize: str) -> np.ndarray:
    """Histogram of the nearest words of `values`, optionally idf-weighted, L1- or L2-normalised.

    Returns
    -------
    (K,) float32 ndarray; all zeros for an image without descriptors.
    """
    counts = np.zeros(len(centers))
    if len(values):
        counts = np.bincount(nearest_words(values, centers), minlength=len(centers)).astype(np.float64)
    if idf is not None:
        counts = counts * idf
    norm = counts.sum() if normalize == "l1" else math.sqrt(float((counts * counts).sum()))
    return (counts / norm if norm > 0 else counts).astype(np.float32)


class BovwHandler(registry.Handler):
    """Loads the vocabulary once per worker; encodes images one by one."""

    batch_size = 16

    def load(self, params, artifacts) -> None:
        with np.load(io.BytesIO(artifacts["vocab"])) as vocabulary:
            self.centers = vocabulary["centers"].astype(np.float32)
            self.idf = vocabulary["idf"].astype(np.float64) if params["tfidf"] else None
        self.params = dict(params)

    def extract_batch(self, images: np.ndarray) -> np.ndarray:
        p = self.params
        return np.stack([encode(local_descriptors(gray, descriptor=p["descriptor"], max_keypoints=p["max_keypoints"]),
                                self.centers, self.idf, p["normalize"]) for gray in images])


def _positive_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_bovw(params: dict, report) -> dict:
    if params["descriptor"] not in DESCRIPTORS:
        report(f"descriptor must be one of {list(DESCRIPTORS)} (SURF is patented and not in OpenCV's wheels), "
               f"got {params['descriptor']!r}")
    for key, low, high in (("vocabulary_size", 2, 100_000), ("max_keypoints", 1, 100_000),
                           ("sample_per_image", 1, 100_000), ("sample_images", 1, 10_000_000)):
        if not _positive_int(params[key], low, high):
            report(f"{key} must be an integer in [{low}, {high}], got {params[key]!r}")
    if params["normalize"] not in NORMALIZE:
        report(f"normalize must be one of {list(NORMALIZE)}, got {params['normalize']!r}")
    if not isinstance(params["tfidf"], bool):
        report(f"tfidf must be true or false, got {params['tfidf']!r}")
    if params["vocabulary"] is not None and (not isinstance(params["vocabulary"], str) or not params["vocabulary"]):
        report(f"vocabulary must be the path of a saved .npz vocabulary or null, got {params['vocabulary']!r}")
    counts = [params[k] for k in ("sample_images", "sample_per_image", "max_keypoints", "vocabulary_size")]
    if params["vocabulary"] is None and all(_positive_int(v, 1, 10_000_000) for v in counts):
        at_most = params["sample_images"] * min(params["sample_per_image"], params["max_keypoints"])
        if at_most < params["vocabulary_size"]:
            report(f"sample_images x min(sample_per_image, max_keypoints) = {at_most} descriptors at most, fewer "
                   f"than vocabulary_size = {params['vocabulary_size']}: the vocabulary cannot be fitted")
    return dict(params)


def _check_saved(params, data: bytes) -> None:
    """A saved vocabulary must be an .npz with `centers` (vocabulary_size, D of the descriptor) and,
    for tfidf, `idf` (vocabulary_size,)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except Exception as exc:  # whatever the file is, it is not a vocabulary
        raise ValueError(f"not an .npz vocabulary ({type(exc).__name__}: {exc})") from None
    expected = (params["vocabulary_size"], DIMENSIONS[params["descriptor"]])
    if "centers" not in arrays or arrays["centers"].shape != expected:
        found = arrays["centers"].shape if "centers" in arrays else "no 'centers'"
        raise ValueError(f"its centers are {found}, this spec needs {expected} "
                         f"(vocabulary_size x {params['descriptor']} values)")
    if params["tfidf"] and arrays.get("idf", np.zeros(0)).shape != (params["vocabulary_size"],):
        raise ValueError("tfidf is on but it holds no idf weights of the vocabulary's size")


BOVW = registry.register(registry.ExtractorDef(
    name="keypoints_bovw", version=1,
    defaults={"descriptor": "sift", "vocabulary_size": 100, "max_keypoints": 500, "sample_per_image": 50,
              "sample_images": 200, "normalize": "l1", "tfidf": False, "vocabulary": None},
    check=_check_bovw, dim=lambda params, size: params["vocabulary_size"], handler=BovwHandler, view="gray",
    artifact=registry.ArtifactDef(what="vocab", ext="npz", param="vocabulary",
                                  fit_params=("sample_images", "sample_per_image"), check_saved=_check_saved,
                                  sample_images=lambda params: params["sample_images"], sample=_sample, fit=_fit)))
