# haproxy-config: see README.md. Targets work on a fresh Debian 12 machine;
# "test" installs what the suite needs (haproxy, curl) through apt first.
GO      ?= go
# bench pipes go test through tee: a failed run must fail the target
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
# where make bench leaves the raw go test output and the table's JSON
BENCH_DIR ?= bench-results
BIN     := bin/haproxy-config
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build test deps lint bench run clean deb

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/haproxy-config

deps:
	./tests/install-deps.sh

lint:
	@unformatted="$$(gofmt -l .)"; if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

test: deps lint
	$(GO) test -count=1 -timeout 20m ./...

# Every benchmark, then one table of their metrics beside the goals
# (README: Benchmarks); the JSON lands in $(BENCH_DIR)/bench.json.
bench: deps
	mkdir -p $(BENCH_DIR)
	$(GO) test -run '^$$' -bench . -benchtime 5x -timeout 20m ./reconcile/ | tee $(BENCH_DIR)/reconcile.txt
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 20m ./tests/ | tee $(BENCH_DIR)/tests.txt
	$(GO) run ./tests/benchtable -json $(BENCH_DIR)/bench.json $(BENCH_DIR)/reconcile.txt $(BENCH_DIR)/tests.txt

# The Debian package (see README "Installing the Debian package"), into dist/.
deb:
	./packaging/build-deb.sh dist

run: deps build
	./packaging/demo.sh $(BIN)

clean:
	rm -rf bin .demo dist $(BENCH_DIR)
