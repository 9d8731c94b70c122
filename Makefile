# Two entry points for a fresh clone (see README):
#   make demo   install into .venv, then train dense + AdapMTL on the synthetic scenes and print one table
#   make test   install into .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test install lint clean-demo

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	PYTHON=$(PY) bash Scripts/demo.sh

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check .
