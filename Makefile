# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO ?= var/demo
GRPC_PORT ?= 8001
UPDATER_PORT ?= 50051
# make test ends here whatever hangs (the suite takes ~8 min on 2 cores; CI allows 90 in all)
TEST_LIMIT_S ?= 2700

.PHONY: serve test lint venv clean demo bench-kernels gpu-check prometheus

venv: $(STAMP)

# On a host without a GPU, torch==2.13.0 comes from local disk as a CPU build; installing it
# first keeps the unpinned requirement in pyproject.toml from pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@$(BIN)/python -m freshrec.processes --check
	@command -v promtool >/dev/null 2>&1 || $(MAKE) --no-print-directory prometheus
	touch $(STAMP)

# Debian's prometheus (prometheus and promtool), for the monitoring tests
prometheus:
	apt-get install -y -q --no-install-recommends prometheus >/dev/null \
	  || (apt-get update -q && apt-get install -y -q --no-install-recommends prometheus >/dev/null) \
	  || echo "could not install Debian's prometheus package: the monitoring tests will say so"

# Built once: a reinstall (new dependencies) keeps it (order-only), and so does the updater's
# garbage collection of version 1 (the mark is a file of its own). A demo built before the
# mark existed is kept too.
$(DEMO)/.built: | $(STAMP)
	test -d $(DEMO)/repository || $(BIN)/freshrec build --synthetic --out $(DEMO)
	touch $@

demo: $(DEMO)/.built

serve: demo
	$(BIN)/freshrec serve --repository $(DEMO)/repository --grpc-port $(GRPC_PORT) --updater-port $(UPDATER_PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	TRITON_INTERPRET=1 timeout -k 30 $(TEST_LIMIT_S) $(BIN)/pytest

# Needs no venv: a lent GPU machine starts bare and its python3 has torch (docs/gpu-check.md).
gpu-check:
	$(PY) -m bench.gpu_check

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var
