# Two commands on a fresh machine: `make run` and `make test` (see README).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := dcmtk orthanc dicom3tools redis-server libpixelmed-java
# the viewer tests (tests/viewer) and `make viewer`: Orthanc's DICOMweb plugin, headless Chromium + its driver
VIEWER_DEBS := orthanc-dicomweb chromium chromium-driver
# OHIF Viewer's built dist/ from npm, pinned (sha-256 checked in deploy/viewer/stack.py)
OHIF_DIST := .cache/ohif/3.13.2/dist/index.html

.PHONY: run test install debs clean viewer

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

# npm only where none is on PATH (Debian's npm package conflicts with a nodesource nodejs)
debs:
	@missing=""; for p in $(DEBS) $(VIEWER_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(OHIF_DIST): | $(STAMP) debs
	$(BIN)/python -m deploy.viewer fetch

run: install
	$(BIN)/ich-node serve

test: install debs $(OHIF_DIST)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20

# try the results in a real viewer: Orthanc + OHIF on loopback with the sample studies analysed
viewer: install debs $(OHIF_DIST)
	$(BIN)/python -m deploy.viewer

clean:
	rm -rf $(VENV) var build *.egg-info
