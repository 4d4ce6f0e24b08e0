# ImagInfo developer targets. Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_CORE := $(VENV)/.core-installed
STAMP_TEST := $(VENV)/.test-installed

.PHONY: demo test bench lint clean train

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The core, the headless MRML wheel, and the ML stack pinned for this machine:
# torch 2.13.0 is the CPU wheel (a bare `torch` would pull several GB of CUDA), and
# pyradiomics only builds from source, without build isolation, after its build tools.
$(STAMP_CORE): pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet numpy setuptools wheel versioneer
	$(PIP) install --quiet --no-build-isolation pyradiomics
	$(PIP) install --quiet -e ".[slicer-core]"
	touch $@

# pydicom 2.4.4 (what Slicer 5.10 bundles) beside the current one, for the compatibility test.
$(STAMP_TEST): $(STAMP_CORE)
	$(PIP) install --quiet -e ".[test,slicer-core]"
	$(PIP) install --quiet --upgrade --target $(VENV)/pydicom2 "pydicom==2.4.4"
	touch $@

demo: $(STAMP_CORE)
	$(VENV)/bin/imaginfo demo

test: $(STAMP_TEST)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

# mirp (IBSI's reference implementation) is a benchmark-only peer of the radiomics engine.
bench: $(STAMP_CORE)
	$(PIP) install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_phantom.py
	$(PY) benchmarks/bench_vessels.py
	$(PY) benchmarks/bench_batch.py
	$(PY) benchmarks/bench_runner.py
	$(PY) benchmarks/bench_radiomics.py
	$(PY) benchmarks/bench_segmentation_metrics.py
	$(PY) benchmarks/bench_segmentation_inference.py
	$(PY) benchmarks/bench_segmentation_dice.py

# The shipped phantom model (Resources/Models/imaginfo-phantom-vessels), trained from scratch on the CPU
# with its seeded script (minutes; not part of make test). The script prints its total time.
train: $(STAMP_CORE)
	$(PY) -m ImagInfoExtension.segmentation.training --out Resources/Models/imaginfo-phantom-vessels --seed 0

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) imaginfo_demo bench_results .pytest_cache
