# Two commands do everything on a fresh machine (see README):
#   make demo   - install into .venv and run the main job end to end on data/sample
#   make test   - install into .venv (with dev extras and system test tools) and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo

.PHONY: demo test bench system-test-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/scf demo --data data/sample --out $(OUT)

# Debian tools the tests drive: Chromium (memo rendering), pdftoppm (PDF pages), a CJK font,
# and a headless Java runtime for Spark (pyspark 4 needs Java 17+; Debian 12 ships 17).
system-test-deps:
	@command -v chromium >/dev/null && command -v pdftoppm >/dev/null && fc-list :lang=zh | grep -q . && \
	  java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])' || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium poppler-utils fonts-wqy-microhei openjdk-17-jre-headless >/dev/null; }

test: $(VENV)/.dev system-test-deps
	$(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder -q

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) out mlflow.db mlartifacts
