# Two commands on a fresh machine: `make run` and `make test` (see README).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := dcmtk orthanc dicom3tools redis-server

.PHONY: run test install debs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel versioneer

# pyradiomics ships no wheels: numpy must be there before it builds, without build isolation.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "numpy>=2.0,<2.3" "scipy>=1.13,<1.17"
	$(BIN)/pip install -q --no-build-isolation "pyradiomics==3.0.1"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: install
	$(BIN)/ich-node serve

test: install debs
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) var build *.egg-info
