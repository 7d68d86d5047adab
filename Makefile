# Vulcan — see README.md. `make run` serves; `make test` tests. Both build what is missing.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
ROOT_USER := $(shell [ "$$(id -u)" = 0 ] && echo yes)
VULCAN_CACHE_DIR ?= $(if $(ROOT_USER),/var/cache/vulcan,$(HOME)/.cache/vulcan)
VULCAN_IMAGES_DIR ?= $(if $(ROOT_USER),/var/lib/vulcan/images,$(HOME)/.local/share/vulcan/images)
export VULCAN_CACHE_DIR VULCAN_IMAGES_DIR
RUNTIME ?= python
RUNTIMES ?= python node go base code-interpreter
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/vulcanhq/vulcan/internal/version.Version=$(VERSION)
TEST_TIMEOUT ?= 60m
# Test packages run one at a time (-p 1): several boot VMs under TCG on the same 2 cores,
# and servers share host-global state (named netns mounts, the bridge) that a concurrent
# server's startup reclaim would take for a crashed run's leftovers. Never from the test
# cache (-count=1): VM tests depend on images and processes Go cannot see.

.PHONY: all build cni dashboard-vendor deps test-deps run test test-short kernel rootfs images download fuzz soak bench clean

all: build

build: dashboard-vendor $(BIN)/vulcan $(BIN)/vulcan-guest cni

# Go tracks its own staleness; these targets always ask it (cheap when nothing changed).
.PHONY: $(BIN)/vulcan $(BIN)/vulcan-guest
$(BIN)/vulcan: dashboard-vendor
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/vulcan

$(BIN)/vulcan-guest:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/vulcan-guest

# The dashboard's terminal (xterm.js) from npm, pinned by internal/dashboard/package-lock.json,
# copied into the gitignored static/assets/vendor that the binary embeds. Without it the
# tree still builds; the terminal panel then says to run make.
dashboard-vendor:
	scripts/dashboard-vendor.sh

# CNI plugins for VM networking: ours plus bridge and host-local, pinned in go.mod by its
# tool directive (containernetworking/plugins).
.PHONY: cni
cni:
	@mkdir -p $(BIN)/cni
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/cni/vulcan-cni-tap ./cmd/vulcan-cni-tap
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/cni/bridge github.com/containernetworking/plugins/plugins/main/bridge
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/cni/host-local github.com/containernetworking/plugins/plugins/ipam/host-local

# Debian packages for images, VMs and networking (and chromium for the tests); installs
# them as root, else prints the apt-get command.
deps:
	scripts/install-deps.sh

test-deps:
	scripts/install-deps.sh --test

kernel: deps
	scripts/build-kernel.sh $(VULCAN_IMAGES_DIR)

rootfs: deps $(BIN)/vulcan-guest
	scripts/build-rootfs.sh $(RUNTIME) $(BIN)/vulcan-guest $(VULCAN_IMAGES_DIR)

images: deps kernel $(BIN)/vulcan-guest
	for rt in $(RUNTIMES); do scripts/build-rootfs.sh $$rt $(BIN)/vulcan-guest $(VULCAN_IMAGES_DIR) || exit 1; done

# Pinned Firecracker release + its CI kernel, SHA-256 verified (needs internet; fails fast).
download: $(BIN)/vulcan
	$(BIN)/vulcan download --images-dir $(VULCAN_IMAGES_DIR)

run: build images
	VULCAN_IMAGES_DIR=$(VULCAN_IMAGES_DIR) $(BIN)/vulcan serve

# The tree builds and vets on other OSes too (OS-specific code in _linux.go files with a
# stub beside it): checked first, it takes seconds.
.PHONY: vet-other-os
vet-other-os:
	GOOS=darwin $(GO) vet ./...
	@unformatted=$$(gofmt -l cmd internal acceptance); if [ -n "$$unformatted" ]; then echo "not gofmt'd: $$unformatted" >&2; exit 1; fi

# Go code for E2B's envd services from our .proto files (the generated files are
# committed; run this after editing a .proto). Needs protoc (apt: protobuf-compiler) and
# the two plugins, which `go install` fetches at the versions go.mod pins.
.PHONY: proto
proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go
	PATH=$$($(GO) env GOPATH)/bin:$$PATH protoc -I internal/e2b/envd/proto --go_out=. --go_opt=module=github.com/vulcanhq/vulcan \
		--connect-go_out=. --connect-go_opt=module=github.com/vulcanhq/vulcan \
		internal/e2b/envd/proto/process/process.proto internal/e2b/envd/proto/filesystem/filesystem.proto

# The official E2B SDK (npm, pinned by internal/e2b/testdata/sdk/package-lock.json) in a
# cache dir, for the E2B compatibility tests.
.PHONY: e2b-sdk
e2b-sdk:
	@scripts/e2b-sdk.sh >/dev/null

test: vet-other-os test-deps build images e2b-sdk
	VULCAN_IMAGES_DIR=$(VULCAN_IMAGES_DIR) VULCAN_BIN_DIR=$(BIN) VULCAN_E2B_SDK=$$(scripts/e2b-sdk.sh) $(GO) test -p 1 -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_SHORT)

# Fuzz every decoder of hostile bytes for a fixed budget each (`make test` runs a short
# budget; run this with a longer one, e.g. FUZZTIME=10m). A crasher lands in testdata/fuzz
# and becomes a regression test.
FUZZTIME ?= 2m
FUZZTIME_SHORT ?= 15s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadMessage$$' -fuzztime $(FUZZTIME) ./internal/protocol/
	$(GO) test -run '^$$' -fuzz '^FuzzExtract$$' -fuzztime $(FUZZTIME) ./internal/guest/archive/

# The full soak: 200 workloads, then a kill -9 and restart (`make test` runs it with 40).
soak: build images
	VULCAN_IMAGES_DIR=$(VULCAN_IMAGES_DIR) VULCAN_BIN_DIR=$(BIN) VULCAN_SOAK_COUNT=200 $(GO) test -timeout 90m -count=1 -run TestSoakAndCrashRecovery -v ./acceptance/

# Unit tests only: no images, no VM boots.
test-short: build
	$(GO) test -short ./...

# P1–P5 side by side: the table on stdout, the same as JSON in bench.json (BENCH_FLAGS=--quick
# for a short run; `go test -bench` runs the same code through thin wrappers).
bench: build images
	VULCAN_IMAGES_DIR=$(VULCAN_IMAGES_DIR) $(BIN)/vulcan bench --json bench.json $(BENCH_FLAGS)

clean:
	rm -rf $(BIN)
