# Two commands do all the set-up on a fresh machine:
#   make run   - create .venv, install requirements.txt, open the app on the built-in default
#   make test  - install requirements-dev.txt (+ Debian's chromium when missing), run all tests
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
RUNS ?= runs
PYTEST_ARGS ?=

.PHONY: run test install install-dev chromium bench screenshots lint

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-installs only when a requirements file changed (a stamp per file set).
$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	@echo "Opening VAE Latent Explorer at http://localhost:$(PORT) (runs folder: $(RUNS))"
	VAE_RUNS_DIR=$(RUNS) $(PY) -m streamlit run explorer/app.py --server.port $(PORT)

chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser tests need Debian's chromium at /usr/bin/chromium: run 'sudo apt-get install -y chromium'"; exit 1; \
	  fi; \
	fi

test: install-dev chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks (issue 8): installs pythae (the peer), then runs every section; it refuses to start
# while other processes load the CPU. BENCH_ARGS e.g. "--quick", "--sections 1,2", "--force".
BENCH_ARGS ?=
$(VENV)/.installed-bench: requirements-bench.txt $(VENV)/.installed-dev
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

bench: $(VENV)/.installed-bench
	$(PY) -m bench $(BENCH_ARGS)

screenshots: install-dev chromium
	VAE_SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest tests/e2e -k screenshots $(PYTEST_ARGS)
