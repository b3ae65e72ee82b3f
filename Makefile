# One entry point: `make test` and `make bench` each set up their own virtualenv first.
# `make` alone (= `make help`) lists the targets: every `## ` comment line above a target is its help.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ASV := $(VENV)/bin/asv
ASV_DIR := .asv
HTML_DIR := $(ASV_DIR)/html
PORT ?= 8080
BENCH ?=

# A value as one single-quoted shell word (a ' inside becomes '\''). Used with $(value BENCH), so
# that a $ in the regex (make bench BENCH='track_bandwidth$') reaches asv as it is.
shell_quote = '$(subst ','\'',$(1))'

.DEFAULT_GOAL := help
.PHONY: help test test-fast bench bench-peers bench-quick publish serve screenshots venv venv-bench clean

# The variables whose $(NAME) in a ## line `make help` shows by their value.
HELP_VARS := ASV_DIR HTML_DIR VENV PYTHON PORT

## List the targets and what they do (the default goal).
help:
	@echo 'Usage: make <target> [PYTHON=python3.X] [VENV=dir] [BENCH=regex] ...'
	@echo
	@$(foreach v,$(HELP_VARS),$(v)=$(call shell_quote,$($(v)))) awk -v vars='$(HELP_VARS)' ' \
	  BEGIN { n = split(vars, var, " "); \
	          for (i = 1; i <= n; i++) { name[i] = "$$(" var[i] ")"; val[i] = ENVIRON[var[i]] } } \
	  function expand(t,   i, j) { for (i = 1; i <= n; i++) \
	            while ((j = index(t, name[i])) > 0) t = substr(t, 1, j - 1) val[i] substr(t, j + length(name[i])); \
	          return t } \
	  /^## / { doc[++lines] = expand(substr($$0, 4)); next } \
	  /^[A-Za-z0-9_.-]+:([^=]|$$)/ { \
	    if (lines) { t = substr($$0, 1, index($$0, ":") - 1); \
	      for (i = 1; i <= lines; i++) printf "  %-13s %s\n", (i == 1 ? t : ""), doc[i] } \
	    lines = 0; next } \
	  /^[A-Za-z0-9_]+ *[?:+]?= / { next } \
	  { lines = 0 }' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

## Create $(VENV) with $(PYTHON) if it is missing, then (re)install the package editable, with its test extras.
venv: $(PY)
	$(PY) -m pip install --quiet -e '.[test]'

## The same with only what `make bench` needs (asv, matplotlib): not torch or the browser driver of
## the test extras, which took a minute or more of a fresh clone's `make bench`.
venv-bench: $(PY)
	$(PY) -m pip install --quiet -e '.[bench]'

# pytest-xdist, one worker per core, each test file in one worker (--dist loadfile): the browser
# tests' session fixture builds its report once. PYTEST_PARALLEL= runs one process.
PYTEST_PARALLEL ?= -n auto --dist loadfile

## Set up, build the Cython extension, run every test (what CI runs), one pytest worker per core.
test: venv
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

## The tests without those marked slow (the asv subprocess runs, the browser tests, the fuzz).
test-fast: venv
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

## Set up, run the full asv suite on the committed HEAD, publish the HTML report.
## (asv builds HEAD in its own virtualenv under $(ASV_DIR)/env with the Python of $(VENV):
## commit first. 21 min 6 s from a fresh clone on the slowest 2-vCPU machine seen (AMD EPYC,
## 12 GB/s) at a3a6494, 24 min 6 s at d96cd68 on a slower day, 21 min 44 s at d0b9cab,
## 22 min 30 s at da6c6f9, 20 min 17 s at 372c532, every class included; 10 min 50 s at e989e89
## and 11 min 3 s at bfa6846 on a Zen 5; budget 25 min.)
## BENCH=<regex> runs only the benchmarks whose name matches it (asv run --bench; default: all),
## e.g. make bench BENCH='^bench_lookup\.Roofline'. Results of the others are kept.
## With another Python: make bench PYTHON=python3.12 VENV=.venv312.
bench: venv-bench
	$(ASV) machine --yes --config asv.conf.json
	PATH="$(abspath $(VENV))/bin:$$PATH" $(ASV) run --config asv.conf.json $(if $(value BENCH),--bench $(call shell_quote,$(value BENCH))) HEAD^!
	$(MAKE) publish

## The same suite in an asv environment that also has torch 2.13 (and fbgemm-gpu-cpu where it
## installs), so the peers (Peers, BagPeers, Torch) are measured instead of n/a: asv.peers.conf.json,
## with its own environments, results and report under $(ASV_DIR)/peers (`make bench` and the
## decision table of kernel="auto" never read them). Not timed as a whole yet: expect more than
## `make bench`. BENCH=<regex> as for bench, e.g. make bench-peers BENCH='^bench_torch'.
## PyPI's Linux torch wheel is the CUDA build; for the CPU wheel:
## PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make bench-peers
PEERS_CONF := asv.peers.conf.json
bench-peers: venv
	$(ASV) machine --yes --config $(PEERS_CONF)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(ASV) run --config $(PEERS_CONF) $(if $(value BENCH),--bench $(call shell_quote,$(value BENCH))) HEAD^!
	$(ASV) publish --config $(PEERS_CONF)
	$(PY) -m tools.report --config $(PEERS_CONF) --npm-cache $(ASV_DIR)/npm
	@echo "Report: $(ASV_DIR)/peers/html/index.html (serve it: make serve HTML_DIR=$(ASV_DIR)/peers/html)"

## A first look in about a minute: the installed package, one sample per benchmark (not real
## timings, and not saved: --dry-run), every benchmark but only its parameter sets without
## V = 1e6 or D = 512 (their data takes the time). The whole grid (~3.5 min): make bench-quick QUICK_BENCH=.
QUICK_BENCH ?= ^(?!.*(1000000|, 512\))).*
bench-quick: venv
	$(ASV) machine --yes --config asv.conf.json
	$(ASV) run --config asv.conf.json --python=same --quick --dry-run --show-stderr --bench '$(QUICK_BENCH)'

## Render the saved results as HTML. asv publish deletes $(HTML_DIR) first, so whatever is added
## to the report must be added here, after it, on every publish.
publish:
	$(ASV) publish --config asv.conf.json
	$(PY) -m tools.report --config asv.conf.json
	$(PY) -m kernels --write-local --config asv.conf.json > /dev/null || echo "publish: kernel='auto' keeps its previous decision table"
	@echo "Report: $(HTML_DIR)/index.html"
	@echo "It loads its data over HTTP (not from file://): run 'make serve', then open http://127.0.0.1:$(PORT)/"

## Browser-test the report of the last `make bench` and save its screenshots for the README.
screenshots: venv
	REPORT_HTML_DIR=$(HTML_DIR) REPORT_SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest -q -s tests/test_browser.py

## Serve the report on 127.0.0.1 only.
serve:
	$(PY) -m http.server --bind 127.0.0.1 --directory $(HTML_DIR) $(PORT)

## Remove the build products and $(ASV_DIR)/ (environments, results, report).
clean:
	rm -rf build $(ASV_DIR) kernels/*.so kernels/_cython_gather.c kernels/_bounds.c kernels/__pycache__
