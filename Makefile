# Two commands for a new user: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use. torch is pinned to the CPU build's version; for a GPU, see README.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: demo test test-all venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/aelab demo

test: $(VENV)/.installed
	$(PY) -m pytest

test-all: $(VENV)/.installed
	$(PY) -m pytest -m "slow or not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
