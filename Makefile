# The two commands of the README. Both create .venv on first use and install flowjax with
# the extras they need: the tests and the experiments (data sets, configs, figures).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/toy2d_demo

.PHONY: setup demo test test-all docs check-share bench-setup bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per extra: `make demo` installs what the experiments need, `make test` the
# test tools and the docs on top (the test extra includes the experiments extra).
$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$*]'
	touch $@

setup: $(VENV)/.installed-test

demo: $(VENV)/.installed-experiments
	$(PY) -m experiments.toy2d --config=experiments/toy2d/configs/default.py --workdir=$(WORKDIR)

# The fast suite: identities, closed forms and behaviour at small sizes.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" tests

# Everything, with the tests marked slow (quality runs: trainings to a W2, convergence of
# the few-step methods, the experiments at their full sizes). CI runs this one.
test-all: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

# The documentation site, built into workdir/site (fails on any warning: --strict).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d workdir/site

# The share of argument-check lines in the bodies of public functions (tools/check_share.py).
check-share:
	$(PYTHON) tools/check_share.py

# The peers of the speed benchmarks (torch, TorchCFM, flow_matching, POT, torchdiffeq).
# torch 2.13.0 first: without it TorchCFM pulls a newer CUDA build of torch.
bench-setup: setup
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,experiments,bench]' -c benchmarks/constraints.txt

bench: bench-setup
	$(PY) benchmarks/train_speed.py --quick --out workdir/bench/train_speed.json
	$(PY) benchmarks/coupling_speed.py --quick --out workdir/bench/coupling_speed.json
	$(PY) benchmarks/sampling_speed.py --quick --out workdir/bench/sampling_speed.json

clean:
	rm -rf $(VENV) workdir
