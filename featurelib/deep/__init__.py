"""Deep feature extractors (``vgg16``, ``cnn``): Keras ``keras.applications`` backbones and ONNX glue.

Nothing here imports TensorFlow at import time: the declarations, parameter
checks, output lengths and weights-file checks run with the core install;
TensorFlow (``pip install 'featurelib[deep]'``) is imported by a handler's
``load`` in the worker processes.
"""
