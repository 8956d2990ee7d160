# keyrelay — `make demo` and `make test` do their own set-up on a fresh Debian machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTO_FILES := $(wildcard protos/keyrelay/v1/*.proto)

.PHONY: setup system-deps venv protos check-protos lint-protos test test-unit test-integration test-e2e demo bench bench-node bench-gateway bench-relay clean

setup: system-deps venv

# softhsm2 for the HSM, opensc for pkcs11-tool (used by the tests to inspect tokens).
system-deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v pkcs11-tool >/dev/null || missing="$$missing opensc"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# Regenerate the Python modules beside the protos (run after editing a .proto).
protos: venv
	cd protos && ../$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. keyrelay/v1/*.proto

# Fail when the committed generated code does not match the protos.
check-protos: venv
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cp -r protos/keyrelay "$$tmp/"; \
	(cd "$$tmp" && $(CURDIR)/$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. keyrelay/v1/*.proto); \
	stale=""; for f in protos/keyrelay/v1/*_pb2*.py protos/keyrelay/v1/*_pb2.pyi; do \
		cmp -s "$$f" "$$tmp/$${f#protos/}" || stale="$$stale $$f"; \
	done; \
	for f in $$tmp/keyrelay/v1/*_pb2*.py $$tmp/keyrelay/v1/*_pb2.pyi; do \
		[ -f "protos/$${f#$$tmp/}" ] || stale="$$stale protos/$${f#$$tmp/} (missing)"; \
	done; \
	if [ -n "$$stale" ]; then echo "generated protobuf code is stale:$$stale — run 'make protos' and commit"; exit 1; fi; \
	echo "generated protobuf code matches the protos"

lint-protos: venv
	$(VENV)/bin/buf lint

test: setup check-protos lint-protos
	$(PY) -m pytest -q -ra

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

test-e2e: setup
	$(PY) -m pytest -q tests/e2e

demo: setup
	$(PY) scripts/demo.py

bench: bench-node bench-gateway bench-relay

bench-node: setup
	$(PY) bench/bench_node.py

bench-gateway: setup
	$(PY) bench/bench_gateway.py

bench-relay: setup
	$(PY) bench/bench_relay.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
