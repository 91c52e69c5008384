# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHOP_DATA := data/shop

.PHONY: install run test test-fast compile clean

install: $(STAMP)

# Idempotent: the venv is rebuilt only when the pins or setup.py change.
$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job: generate the embedded synthetic shop data, run the whole pipeline
# through the KFP local runner, publish an index, then answer one query from it.
run: install
	test -f $(SHOP_DATA)/interactions.csv || $(BIN)/twotower data synth-shop --out $(SHOP_DATA)
	$(BIN)/twotower run --config configs/shop.yaml
	$(BIN)/twotower query --store runs/store --text "nike running shoes" -k 5

test: install
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

compile: install
	$(BIN)/twotower compile --config configs/shop.yaml --out pipeline.yaml

clean:
	rm -rf $(VENV) runs data pipeline.yaml
