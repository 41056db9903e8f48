"""Hand-crafted descriptors: pure functions of an (H, W, 3) uint8 RGB image.

One family per module; every function returns a 1-D float32 vector whose
length is known from its parameters alone (see :mod:`featurelib.registry`).
"""
