# hull: top-level build. On a fresh machine, `make demo` runs the demo and `make test` runs the
# whole test suite; both install what they need first (scripts/install-deps.sh).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

ROOT := $(CURDIR)
BUILD := $(ROOT)/build
export HULL_CACHE_DIR ?= /var/cache/hull
# One target dir per toolchain, outside the clone, so a fresh clone reuses compiled dependencies.
RUST_KEY := $(shell rustc -vV 2>/dev/null | sha256sum | cut -c1-12)
export CARGO_TARGET_DIR ?= $(HULL_CACHE_DIR)/target-$(RUST_KEY)
# Everything (binaries and test binaries) is built once: release, fully static, explicit triple
# (the explicit --target keeps +crt-static off proc-macros and build scripts).
TRIPLE := x86_64-unknown-linux-gnu
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS := -C target-feature=+crt-static
CARGO_FLAGS := --release --locked --target $(TRIPLE)
OUT := $(CARGO_TARGET_DIR)/$(TRIPLE)/release
BINS := hull hull-vmm containerd-shim-hull-v2
# The agent that goes into the guest's initramfs is built with its own profile (`guest` in
# Cargo.toml: size-optimised, whole-program LTO): every byte of it is copied into guest RAM and
# unpacked by the guest kernel on every sandbox start (docs/performance.md).
GUEST_OUT := $(CARGO_TARGET_DIR)/$(TRIPLE)/guest

.PHONY: install install-docker deps build kernel initrd lint fuzz fuzz-smoke unit-test testhost-selftest vm-test vm-test-boot vm-test-boot-cli test demo bench soak clean

deps:
	@scripts/install-deps.sh

build: deps
	cargo build $(CARGO_FLAGS) --workspace --bins
	cargo build --profile guest --locked --target $(TRIPLE) -p hull-agent --bin hull-agent
	@mkdir -p $(BUILD)/bin
	@for b in $(BINS); do install -m 0755 $(OUT)/$$b $(BUILD)/bin/$$b; done
	@install -m 0755 $(GUEST_OUT)/hull-agent $(BUILD)/bin/hull-agent
	@echo "binaries in $(BUILD)/bin: $(BINS) hull-agent"

kernel: deps
	kernel-config/build.sh $(BUILD)/vmlinux

initrd: build
	HULL_AGENT_BIN=$(BUILD)/bin/hull-agent guest-agent/build-initrd.sh $(BUILD)/hull-initrd.img

# The fuzz crate (fuzz/, outside the workspace) has its own target dir, keyed like the main
# one and outside the clone too; `lint` fails if any fuzz target stops compiling.
export HULL_FUZZ_TARGET_DIR ?= $(HULL_CACHE_DIR)/fuzz-target-$(RUST_KEY)
FUZZ_SECONDS ?= 600
SOAK_CYCLES ?= 200
DOCKER_RUNS ?= 50

# Puts the binaries, the guest kernel and the initramfs where hull's defaults look for them
# (runtime/src/config.rs): $(PREFIX)/bin and $(PREFIX)/share/hull.
PREFIX ?= /usr/local
DOCKER_DAEMON_JSON ?= /etc/docker/daemon.json
install: build kernel initrd
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/hull
	install -m 0755 $(BUILD)/bin/hull $(BUILD)/bin/hull-vmm $(BUILD)/bin/containerd-shim-hull-v2 $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(BUILD)/vmlinux $(BUILD)/hull-initrd.img $(DESTDIR)$(PREFIX)/share/hull/
	@echo "installed into $(DESTDIR)$(PREFIX); check the host with: hull check"

# Registers the installed hull in docker's daemon.json ("runtimes"), keeping the file's other
# settings; then `docker run --runtime hull ...` after dockerd reloads.
install-docker: install
	scripts/install-docker.sh $(DESTDIR)$(PREFIX)/bin/hull $(DOCKER_DAEMON_JSON)

lint: deps
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	fuzz/fuzz.sh check

# Runs every fuzz target for FUZZ_SECONDS (`make fuzz FUZZ_SECONDS=60`); fails on any crash.
fuzz:
	fuzz/fuzz.sh run $(FUZZ_SECONDS)

# Every fuzz target briefly, on its seeds and the committed regressions (fuzz/regressions/):
# part of `make test`, so a target that crashes on main fails CI.
FUZZ_SMOKE_SECONDS ?= 10
fuzz-smoke: deps
	fuzz/fuzz.sh run $(FUZZ_SMOKE_SECONDS)

# Tests that run on the plain host: every crate but hull-tests.
unit-test: deps
	cargo test $(CARGO_FLAGS) --workspace --exclude hull-tests

# The emulated KVM host itself: status, timeout, paths (every VM test relies on it).
testhost-selftest: deps
	tests/testhost/selftest

# Tests that need KVM: every test binary of hull-tests, in the emulated KVM host
# (or directly, on a machine with hardware virtualisation).
vm-test: build kernel initrd
	tests/run-vm-tests

# The same tests with every sandbox booted (start = "boot": the path of a host that turns
# templates off, and the one a damaged template falls back to). `make test` runs the CLI's
# test binary on it every time; vm-test-boot runs them all.
vm-test-boot-cli: build kernel initrd
	HULL_TEST_START=boot HULL_VM_TEST_ONLY=cli_vm tests/run-vm-tests

vm-test-boot: build kernel initrd
	HULL_TEST_START=boot tests/run-vm-tests

test: lint unit-test fuzz-smoke testhost-selftest vm-test vm-test-boot-cli

demo: build kernel initrd
	scripts/demo.sh

bench: build kernel initrd
	tests/bench/run

# The leak check at full length: 200 create/delete cycles through the CLI (`make test` runs 10),
# nothing may grow on the host (files, threads, processes, mounts, cgroups, state).
soak: build kernel initrd
	HULL_SOAK_CYCLES=$(SOAK_CYCLES) HULL_DOCKER_RUNS=$(DOCKER_RUNS) \
	  HULL_VM_TEST_BINARY_TIMEOUT=3600 HULL_VM_TEST_TIMEOUT=6000 \
	  tests/run-vm-tests create_delete_cycles_leave_nothing_growing docker_runs_containers_in_microvms

clean:
	rm -rf $(BUILD)
