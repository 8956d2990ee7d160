# keyrelay — `make demo` and `make test` do their own set-up on a fresh Debian machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTO_FILES := $(wildcard protos/keyrelay/v1/*.proto)

.PHONY: setup system-deps venv protos check-protos lint-protos test test-unit test-integration test-e2e fuzz demo bench bench-node bench-gateway bench-relay bench-scale clean

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

# Client stubs for Go and TypeScript, generated from the protos into build/stubs/ (never committed;
# the protos stay without go_package). Each target installs its own tools, generates, then
# compiles what it generated, offline: Go against Debian's grpc-go and protobuf-go sources, TS with
# `tsc --noEmit`.
.PHONY: stubs-go stubs-ts
STUBS_DIR := build/stubs
STUBS_TOOLS := build/stubs-tools
# Import path and package name of the Go stubs; override to place them in your own module.
GO_STUBS_IMPORT ?= keyrelay/stubs/keyrelay/v1
GO_STUBS_PACKAGE ?= keyrelayv1
GO_STUBS_DEBS := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev golang-google-grpc-dev
TS_STUBS_NPM := ts-proto@2.18.0 typescript@5.9.3 @grpc/grpc-js@1.14.7 @types/node@20

stubs-go: venv
	@for f in /usr/bin/go /usr/bin/protoc-gen-go /usr/bin/protoc-gen-go-grpc \
		/usr/share/gocode/src/google.golang.org/protobuf /usr/share/gocode/src/google.golang.org/grpc; do \
		[ -e $$f ] && continue; \
		echo "installing $(GO_STUBS_DEBS) with apt-get ($$f is missing)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(GO_STUBS_DEBS) || exit 1; \
		break; \
	done
	rm -rf $(STUBS_DIR)/go && mkdir -p $(STUBS_DIR)/go
	@map=""; for f in $(PROTO_FILES:protos/%=%); do map="$$map,M$$f=$(GO_STUBS_IMPORT);$(GO_STUBS_PACKAGE)"; done; \
	cd protos && ../$(PY) -m grpc_tools.protoc -I . \
		--plugin=protoc-gen-go=/usr/bin/protoc-gen-go --go_out=../$(STUBS_DIR)/go --go_opt=paths=source_relative$$map \
		--plugin=protoc-gen-go-grpc=/usr/bin/protoc-gen-go-grpc --go-grpc_out=../$(STUBS_DIR)/go --go-grpc_opt=paths=source_relative$$map \
		keyrelay/v1/*.proto
	@gopath=$(CURDIR)/$(STUBS_TOOLS)/go; rm -rf $$gopath/src; mkdir -p $$gopath/src/$(dir $(GO_STUBS_IMPORT)); \
	ln -s $(CURDIR)/$(STUBS_DIR)/go/keyrelay/v1 $$gopath/src/$(GO_STUBS_IMPORT); \
	GO111MODULE=off GOFLAGS= GOPATH=$$gopath:/usr/share/gocode GOCACHE=$$gopath/cache /usr/bin/go build $(GO_STUBS_IMPORT) && \
	echo "Go stubs (package $(GO_STUBS_PACKAGE), import $(GO_STUBS_IMPORT)) in $(STUBS_DIR)/go/keyrelay/v1 compile"

stubs-ts: venv
	@command -v npm >/dev/null || { \
		echo "installing nodejs npm with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm || exit 1; \
	}
	@tools=$(STUBS_TOOLS)/ts; [ "$$(cat $$tools/.installed 2>/dev/null)" = "$(TS_STUBS_NPM)" ] || { \
		echo "installing $(TS_STUBS_NPM) into $$tools with npm"; \
		rm -rf $$tools && mkdir -p $$tools && \
		npm install --prefix $$tools --no-audit --no-fund --loglevel=error $(TS_STUBS_NPM) && \
		echo "$(TS_STUBS_NPM)" > $$tools/.installed; \
	}
	rm -rf $(STUBS_DIR)/ts && mkdir -p $(STUBS_DIR)/ts
	cd protos && ../$(PY) -m grpc_tools.protoc -I . \
		--plugin=protoc-gen-ts_proto=$(CURDIR)/$(STUBS_TOOLS)/ts/node_modules/.bin/protoc-gen-ts_proto \
		--ts_proto_out=../$(STUBS_DIR)/ts --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true \
		keyrelay/v1/*.proto
	@# Type-check a copy inside the tools folder, where its imports resolve to the tools' node_modules.
	@tools=$(STUBS_TOOLS)/ts; rm -rf $$tools/check && cp -r $(STUBS_DIR)/ts $$tools/check && \
	printf '%s\n' '{"compilerOptions": {"strict": true, "noEmit": true, "target": "es2020", "module": "node16",' \
		'"moduleResolution": "node16", "esModuleInterop": true, "skipLibCheck": true, "types": ["node"]},' \
		'"include": ["check/**/*.ts"]}' > $$tools/tsconfig.json && \
	$$tools/node_modules/.bin/tsc -p $$tools/tsconfig.json && \
	echo "TypeScript stubs (ts-proto, @grpc/grpc-js services) in $(STUBS_DIR)/ts type-check"

test: setup check-protos lint-protos
	$(PY) -m pytest -q -ra

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

test-e2e: setup
	$(PY) -m pytest -q tests/e2e

# Every RPC of every daemon fed hostile request bodies (tests/integration/test_fuzz_rpc.py), with
# far more calls than `make test` makes; a failing run names a seed, KEYRELAY_FUZZ_SEED=N replays it.
FUZZ_EXAMPLES ?= 50000
fuzz: setup
	KEYRELAY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/integration/test_fuzz_rpc.py

demo: setup
	$(PY) scripts/demo.py

bench: bench-node bench-gateway bench-relay

bench-node: setup
	$(PY) bench/bench_node.py

bench-gateway: setup
	$(PY) bench/bench_gateway.py

bench-relay: setup
	$(PY) bench/bench_relay.py

# One and two replicas of every role on PostgreSQL (default: the server on 127.0.0.1:5432).
bench-scale: setup
	$(PY) bench/bench_scale.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
