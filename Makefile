# Two commands do everything on a fresh machine:
#   make demo   - the main job on the embedded default (make demo TRAIN=1 also trains on phantoms)
#   make test   - the test suite (ruff, then every test)
#   make test-fast - the fast layer: no training, Orthanc, Holoscan run or torchrun (markers: pyproject.toml)
# Both create .venv/ on first use (make setup is idempotent).
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo_output

.PHONY: setup demo test test-fast lint clean

JS_DIR   := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed

setup: $(STAMP) $(JS_STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# dcmjs for the second SEG reader (tests/deploy/test_seg_dcmjs.py), exactly as package-lock.json says. Without npm
# (.ci/run installs nodejs/npm) this is skipped with a note and that test fails saying so; make demo needs neither.
$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
	    npm ci --prefix $(JS_DIR) --ignore-scripts && touch $(JS_STAMP); \
	else \
	    echo "note: npm not found, $(JS_DIR) not installed (tests/deploy/test_seg_dcmjs.py needs it; Debian: apt-get install nodejs npm)"; \
	fi

demo: setup
	$(PY) -m spleenseg.demo --out $(DEMO_DIR) $(if $(TRAIN),--train)

# ruff's config (rules, excludes such as tests/js/node_modules) is pyproject.toml [tool.ruff]
lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest tests

# Markers are set by tests/conftest.py from each test's fixtures, folder and body.
FAST_MARKERS := not slow and not orthanc and not holoscan and not torchrun
test-fast: setup
	$(PY) -m pytest -m "$(FAST_MARKERS)" tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

# Reproduce the shipped model and its model-card numbers (bundle/docs/README.md, "Shipped model"):
# real cases + multi-organ phantoms -> train (CPU ~60-80 min) -> held-out evaluation. Never overwrites bundle/models/.
REAL_CFG := "['bundle/configs/train.json','bundle/configs/train_real.json']"
REAL_EVAL_CFG := "['bundle/configs/train.json','bundle/configs/train_real.json','bundle/configs/evaluate.json']"
.PHONY: reproduce-model validate-model
reproduce-model: setup
	test -d runs/data_real || $(VENV)/bin/spleenseg-prepare real_cases runs/data_real --phantoms 34 --seed 0 --cross-phantoms 6
	$(PY) -m monai.bundle run --config_file $(REAL_CFG)
	$(PY) -m monai.bundle run --config_file $(REAL_EVAL_CFG) --eval_split test \
	    --ckpt_path runs/train_real/models/model.pt --output_dir runs/eval_real --largest_cc true
	$(PY) -m monai.bundle run --config_file $(REAL_EVAL_CFG) --eval_split test --dataset_dir runs/data_real/phantoms \
	    --ckpt_path runs/train_real/models/model.pt --output_dir runs/eval_phantoms --largest_cc true
	$(PY) -m monai.bundle run --config_file $(REAL_EVAL_CFG) --eval_split test --dataset_dir runs/data_real/phantoms_cross \
	    --ckpt_path runs/train_real/models/model.pt --output_dir runs/eval_phantoms_cross --largest_cc true
	@echo "held-out real: runs/eval_real/metrics_per_case.csv; phantoms: runs/eval_phantoms/, cross-generator: runs/eval_phantoms_cross/"
	@echo "to ship: cp runs/train_real/models/model.pt bundle/models/model.pt"

# Leave-one-real-case-out validation of the same recipe (one training per real patient, ~1 h CPU each).
validate-model: setup
	$(VENV)/bin/spleenseg-validate-model run --out runs/loo $(if $(ORGANS),--organs true)
