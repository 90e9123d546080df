# Portico appliance. `make demo` runs the main job, `make test` all tests.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build demo test test-unit test-root bench lint clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/appliance ./cmd/appliance
	$(GO) build -o $(BIN)/backend ./test/backend
	$(GO) build -o $(BIN)/topo ./test/topo/cmd/topo

# A real topology in network namespaces with traffic flowing (root).
demo: build
	$(GO) run ./test/demo -bin $(BIN)

# Every test: pure ones, and kernel and end-to-end ones in throwaway
# network namespaces (root; with CI=true they fail rather than skip
# without it). kube-apiserver is built first (minutes the first time, then
# cached) so that the build shows here rather than inside a test.
test: build lint
	test/kube/build.sh kube-apiserver >/dev/null
	$(GO) test -race -count=1 -timeout 40m ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: the files above need formatting"; exit 1; }
	$(GO) vet ./...

# Benchmarks against the peers a user would pick instead (root).
bench: build
	$(GO) run ./bench/l4 -out bench/results/l4.md
	$(GO) run ./bench/bgp -out bench/results/bgp.md

clean:
	rm -rf $(BIN)
