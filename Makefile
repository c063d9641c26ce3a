# capture-bridge — `make demo` runs the whole loop, `make test` proves it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: deps install demo test unit integration lint bench bench-quick soak flood ha-check ha-check-oldest tb-check image-check addon-check lock clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The brokers of the test matrix and Node.js for Aedes (Debian/Ubuntu, root or sudo): a run without skips.
deps:
	bash .ci/deps

demo: install
	$(BIN)/python -m bridge.demo

test: install lint
	$(BIN)/pytest -q -p no:cacheprovider

unit: install
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

integration: install
	$(BIN)/pytest -q -p no:cacheprovider tests/integration

lint: install
	$(BIN)/ruff check bridge tests bench checks
	$(BIN)/mypy --strict bridge tests bench checks

bench: install
	$(BIN)/python -m bench.run --suite full

bench-quick: install
	$(BIN)/python -m bench.run --suite quick

# A real Home Assistant core against the bridge: today's (2026.11.0, in a cached Debian forky root file
# system: its Python 3.14) by default; HA_VERSION=2025.4.4 or ha-check-oldest: the oldest supported.
HA_VERSION ?= 2026.11.0
ha-check: install
	$(BIN)/python -m checks.ha_check --ha-version $(HA_VERSION)

ha-check-oldest: install
	$(BIN)/python -m checks.ha_check --ha-version 2025.4.4

# The real ThingsBoard IoT Gateway (cached virtualenv, a minute on the first run) with examples/thingsboard/.
tb-check: install
	$(BIN)/python -m checks.tb_check

soak: install
	$(BIN)/python -m bench.soak --seconds 420 --settle 240

# Builds the image and runs docker/compose.yml for real (Docker, else Podman); minutes, not in `make test`.
image-check: install
	$(BIN)/python -m checks.image_check

# Builds the Home Assistant add-on's image (Podman) and runs it against a stand-in Supervisor; minutes.
addon-check: install
	$(BIN)/python -m checks.addon_check

# requirements.lock: the image's dependencies, pinned with hashes. Run after changing pyproject.toml.
lock: install
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --strip-extras \
	  --allow-unsafe --build-deps-for=wheel --no-emit-index-url --no-emit-find-links \
	  --output-file requirements.lock pyproject.toml

flood: install
	$(BIN)/python -m bench.flood --commands 100000 --onlines 100 --devices 301

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/results *.egg-info
