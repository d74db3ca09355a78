# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_CONFIG := configs/demo/baseline_ssdlite_shapes.yaml
DEMO_DATA := data/shapes

.PHONY: demo test venv clean-demo

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Embedded data set (generated, never downloaded), then the baseline: train, evaluate, cost.
demo: venv
	$(PY) -m nasdet data make-synthetic $(DEMO_DATA) --train 1200 --val 300 --size 256 --seed 0 --skip-existing
	$(PY) -m nasdet train $(DEMO_CONFIG)
	$(PY) -m nasdet eval $(DEMO_CONFIG)
	$(PY) -m nasdet cost $(DEMO_CONFIG)

test: venv
	$(PY) -m pytest tests

clean-demo:
	rm -rf runs/demo
