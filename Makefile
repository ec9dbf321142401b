# The two quick-start commands: `make demo` and `make test`. Both work on a fresh
# machine with python3, make and git; the virtual environment lives in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test tools benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/daskseg demo

# Debian's dicom3tools (dciodvfy) and libgdcm-tools (gdcmconv) check the SEGs the tests
# write; installed when running as root and missing, otherwise those tests skip.
tools:
	@if ! command -v dciodvfy >/dev/null || ! command -v gdcmconv >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools libgdcm-tools >/dev/null; \
	  else echo "dciodvfy/gdcmconv missing and not root: validator tests will skip"; fi; \
	fi

test: $(VENV)/.installed-test tools
	$(BIN)/python -m pytest

benchmarks: $(VENV)/.installed-test
	$(BIN)/python benchmarks/executor.py
	$(BIN)/python benchmarks/write.py
	$(BIN)/python benchmarks/read.py
	$(BIN)/python benchmarks/pyramid.py
	$(BIN)/python benchmarks/volume.py

clean:
	rm -rf $(VENV) .pytest_cache
