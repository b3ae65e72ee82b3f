# One entry point: `make test` and `make bench` each set up their own virtualenv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ASV := $(VENV)/bin/asv
ASV_DIR := .asv
HTML_DIR := $(ASV_DIR)/html
PORT ?= 8080

.PHONY: test bench bench-quick publish serve screenshots venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(PY)
	$(PY) -m pip install --quiet -e '.[test]'

## Set up, build the Cython extension, run every test.
test: venv
	$(PY) -m pytest -q

## Set up, run the full asv suite on the committed HEAD, publish the HTML report.
## (asv builds HEAD in its own virtualenv under $(ASV_DIR)/env: commit first. About 7 min on 2 vCPUs, measured.)
bench: venv
	$(ASV) machine --yes --config asv.conf.json
	$(ASV) run --config asv.conf.json HEAD^!
	$(MAKE) publish

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
	$(PY) -m benchmarks.report --config asv.conf.json
	@echo "Report: $(HTML_DIR)/index.html"
	@echo "It loads its data over HTTP (not from file://): run 'make serve', then open http://127.0.0.1:$(PORT)/"

## Browser-test the report of the last `make bench` and save its screenshots for the README.
screenshots: venv
	REPORT_HTML_DIR=$(HTML_DIR) REPORT_SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest -q -s tests/test_browser.py

## Serve the report on 127.0.0.1 only.
serve:
	$(PY) -m http.server --bind 127.0.0.1 --directory $(HTML_DIR) $(PORT)

clean:
	rm -rf build $(ASV_DIR) kernels/*.so kernels/_cython_gather.c kernels/_bounds.c kernels/__pycache__
