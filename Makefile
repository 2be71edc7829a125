# sidemesh — build, demo, test.
#
#   make demo    build the binary and run a small mesh on loopback, narrated in
#                phases (gossip, mTLS, a failure, a slow instance, a denial,
#                a member leaving); configs and logs stay in demo-run/;
#                Ctrl-C stops it
#   make test    go vet, every test with the race detector, then every fuzz
#                target for a few seconds (what CI runs); builds the pinned
#                Consul the integration tests start, once
#   make chromium  install Debian's chromium and curl, which the dashboard's
#                  browser test and the quick start's test use, unless they are
#                  on the PATH (apt-get; sudo when not root)
#   make bench   the Go benchmarks
#   make fuzz    every fuzz target, each for FUZZTIME (default 100000x:
#                a count of executions; FUZZTIME=30s also works)
#   make image   a Docker image FROM scratch around the static binary

GO       ?= go
BIN      := bin/sidemesh
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/sidemesh/sidemesh/sidecar/buildinfo.version=$(VERSION)
FUZZTIME ?= 100000x
# How many inputs make test runs through each fuzz target, past its seed
# corpus. A count, not a duration: with a duration, go1.26's fuzz coordinator
# can report "context deadline exceeded" as a failure when its deadline fires
# while a worker is mid-input (golang/go#75804, fixed in go1.27), which made CI
# fail with no failing input written.
TEST_FUZZTIME ?= 10000x

# Consul for the integration tests: built from the version pinned in
# deploy/tools/go.mod (a separate module, so its dependencies stay out of
# sidemesh's), once, into a cache folder. Cold, it takes a few minutes.
CONSUL   := .cache/bin/consul

.PHONY: build demo test vet bench fuzz image consul chromium clean

# A single static binary: no cgo, no libc.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sidemesh

# The demo is built, not run with `go run`, so that Ctrl-C reaches it
# directly and it can stop its children cleanly.
demo: build
	$(GO) build -o bin/demo ./examples/demo
	bin/demo -sidemesh $(BIN)

vet:
	$(GO) vet ./...

test: vet consul chromium
	SIDEMESH_CONSUL=$(abspath $(CONSUL)) SIDEMESH_CHROMIUM=$$(command -v chromium) SIDEMESH_REQUIRE_NETNS=1 $(GO) test -race -timeout 20m ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

consul: $(CONSUL)

$(CONSUL): deploy/tools/go.mod deploy/tools/go.sum
	mkdir -p $(dir $(CONSUL))
	cd deploy/tools && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(abspath $(CONSUL)) github.com/hashicorp/consul

# Chromium for the admin dashboard's test in a real browser
# (sidecar/dashboard_test.go), and curl for the README quick start's test
# (examples/quickstart): Debian's packages, installed only when missing
# from the PATH.
chromium:
	@missing=; for p in chromium curl; do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	[ -z "$$missing" ] || { \
		sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	}

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Every fuzz target in the tree, FUZZTIME each, found by name so that a new
# target runs without editing this file.
fuzz:
	@set -e; for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for target in $$(grep -h '^func Fuzz' $$dir/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
			echo "== $$dir $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$dir; \
		done; \
	done

# An image FROM scratch around the static binary (no registry needed).
image: build
	docker build -f deploy/docker/Dockerfile -t sidemesh:$(VERSION) .

clean:
	rm -rf bin
