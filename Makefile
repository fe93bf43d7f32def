# Every target runs on the embedded sample photos by default; point them at real data with the
# variables below (e.g. `make demo DATA=/data/coco TEST_DATA=/data/kodak`).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
PYTEST_WORKERS ?= 2

.PHONY: setup test demo bench clean-venv help

help:
	@echo "make demo   - train 3 lambda points on the embedded samples, evaluate with real bitstreams, plot"
	@echo "make test   - run the test suite"
	@echo "make bench  - print the benchmarks' side-by-side ratios"
	@echo "make setup  - create .venv with the pinned dependencies (done by the targets above)"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@rm -f $(VENV)/.installed-*
	@touch $@

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

clean-venv:
	rm -rf $(VENV)
