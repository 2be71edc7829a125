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
#   make bench-compare  sidemesh beside nginx, HAProxy and Go's ReverseProxy
#                (examples/benchcompare): a table and plots in bench-results/
#   make fuzz    every fuzz target, each for FUZZTIME (default 100000x:
#                a count of executions; FUZZTIME=30s also works)
#   make image   a Docker image FROM scratch around the static binary
#   make compose-up    the shop on Docker Compose (deploy/compose): two edges,
#                      web, catalog x2, cart x2, three Consul servers, Jaeger;
#                      every image built FROM scratch here; prints the URLs
#   make compose-down  stop it and remove its containers and network
#   make test-compose  the Compose stack's end-to-end test (make test runs it)

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

.PHONY: build demo test vet bench bench-compare fuzz image consul jaeger chromium clean \
	compose-images compose-secrets compose-up compose-down test-compose

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
	$(GO) vet -tags compose ./deploy/compose/

test: vet consul chromium
	SIDEMESH_CONSUL=$(abspath $(CONSUL)) SIDEMESH_CHROMIUM=$$(command -v chromium) SIDEMESH_REQUIRE_NETNS=1 $(GO) test -race -timeout 20m ./...
	$(MAKE) --no-print-directory test-compose
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

consul: $(CONSUL)

$(CONSUL): deploy/tools/go.mod deploy/tools/go.sum
	mkdir -p $(dir $(CONSUL))
	cd deploy/tools && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(abspath $(CONSUL)) github.com/hashicorp/consul

# Jaeger v2 for the Compose stack, pinned in its own module
# (deploy/tools/jaeger) for the same reason as Consul. Cold, it takes
# several minutes.
JAEGER   := .cache/bin/jaeger

jaeger: $(JAEGER)

$(JAEGER): deploy/tools/jaeger/go.mod deploy/tools/jaeger/go.sum
	mkdir -p $(dir $(JAEGER))
	cd deploy/tools/jaeger && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(abspath $(JAEGER)) github.com/jaegertracing/jaeger/cmd/jaeger

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

# The harness is built, not run with `go run`, so that Ctrl-C reaches it
# directly and it stops its proxies. BENCH_FLAGS passes flags through:
# -rounds, -duration, -rates, -only REGEXP, -quick (see -help), taken
# as written ($(value ...)), so that a regexp may end in $.
BENCH_OUT   ?= bench-results
BENCH_FLAGS ?=
bench-compare: build
	$(GO) build -o bin/benchcompare ./examples/benchcompare
	bin/benchcompare -sidemesh $(BIN) -out $(BENCH_OUT) $(value BENCH_FLAGS)

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

# The Compose shop (deploy/compose). No image can be pulled here: each is
# built FROM scratch around a static binary from this tree or from the
# tools modules, in a context folder holding only that binary (hard links,
# so Consul's and Jaeger's 100+ MB are not copied). A rebuilt image leaves
# its predecessor dangling; those (and only those, by label) are pruned.
COMPOSE_STAGE   := .cache/compose
COMPOSE_SECRETS := $(COMPOSE_STAGE)/secrets
COMPOSE_PROJECT ?= sidemesh
COMPOSE         := SIDEMESH_COMPOSE_SECRETS=$(abspath $(COMPOSE_SECRETS)) docker-compose -p $(COMPOSE_PROJECT) -f deploy/compose/docker-compose.yml

compose-images: build consul jaeger
	rm -rf $(COMPOSE_STAGE)/images
	mkdir -p $(COMPOSE_STAGE)/images/sidemesh $(COMPOSE_STAGE)/images/shop $(COMPOSE_STAGE)/images/consul $(COMPOSE_STAGE)/images/jaeger
	ln -f $(BIN) $(COMPOSE_STAGE)/images/sidemesh/sidemesh
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(COMPOSE_STAGE)/images/shop/ ./examples/catalog ./examples/frontend ./examples/cart
	ln -f $(CONSUL) $(COMPOSE_STAGE)/images/consul/consul
	ln -f $(JAEGER) $(COMPOSE_STAGE)/images/jaeger/jaeger
	cp deploy/compose/config/jaeger.yaml $(COMPOSE_STAGE)/images/jaeger/
	docker build -q -f deploy/compose/images/sidemesh.Dockerfile -t sidemesh/sidemesh:dev $(COMPOSE_STAGE)/images/sidemesh
	docker build -q -f deploy/compose/images/shop.Dockerfile -t sidemesh/shop:dev $(COMPOSE_STAGE)/images/shop
	docker build -q -f deploy/compose/images/consul.Dockerfile -t sidemesh/consul:1.20.6 $(COMPOSE_STAGE)/images/consul
	docker build -q -f deploy/compose/images/jaeger.Dockerfile -t sidemesh/jaeger:1.75.0 $(COMPOSE_STAGE)/images/jaeger
	docker image prune -f --filter label=io.sidemesh.compose=1 >/dev/null

# What the edges share, made once: the gossip and sticky-session keys, and
# a certificate for their TLS listener (DNS name "edge", from a CA of its
# own in $(COMPOSE_STAGE)/edge-ca; clients trust secrets/ca.pem). The
# folder is mounted into the edges, which run as uid 65532, so its files
# are readable by all: a development stack's secrets; keep .cache/ to
# yourself.
compose-secrets: build
	mkdir -p $(COMPOSE_SECRETS)
	test -s $(COMPOSE_SECRETS)/gossip.key || $(BIN) keygen > $(COMPOSE_SECRETS)/gossip.key
	test -s $(COMPOSE_SECRETS)/sticky.key || $(BIN) keygen > $(COMPOSE_SECRETS)/sticky.key
	test -s $(COMPOSE_STAGE)/edge-ca/ca.pem || $(BIN) ca init --dir $(COMPOSE_STAGE)/edge-ca --trust-domain shop.local
	test -s $(COMPOSE_SECRETS)/edge.pem || { $(BIN) ca issue --dir $(COMPOSE_STAGE)/edge-ca --service edge && \
		cp $(COMPOSE_STAGE)/edge-ca/ca.pem $(COMPOSE_STAGE)/edge-ca/edge.pem $(COMPOSE_STAGE)/edge-ca/edge-key.pem $(COMPOSE_SECRETS)/; }
	chmod 0755 $(COMPOSE_SECRETS)
	chmod 0644 $(COMPOSE_SECRETS)/*

compose-up: compose-images compose-secrets
	$(COMPOSE) up -d
	@echo; echo "edges:  https://$$($(COMPOSE) port edge-1 8443)/  https://$$($(COMPOSE) port edge-2 8443)/"; \
	echo "        curl --cacert $(COMPOSE_SECRETS)/ca.pem --connect-to edge:443:$$($(COMPOSE) port edge-1 8443) https://edge/"; \
	echo "Jaeger: http://$$($(COMPOSE) port jaeger 16686)/"; \
	echo "Consul: http://$$($(COMPOSE) port consul-server-1 8500)/"; \
	echo "(the first requests answer 503 until Consul has elected a leader and the sidecars have their certificates)"

compose-down:
	$(COMPOSE) down --volumes --remove-orphans --timeout 10

# The end-to-end test builds the images itself (to time them), brings up
# a stack of its own under another project name, and tears it down.
test-compose: build consul jaeger
	SIDEMESH_REPO=$(abspath .) $(GO) test -tags compose -count 1 -v -timeout 20m ./deploy/compose/

clean:
	rm -rf bin
