# One command sets up and runs the demo, one sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-out
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-fast ui

$(BIN)/imagic-lora: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU build of torch first, or pip pulls a multi-GB CUDA build for the dependencies
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ui]'
	touch $@

# the web app's browser test drives Debian's Chromium, headless
$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium > /dev/null || \
		($(SUDO) apt-get update -q > /dev/null && $(SUDO) apt-get install -y -q chromium > /dev/null)

setup: $(BIN)/imagic-lora

demo: setup
	$(BIN)/imagic-lora train demo profiles/shapes-input.png \
		--prompt "a large red circle on the left on a teal background" --model builtin:shapes --replace
	$(BIN)/imagic-lora apply profile demo "a large blue circle on the left on a teal background" --alpha 0 \
		--alpha 1 --out $(OUT)
	@echo "Before/after: $(OUT)/demo_a-large-blue-circle-on-the-left-on-a-teal-background_grid.png"

test: setup $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# the everyday loop: everything but the tests marked slow (real sizes, several processes, benchmarks)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# the local web app on http://127.0.0.1:7860 with the built-in model (Ctrl+C stops it)
ui: setup
	$(BIN)/imagic-lora ui --model builtin:shapes
