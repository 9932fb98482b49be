# Two commands do everything on a fresh machine:
#   make demo   - the main job on the embedded default (make demo TRAIN=1 also trains on phantoms)
#   make test   - the test suite
# Both create .venv/ on first use (make setup is idempotent).
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo_output

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(PY) -m spleenseg.demo --out $(DEMO_DIR) $(if $(TRAIN),--train)

test: setup
	$(PY) -m pytest tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
