# Restrained Instabilities: set-up, book and tests. Every target creates .venv if missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

export PYTHONPATH := $(CURDIR)/src
export PYTHONHASHSEED := 0
# Book builds and nbval produce the precomputed (static) slider figures.
export SLIDERS_LIVE ?= 0

NBVAL := $(BIN)/python -m pytest -q --nbval --nbval-current-env \
	--nbval-sanitize-with tests/nbval_sanitize.cfg -o addopts="-p no:cacheprovider"
PORTABILITY_ENVS := _build/portability-environments.txt

.PHONY: help install book book-exec test lint unit nbval build-check browser lab times clean \
	portability spread

help:
	@echo "make book       build _build/html from the stored notebook outputs"
	@echo "make test       ruff, unit tests, nbval on every notebook, book build, browser test"
	@echo "make book-exec  re-execute every notebook in place, then build the book"
	@echo "make lab        JupyterLab with live sliders"
	@echo "make times      print each notebook's execution time and the total"
	@echo "make portability  nbval on every notebook under other CPUs' rounding (XLA_FLAGS)"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

install: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build -W -n --keep-going .
	@echo "open _build/html/index.html"

book-exec: $(STAMP)
	$(BIN)/python -m restrained.notebooks execute $(NOTEBOOKS)
	$(MAKE) book

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not browser" tests

nbval: $(STAMP)
	$(NBVAL) --durations=0 $(NOTEBOOKS)

# Re-run every notebook, strictly, under each rounding environment that changes bits on this
# machine (restrained.portability): a claim must not rest on one CPU's last bits.
portability: $(STAMP)
	@mkdir -p _build
	$(BIN)/python -m restrained.portability check --write $(PORTABILITY_ENVS)
	@for env in $$(cat $(PORTABILITY_ENVS)); do \
		flags="$$($(BIN)/python -m restrained.portability flags $$env)"; \
		echo "== nbval under $$env (XLA_FLAGS=$$flags)"; \
		start=$$(date +%s); \
		XLA_FLAGS="$$flags" $(NBVAL) $(NOTEBOOKS) || exit 1; \
		echo "== $$env passed in $$(( $$(date +%s) - start )) s"; \
	done

# The cross-environment spread of every value the notebooks print as ≈x.
spread: $(STAMP)
	$(BIN)/python -m restrained.portability spread $(NOTEBOOKS) \
		--out results/portability/spread.json

browser: $(STAMP)
	$(BIN)/python -m pytest -q -m browser tests

test: lint unit nbval book browser

times: $(STAMP)
	$(BIN)/python benchmarks/notebook_times.py $(NOTEBOOKS)

lab: $(STAMP)
	SLIDERS_LIVE=1 $(BIN)/jupyter lab --notebook-dir=. notebooks

clean:
	rm -rf _build
