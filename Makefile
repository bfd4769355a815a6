# pool-managerd. Quick start: `make demo`, then `make test`.
# Needs Go (go.mod's version) and gcc (cgo, for go-nvml). Everything else is
# fetched by the go command.

SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/poolmanagerd/pool-managerd/internal/cli.version=$(VERSION)

# go-nvml's copy of NVIDIA's nvml.h marks functions deprecated that go-nvml
# still wraps, so compiling it (the first build, or after the cache is
# cleared) prints 29 -Wdeprecated-declarations warnings from cgo: harmless,
# they are about NVML's API, not ours. Go has no per-package CGO flags, so the
# warning is silenced for the whole build; every other warning stays on.
# -O2 -g are cgo's defaults, which setting CGO_CFLAGS would otherwise drop.
CGO_CFLAGS ?= -O2 -g
CGO_CFLAGS += -Wno-deprecated-declarations
export CGO_CFLAGS

.PHONY: all build demo test unit lint fmt bench bdd fuzz golden clean

all: build

build: ## Build pool-managerd and the stand-in engine into bin/.
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/pool-managerd ./cmd/pool-managerd
	$(GO) build -o $(BIN)/fake-engine ./cmd/fake-engine

# With a real llama-server (POOL_MANAGERD_TEST_LLAMA_SERVER, or llama-server in
# PATH) the daemon steps run it for the coder pool; else the stand-in.
demo: build ## Walk through the main job on the examples.
	$(GO) build -o $(BIN)/ggufgen ./testkit/ggufgen/cmd/ggufgen
	./scripts/demo.sh $(BIN)/pool-managerd

test: lint ## The whole suite: vet, staticcheck, unit, CLI, golden and BDD tests.
	$(GO) test -count=1 ./...
	@if [ -n "$$POOL_MANAGERD_TEST_LLAMA_SERVER" ]; then \
		echo "real llama-server tests ran against $$POOL_MANAGERD_TEST_LLAMA_SERVER"; \
	else \
		echo "real llama-server tests skipped: POOL_MANAGERD_TEST_LLAMA_SERVER is not set (README: A real llama-server)"; \
	fi
	@if [ -n "$$POOL_MANAGERD_TEST_PROMTOOL" ]; then \
		echo "promtool tests of the alert rules ran with $$POOL_MANAGERD_TEST_PROMTOOL"; \
	elif command -v promtool >/dev/null 2>&1; then \
		echo "promtool tests of the alert rules ran with $$(command -v promtool)"; \
	else \
		echo "promtool tests of the alert rules skipped: promtool is not in PATH (README: Monitoring)"; \
	fi

bdd: ## The BDD scenarios alone, readable (LLORCH_BDD_FEATURE_PATH=features/x.feature narrows them).
	$(GO) test -count=1 ./features -v -godog.format=pretty

unit: ## Tests only, no linters.
	$(GO) test ./...

lint: ## gofmt, go vet and staticcheck must be clean.
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# BENCH_STRICT=1 make bench: fail when a target of the fleet-scale issue is missed
# (the validate and fleet scripts print each target as met or NOT MET).
bench: build ## Benchmarks: load, validate against cue vet, plan, and the daemon of one node of a 100 to 10,000 pool fleet.
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 3x ./schema/...
	$(GO) test -run '^$$' -bench Plan -benchtime 3x ./reconcile
	./scripts/bench-validate.sh $(BIN)/pool-managerd
	./scripts/bench-fleet.sh $(BIN)
	./scripts/bench-apply.sh $(BIN)
	./scripts/bench-daemon.sh $(BIN)

fuzz: ## Fuzz the loader for a minute.
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime 60s ./schema

clean:
	rm -rf $(BIN)
