# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHOP_DATA := data/shop

.PHONY: install run test test-fast compile clean image docker-tools browser

install: $(STAMP)

# Idempotent: the venv is rebuilt only when the pins or setup.py change.
$(STAMP): requirements.txt requirements-dev.txt requirements-encoder.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-encoder.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job: generate the embedded synthetic shop data, run the whole pipeline
# through the KFP local runner, publish an index, then answer one query from it.
run: install
	test -f $(SHOP_DATA)/interactions.csv || $(BIN)/twotower data synth-shop --out $(SHOP_DATA)
	$(BIN)/twotower run --config shop
	$(BIN)/twotower query --store runs/store --text "nike running shoes" -k 5

# Tests marked `beside` mostly wait (the 1,000-interleaving store stress test sleeps its jitter),
# so a second pytest runs them beside the rest instead of after it; both must pass.
test: install browser docker-tools
	@log=$$(mktemp); \
	$(BIN)/python -m pytest -q tests -m beside --basetemp="$$log.tmp" > "$$log" 2>&1 & beside=$$!; \
	$(BIN)/python -m pytest -q tests -m "not beside"; rest=$$?; \
	wait $$beside; besiderc=$$?; echo "--- tests marked beside (ran alongside):"; cat "$$log"; \
	rm -rf "$$log" "$$log.tmp"; test $$rest = 0 && test $$besiderc = 0

# The component image (Dockerfile): starts dockerd when none answers and this is root, makes the
# local Debian base when no registry can serve python:3.11-slim, and hands pip this machine's CA
# bundle for the build only. The tests build it too (layer cache: seconds when unchanged).
image: install docker-tools
	$(BIN)/twotower image build

# Debian's Docker engine and debootstrap, installed only when missing and only as root (CI);
# otherwise the image tests skip and say why.
docker-tools:
	@if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; \
	else echo "note: dockerd/debootstrap missing and not root: the image tests will skip"; fi

# The `twotower ui` browser test drives Debian's chromium through its chromedriver; installed
# only when missing, and only as root (CI); otherwise that one test skips and says why.
# Nothing is downloaded at test time.
.PHONY: browser
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "note: chromium/chromedriver missing and not root: the browser test will skip"; fi

test-fast: install
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

compile: install
	$(BIN)/twotower compile --config shop --out pipeline.yaml

clean:
	rm -rf $(VENV) runs data pipeline.yaml
