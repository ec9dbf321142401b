# The two quick-start commands, `make demo` and `make test`, and `make notebooks`, work on a
# fresh machine with python3, make and git; the virtual environment lives in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo notebooks test tools benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-notebook: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[notebook]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/daskseg demo

# JupyterLab on this machine only (127.0.0.1), opened on notebooks/; stop it with Ctrl-C.
# JUPYTER_ARGS adds options, e.g. JUPYTER_ARGS=--no-browser or --port=8889. Jupyter refuses
# to run as root unless told (containers often are root).
notebooks: $(VENV)/.installed-notebook
	$(BIN)/jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(JUPYTER_ARGS)

# Debian's dicom3tools (dciodvfy) and libgdcm-tools (gdcmconv) check the SEGs the tests
# write; orthanc with orthanc-dicomweb is the DICOMweb server of the DICOMweb tests (started by
# the tests themselves, never as a service). Installed when running as root and missing,
# otherwise those tests skip.
tools:
	@if ! command -v dciodvfy >/dev/null || ! command -v gdcmconv >/dev/null \
	    || ! command -v Orthanc >/dev/null || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      dicom3tools libgdcm-tools orthanc orthanc-dicomweb >/dev/null; \
	  else echo "dciodvfy/gdcmconv/Orthanc missing and not root: validator and DICOMweb tests will skip"; fi; \
	fi

test: $(VENV)/.installed-test tools
	$(BIN)/python -m pytest

benchmarks: $(VENV)/.installed-test
	$(BIN)/python benchmarks/executor.py
	$(BIN)/python benchmarks/malloc.py
	$(BIN)/python benchmarks/write.py
	$(BIN)/python benchmarks/read.py
	$(BIN)/python benchmarks/pyramid.py
	$(BIN)/python benchmarks/volume.py

clean:
	rm -rf $(VENV) .pytest_cache
