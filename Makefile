# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_CONFIG := configs/demo/pipeline_shapes.yaml
DEMO_DATA := data/shapes

.PHONY: demo test venv clean-demo

# The demo needs the package alone; the tests add the test extra (pytest, scipy, hypothesis, psycopg2),
# in one pip run from a fresh clone.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

venv: $(VENV)/.installed-test

# Embedded data set (generated, never downloaded), then the whole pipeline: baseline, supernet
# pretraining, search under the budget, tuning, ONNX export, report (runs/demo_pipeline/report.md).
demo: $(VENV)/.installed
	$(PY) -m nasdet data make-synthetic $(DEMO_DATA) --train 1200 --val 300 --size 256 --seed 0 --skip-existing
	$(PY) -m nasdet pipeline $(DEMO_CONFIG)

test: $(VENV)/.installed-test
	$(PY) -m pytest -n auto tests  # one worker per core (pytest-xdist)

clean-demo:
	rm -rf runs/demo_pipeline
