# One entry point: `make test` and `make bench` each set up their own virtualenv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ASV := $(VENV)/bin/asv
ASV_DIR := .asv
HTML_DIR := $(ASV_DIR)/html
PORT ?= 8080

.PHONY: test bench bench-quick publish serve venv roofline clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(PY)
	$(PY) -m pip install --quiet -e '.[test]'

## Set up, build the Cython extension, run every test.
test: venv
	$(PY) -m pytest -q

## Set up, run the full asv suite on the committed HEAD, publish the HTML report.
bench: venv
	$(ASV) machine --yes --config asv.conf.json
	$(ASV) run --config asv.conf.json --launch-method spawn HEAD^!
	$(MAKE) publish

## A first look in about a minute: the installed package, one sample per benchmark (not real timings).
bench-quick: venv
	$(ASV) machine --yes --config asv.conf.json
	$(ASV) run --config asv.conf.json --python=same --quick --dry-run --show-stderr

publish:
	$(ASV) publish --config asv.conf.json
	@echo "Report: $(HTML_DIR)/index.html  -- open it with: make serve  (http://127.0.0.1:$(PORT)/)"

## Serve the report on 127.0.0.1 only.
serve:
	$(PY) -m http.server --bind 127.0.0.1 --directory $(HTML_DIR) $(PORT)

clean:
	rm -rf build $(ASV_DIR) kernels/*.so kernels/_cython_gather.c kernels/_bounds.c kernels/__pycache__
