# xen-block-hotplug: build, install, test, demo.
#
#   make                 release build
#   make install         binary + script symlinks (DESTDIR, PREFIX, XEN_SCRIPT_DIR, OS)
#   make uninstall       undo make install (restores saved upstream scripts)
#   make test            install test prerequisites, then lints, cargo tests and bats tests
#   make demo            a private oxenstored, an image file, block add, block remove
#   make e2e             real Xen + dom0 under qemu (TCG), attaching disks through us
#                        (XEN=4.17: Debian 12, the default; XEN=4.20: Debian 13)
#   make e2e-latency     xl block-attach + detach in that real Xen, ours vs Debian's block
#   make bench           speed and memory against Debian's upstream scripts
#   make stress          storms, kills and hostile input at large sizes, with figures
#   make fuzz            every cargo-fuzz target for FUZZ_SECS (600) seconds

OS ?= $(shell uname -s)
# Where add-on software lives on that OS (Linux /usr, NetBSD /usr/pkg, FreeBSD /usr/local).
PREFIX ?= $(or $(shell cat hotplug/$(OS)/prefix 2>/dev/null),/usr)
LIBEXECDIR ?= $(PREFIX)/libexec/xen-block-hotplug
XEN_SCRIPT_DIR ?= $(shell cat hotplug/$(OS)/script-dir 2>/dev/null)
LINKS := $(shell cat hotplug/$(OS)/links 2>/dev/null)
CARGO ?= cargo
BIN := target/release/xen-block-hotplug
FUZZ_SECS ?= 600
FUZZ_SMOKE_SECS ?= 4
# Xen (and Debian release) of `make e2e`: 4.17 = Debian 12, 4.20 = Debian 13 (tests/e2e/README.md)
XEN ?= 4.17

.PHONY: all build install uninstall test test-deps lint cargo-test bats fuzz-smoke demo e2e e2e-latency bench clean \
	stress fuzz

all: build

build:
	XEN_SCRIPT_DIR=$(XEN_SCRIPT_DIR) $(CARGO) build --release --locked

install: build
	@test -n "$(XEN_SCRIPT_DIR)" || { echo "unknown OS '$(OS)': no hotplug/$(OS)/script-dir" >&2; exit 1; }
	install -d $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(XEN_SCRIPT_DIR)
	install -m 0755 $(BIN) $(DESTDIR)$(LIBEXECDIR)/xen-block-hotplug
	@# Relative links, so the tree works under DESTDIR (initramfs, chroot) as installed.
	@set -e; up=$$(echo "$(XEN_SCRIPT_DIR)" | sed -e 's|/[^/]*|../|g'); \
	for n in $(LINKS); do \
	    t=$(DESTDIR)$(XEN_SCRIPT_DIR)/$$n; \
	    if [ -f "$$t" ] && [ ! -L "$$t" ]; then mv "$$t" "$$t.upstream"; echo "saved $$t as $$t.upstream"; fi; \
	    ln -sfn "$$up$$(echo "$(LIBEXECDIR)" | sed 's|^/||')/xen-block-hotplug" "$$t"; echo "linked $$t"; \
	done
	@if [ -f hotplug/$(OS)/install-extra ]; then sh hotplug/$(OS)/install-extra "$(DESTDIR)" "$(XEN_SCRIPT_DIR)"; fi

uninstall:
	@set -e; for n in $(LINKS); do \
	    t=$(DESTDIR)$(XEN_SCRIPT_DIR)/$$n; \
	    if [ -L "$$t" ]; then rm -f "$$t"; fi; \
	    if [ -f "$$t.upstream" ]; then mv "$$t.upstream" "$$t"; echo "restored $$t"; fi; \
	done
	rm -f $(DESTDIR)$(LIBEXECDIR)/xen-block-hotplug
	-rmdir $(DESTDIR)$(LIBEXECDIR) 2>/dev/null

test-deps:
	tests/support/install-deps

lint: test-deps
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	@if [ -x tests/support/cross-check ]; then tests/support/cross-check; fi

cargo-test: test-deps
	$(CARGO) test --locked -- --test-threads=4

bats: test-deps
	$(CARGO) build --locked
	bats --print-output-on-failure tests/bats

# A short run of every fuzz target (about 5 s each; the first build takes minutes).
fuzz-smoke:
	tests/support/fuzz $(FUZZ_SMOKE_SECS)

test: lint cargo-test bats fuzz-smoke

# The reliability tests at large sizes (storms, kills, hostile input), with figures.
stress: test-deps
	tests/support/stress

# Every fuzz target for FUZZ_SECS seconds (default 600).
fuzz:
	tests/support/fuzz $(FUZZ_SECS)

demo:
	tests/support/install-deps --demo
	$(CARGO) build --release --locked
	tests/support/demo $(BIN)

e2e:
	$(MAKE) install DESTDIR=$(CURDIR)/target/e2e-install OS=Linux
	tests/e2e/run.sh --install-tree $(CURDIR)/target/e2e-install --xen $(XEN)

# Not in CI: several minutes per Xen version under TCG. Writes its section of BENCHMARKS.md.
e2e-latency:
	$(MAKE) install DESTDIR=$(CURDIR)/target/e2e-install OS=Linux
	@# exit 1 = some sample failed (e.g. libxl's 40 s timeout): the table still records it
	rc=0; tests/e2e/run.sh --install-tree $(CURDIR)/target/e2e-install --xen $(XEN) \
		--only latency,leftovers --timeout 3000 --log $(CURDIR)/target/e2e-latency-$(XEN).log || rc=$$?; \
	if [ $$rc -le 1 ]; then python3 tests/e2e/e2e_tools.py latency-md \
		$(CURDIR)/target/e2e-latency-$(XEN).log $(XEN) BENCHMARKS.md || rc=3; fi; exit $$rc

bench:
	tests/support/install-deps
	$(CARGO) build --release --locked
	bench/run

clean:
	$(CARGO) clean
