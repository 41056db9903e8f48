"""Not imported by featurelib: a package only so that installs ship its ``sitecustomize.py``, which
``featurize run --engine beam`` puts on the PYTHONPATH of Beam's worker subprocesses (see there)."""
