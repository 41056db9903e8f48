"""featurelib: image decoding, augmentation and feature extraction, shard by shard.

Imports no engine (Beam, Spark) and no TensorFlow at import time; the
distributed glue lives in ``pipelines`` (Beam) and ``jobs`` (Spark).
"""

__version__ = "0.1.0"
