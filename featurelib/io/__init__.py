"""Writers and readers of the output layout (docs/CONTRACT.md, "Output layout").

``featurelib.io.open_dataset(OUT)`` is the reader for training code (docs/READING.md).
"""

from featurelib.io.dataset import FeatureDataset, open_dataset

__all__ = ["open_dataset", "FeatureDataset"]
