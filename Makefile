# FaceFleet developer commands. `make demo` and `make test` are the two README set-up commands.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= cpu
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: venv demo test lint typecheck unit contract browser bench bench-detect bench-group bench-phone evaluate simulate prefect-yaml clean

$(UV):
	$(PYTHON) -m pip install --user --quiet uv

# The virtual environment at .venv with the `facefleet` command, from the lock file.
venv: $(UV)
	$(UV) sync --locked --extra $(EXTRA)

demo: venv
	$(BIN)/facefleet demo

lint: venv
	$(BIN)/ruff check packages dashboards tests benchmarks run_*.py
	$(BIN)/ruff format --check packages dashboards tests benchmarks run_*.py
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy packages/common/src packages/control/src packages/worker/src packages/infra/src packages/embedded/src packages/flows/src packages/tools/src dashboards/src

unit: venv
	$(BIN)/pytest -q

# What AWS enforces and the emulators do not (also part of `unit`): docs/infra.md.
contract: venv
	$(BIN)/pytest -q tests/contract

# The report test drives a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

test: lint typecheck browser unit

bench-detect: venv
	$(BIN)/python benchmarks/bench_detect.py

bench-group: venv
	$(BIN)/python benchmarks/bench_group.py

# Phone photos (12-MP JPEG, grid HEIC, PNG screenshots, WebP) made from ../shared: MIX=android.
bench-phone: venv
	$(BIN)/python benchmarks/bench_phone.py --mix $(or $(MIX),iphone)

bench: bench-detect bench-group

evaluate: venv
	$(BIN)/facefleet evaluate ../shared/faces/lfw

simulate: venv
	$(BIN)/facefleet simulate --days 7 --seed 7 --plot out/simulation.png

# prefect.yaml is generated from packages/flows/src/facefleet/flows/deployments.py.
prefect-yaml: venv
	$(BIN)/facefleet flows yaml --out prefect.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis out .facefleet
