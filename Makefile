# Two commands on a fresh machine (Python 3.11 + Java 17):
#   make demo   set up .venv, build the digits sample, run the pipeline, print a summary, train a classifier
#   make test   set up .venv, run the whole test suite
PYTHON ?= python3
# A recipe line that pipes fails when its command fails, not only when the last stage of the
# pipe does.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench bench-descriptors bench-engines bench-decode bench-augment clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -e ".[all]"
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: install
	test -d data/demo/digits || $(BIN)/featurize sample-data digits data/demo/digits
	$(BIN)/featurize run --engine local --spec deploy/specs/demo.yaml --output out/demo/local --overwrite
	$(BIN)/featurize run --engine beam  --spec deploy/specs/demo.yaml --output out/demo/beam --overwrite \
		--direct_num_workers=2 --direct_running_mode=multi_processing
	$(BIN)/featurize run --engine spark --spec deploy/specs/demo.yaml --output out/demo/spark --overwrite \
		--conf spark.ui.enabled=false
	$(BIN)/featurize compare out/demo/local out/demo/beam out/demo/spark
	$(BIN)/featurize train out/demo/local --features hog --model logreg --standardize --overwrite
	@echo "outputs under out/demo/ (read one with: $(BIN)/featurize inspect out/demo/local)"

test: install chromium airflow-venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# headless Chromium (Debian's package), which tests/test_report.py opens the HTML report in
.PHONY: chromium
chromium:
	command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

bench: install
	$(BIN)/python benchmarks/bench_kernel.py

# each hand-crafted extractor against the reference it equals (about 1 minute)
bench-descriptors: install
	$(BIN)/python benchmarks/bench_descriptors.py

# Beam and Spark against the local engine (about 6 minutes, needs Java 17)
bench-engines: install
	$(BIN)/python benchmarks/bench_engines.py

# issue #13: per spec (cheap, the hand-crafted bundle, VGG16), 1 vs 2 workers with the plain
# multi-process OpenCV loop, the fixed cost of a 10-image run, and a class of huge images (skew)
.PHONY: bench-engines-specs bench-engines-scaling bench-engines-fixed bench-skew bench-paired
bench-engines-specs: install
	$(BIN)/python benchmarks/bench_engines.py --spec bundle --scale 3 --repeats 2 --no-probe
	$(BIN)/python benchmarks/bench_engines.py --spec vgg16 --vgg16-images 64 --repeats 2 --no-probe
bench-engines-scaling: install
	$(BIN)/python benchmarks/bench_engines.py --spec cheap --workers 1,2 --plain --scale 4 --repeats 2
bench-engines-fixed: install
	$(BIN)/python benchmarks/bench_engines.py --fixed-cost --spec cheap --repeats 3
bench-skew: install
	$(BIN)/python benchmarks/bench_skew.py
bench-paired: install
	$(BIN)/python benchmarks/bench_paired.py

# large JPEGs decoded at a reduced DCT scale vs full size, and the photos sample end to end (about 6 minutes)
bench-decode: install
	$(BIN)/python benchmarks/bench_decode.py --end-to-end

# every augmentation op against the bare OpenCV/numpy call doing the same (about 20 seconds)
bench-augment: install
	$(BIN)/python benchmarks/bench_augment.py

# HDF5 layouts of the stored pixels (output.pixels): size, write and read speed (about 3.5 minutes)
.PHONY: bench-pixels
bench-pixels: install
	$(BIN)/python benchmarks/bench_pixels.py

# peak worker memory at 10,000 vs 1,000 images with 25,088-wide rows, per engine (about 2.5 minutes)
.PHONY: bench-memory
bench-memory: install
	$(BIN)/python benchmarks/bench_memory.py

clean:
	rm -rf out data .pytest_cache

# A local Spark standalone cluster (master + workers on 127.0.0.1 and 127.0.0.2, free ports);
# state and logs in spark-cluster/. Submit with: --master $(cat spark-cluster/master_url)
.PHONY: spark-up spark-down
spark-up: install
	$(BIN)/python deploy/spark_standalone.py start
spark-down:
	$(BIN)/python deploy/spark_standalone.py stop

# What a cluster needs (deploy/spark/README.md): the code as one deterministic --py-files zip,
# dist/featurelib-code.zip (its sha256 printed); stdlib only, about a second.
.PHONY: dist dist-env
dist:
	$(PYTHON) deploy/spark/build_dist.py --output dist/featurelib-code.zip

# The third-party dependencies as one --archives tarball for workers without them:
# .venv packed by venv-pack (a tool venv of its own under build/), featurelib itself left out
# (it ships in the zip). Large (about 1.4 GB with [all]) and slow (about 3 minutes on 2 cores).
dist-env: install dist
	test -x build/venv-pack/bin/venv-pack || ($(PYTHON) -m venv build/venv-pack && \
		build/venv-pack/bin/python -m pip install -q "venv-pack==0.2.0")
	build/venv-pack/bin/venv-pack --prefix $(VENV) --output dist/featurelib-env.tar.gz --force --quiet \
		--exclude '*/__editable__*' --exclude '*/featurelib-*.dist-info/*'
	@ls -l dist/featurelib-env.tar.gz

# Airflow for the DAG test (tests/test_deploy_files.py loads deploy/airflow/ with Airflow's DagBag), in
# its own virtualenv: Airflow brings ~130 packages that must stay out of .venv. The versions are
# deploy/airflow/constraints.txt (a pip freeze: Airflow's own constraints files are not on PyPI).
# About 1 minute on a fresh machine.
AIRFLOW_VENV    := .venv-airflow
AIRFLOW_VERSION := 3.3.2
AIRFLOW_STAMP   := $(AIRFLOW_VENV)/.installed-$(AIRFLOW_VERSION)
.PHONY: airflow-venv
airflow-venv: $(AIRFLOW_STAMP)
$(AIRFLOW_STAMP): deploy/airflow/constraints.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(AIRFLOW_VENV)/bin/python -m pip install -q "apache-airflow==$(AIRFLOW_VERSION)" -c deploy/airflow/constraints.txt
	$(AIRFLOW_VENV)/bin/python -m pip check
	touch $@
