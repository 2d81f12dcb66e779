# Two commands do all the set-up on a fresh machine:
#   make run   - create .venv, install requirements.txt, open the app on the built-in default
#   make test  - install requirements-dev.txt (+ Debian's chromium when missing), run all tests
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
RUNS ?= runs
PYTEST_ARGS ?=
# make test's pytest processes (pytest-xdist; 0: one process, no workers)
PYTEST_WORKERS ?= 2

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

# Starts the app; with an empty runs folder it trains the built-in default first (digits, 2-D).
run: install
	@echo "VAE Latent Explorer: open http://localhost:$(PORT) in a browser (runs folder: $(RUNS); Ctrl-C stops)"
	VAE_RUNS_DIR=$(RUNS) $(PY) -m streamlit run explorer/app.py --server.port $(PORT) --server.headless true

# The browser tests drive Debian's chromium through Playwright (never `playwright install`).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian's chromium for the browser tests (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation; \
	  else \
	    echo "The browser tests need Debian's chromium at /usr/bin/chromium: run 'sudo apt-get install -y chromium', then 'make test' again" >&2; exit 1; \
	  fi; \
	fi

# The whole suite in two pytest processes (pytest-xdist, -n $(PYTEST_WORKERS)): the browser
# tests (tests/e2e, one Streamlit server and one Chromium shared by all of them) are one
# unit of work run by one process (tests/conftest.py), while the other runs the unit and
# AppTest tests; each test uses one torch thread. pytest's exit status 5 (no tests collected) is a failure.
# Its temporary files go to a folder of its own (pytest prunes the shared
# /tmp/pytest-of-USER/pytest-N folders of runs that are still going when several run at once).
test: install-dev chromium
	@tmp=$$(mktemp -d /tmp/vae-pytest-XXXXXX); \
	$(PY) -m pytest --basetemp="$$tmp/base" -n $(PYTEST_WORKERS) $(PYTEST_ARGS); status=$$?; rm -rf "$$tmp"; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$status

# Benchmarks (issue 8): installs pythae (the peer), then runs every section; it refuses to start
# while other processes load the CPU. BENCH_ARGS e.g. "--quick", "--sections 1,2", "--force".
BENCH_ARGS ?=
$(VENV)/.installed-bench: requirements-bench.txt $(VENV)/.installed-dev
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

bench: $(VENV)/.installed-bench
	$(PY) -m bench $(BENCH_ARGS)

# Refresh the README's pictures (docs/screenshots/*.png): the browser tests' first start
# (with the app's real default of 100 epochs) and one screenshot of each view.
screenshots: install-dev chromium
	VAE_SCREENSHOTS_DIR=docs/screenshots VAE_E2E_FIRST_EPOCHS=100 $(PY) -m pytest tests/e2e -k "first_start or screenshots" $(PYTEST_ARGS)
