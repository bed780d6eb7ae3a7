# Two commands for a newcomer: `make demo` and `make test`. Both set up everything they need on a
# fresh Debian machine with Python 3.11: the venv, the pinned packages and, for the tests,
# Debian's PostgreSQL server binaries and Chromium.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# A local Dagster instance (SQLite, no server) so `make dev` shows the runs `make demo` made.
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
# TensorFlow's C++ start-up notices (oneDNN, CPU features) say nothing a user acts on.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test dev postgres browser label-studio notebook clean

# The venv, with TF Serving's gRPC messages (tensorflow-serving-api) installed without its
# dependency on the full `tensorflow` package: we have tensorflow-cpu (setup.py, `serving` extra).
$(STAMP): setup.py constraints.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "Installing Debian's python3-venv"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,cpu]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt tensorflow-serving-api
	touch $@

install: $(STAMP)

# Debian's PostgreSQL server binaries: the test session starts its own throwaway cluster.
postgres:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; else \
	  echo "Installing Debian's postgresql for the tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; fi

$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	@printf 'telemetry:\n  enabled: false\n' > $@

MATERIALIZE := $(BIN)/dagster asset materialize -m fashion_assets.definitions
QUIET := grep --line-buffered -v -e ' - DEBUG - ' -e 'SupersessionWarning' -e 'return callback'

# Debian's Chromium for the browser test (Playwright drives it; no browser download).
browser:
	@if command -v chromium >/dev/null; then :; else \
	  echo "Installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(MATERIALIZE) --select 'products,product_images' 2>&1 | $(QUIET)
	@for q in examples/queries/*.sql; do $(BIN)/fashion-assets query add $$(basename $$q .sql) --file $$q --replace || exit 1; done
	$(MATERIALIZE) --select 'classifier_inputs,fashion_classifier,serving_model' 2>&1 | $(QUIET)
	@for q in examples/queries/*.sql; do \
	  $(MATERIALIZE) --select 'image_set,augmented_set,predictions' --partition $$(basename $$q .sql) 2>&1 \
	    | $(QUIET) || exit 1; done
	@$(BIN)/fashion-assets summary

# Label Studio (the labelling round-trip test starts it) in its own virtualenv: its pins (Django,
# its own boto3, pandas, protobuf...) clash with ours. Exact pins: constraints-label-studio.txt.
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.installed
$(LS_STAMP): constraints-label-studio.txt
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q -r constraints-label-studio.txt
	touch $@

label-studio: $(LS_STAMP)

test: install postgres browser label-studio
	$(BIN)/python -m pytest

# The walkthrough notebook in JupyterLab (installed on first use, pinned by constraints-notebook.txt
# on top of constraints.txt); it works in data/walkthrough/, beside make demo's data.
$(VENV)/.jupyterlab: $(STAMP) constraints-notebook.txt
	$(BIN)/python -m pip install -q -c constraints.txt -c constraints-notebook.txt jupyterlab
	touch $@

notebook: $(VENV)/.jupyterlab
	$(BIN)/jupyter lab examples/walkthrough.ipynb

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf data
