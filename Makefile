# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check lint controlplane helm bench bench-quick clean

$(BIN)/watchcache: pyproject.toml
	@command -v openssl >/dev/null || (apt-get update -qq && apt-get install -y -qq openssl)
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

controlplane:
	bash deploy/controlplane/build.sh >/dev/null

## helm: the helm CLI, built from its Go module into ~/.cache/watchcache/helm (deploy/helm/build.sh)
helm:
	bash deploy/helm/build.sh >/dev/null

## run: the proxy on a local control plane with the KubeRay CRDs (http://127.0.0.1:31888)
run: $(BIN)/watchcache controlplane
	$(BIN)/watchcache dev

## check: lint, types and the unit tests (one builds the benchmarks' Go watch reader); no control plane
check: lint
	$(BIN)/mypy
	$(BIN)/pytest -q tests/unit

## test: `make check`, then every other test against a real kube-apiserver and etcd built from source
test: check controlplane
	$(BIN)/pytest -q tests/integration tests/hostile

LINTED := $(wildcard watchcache tests benchmarks examples deploy/controlplane)

lint: $(BIN)/watchcache
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

## bench: watchcache vs kube-apiserver, side by side (about 15 minutes); writes benchmarks/results/
bench: $(BIN)/watchcache controlplane
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.run

## bench-quick: the same scenarios at small sizes (under 3 minutes; CI runs it)
bench-quick: $(BIN)/watchcache controlplane
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
