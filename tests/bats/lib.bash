# Shared set-up for the bats tests: the project installed with `make install` into a
# private root, a private real oxenstored, and libxl-style invocations. Nodes are checked
# with Debian's xenstore-* clients.

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)

# Installs the project once per file and starts a daemon for the file.
xbh_setup_file() {
    export XBH_ROOT="$BATS_FILE_TMPDIR/root"
    make -s -C "$REPO" install DESTDIR="$XBH_ROOT" OS=Linux >/dev/null
    export SCRIPTS="$XBH_ROOT/etc/xen/scripts"
    export XSD_DIR="$BATS_FILE_TMPDIR/xsd"
    "$REPO/tests/support/xenstored-run" "$XSD_DIR" >"$BATS_FILE_TMPDIR/xsd.log" 2>&1 &
    echo $! > "$BATS_FILE_TMPDIR/xsd.pid"
    export XENSTORED_PATH="$XSD_DIR/run/socket"
    export XEN_LOG_DIR="$BATS_FILE_TMPDIR/log"
    # Hermetic: the file's own lock and remove-record directories, and a syslog socket
    # nobody listens on (every line goes to the log file, on any host), through the
    # test-only variables of src/paths.rs. They are honoured only for directories owned
    # by us and writable by nobody else, hence the modes.
    local run="$BATS_FILE_TMPDIR/run"
    mkdir -p -m 755 "$run/xen-hotplug/xen-block-hotplug" "$BATS_FILE_TMPDIR/syslog"
    chmod 755 "$run" "$run/xen-hotplug" "$BATS_FILE_TMPDIR/syslog"
    export XEN_BLOCK_HOTPLUG_LOCK_DIR="$run/xen-hotplug"
    export XEN_BLOCK_HOTPLUG_RECORD_DIR="$run/xen-hotplug/xen-block-hotplug"
    export XEN_BLOCK_HOTPLUG_SYSLOG="$BATS_FILE_TMPDIR/syslog/socket"
    for _ in $(seq 100); do
        xenstore-read /tool/xenstored >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "oxenstored did not start" >&2
    return 1
}

xbh_teardown_file() {
    [ -f "$BATS_FILE_TMPDIR/xsd.pid" ] && kill "$(cat "$BATS_FILE_TMPDIR/xsd.pid")" 2>/dev/null
    wait 2>/dev/null || true
}

# A frontend domain id no other test holds: the allocator of the Rust tests
# (tests/it/common.rs `domids`), the next free id in a counter file locked with flock(2),
# wrapping within 1000..31999.
next_domid() {
    local f="${TMPDIR:-/tmp}/xen-block-hotplug-tests.domid"
    flock "$f" sh -c '
        n=$(cat "$1" 2>/dev/null)
        case "$n" in "" | *[!0-9]*) n=1000 ;; esac
        if [ "$n" -lt 1000 ] || [ "$n" -ge 32000 ]; then n=1000; fi
        echo $((n + 1)) > "$1"
        echo "$n"' sh "$f"
}

# new_vbd PARAMS MODE: writes a backend as libxl does (state 2) and prints its path.
new_vbd() {
    local fe
    fe=$(next_domid)
    local be="backend/vbd/$fe/51712"
    xenstore-write "$be/params" "$1" "$be/mode" "$2" "$be/frontend-id" "$fe" \
        "$be/state" 2 "$be/type" phy "$be/online" 1 "/local/domain/$fe/vm" "/vm/bats-$fe"
    echo "$be" >> "$BATS_TEST_TMPDIR/vbds"
    echo "$be"
}

# hotplug BE ACTION: runs the installed `block` the way libxl does.
hotplug() {
    env -i PATH="$PATH" XENSTORED_PATH="$XENSTORED_PATH" XEN_LOG_DIR="$XEN_LOG_DIR" \
        XEN_BLOCK_HOTPLUG_LOCK_DIR="$XEN_BLOCK_HOTPLUG_LOCK_DIR" \
        XEN_BLOCK_HOTPLUG_RECORD_DIR="$XEN_BLOCK_HOTPLUG_RECORD_DIR" \
        XEN_BLOCK_HOTPLUG_SYSLOG="$XEN_BLOCK_HOTPLUG_SYSLOG" \
        script="$SCRIPTS/block" XENBUS_TYPE=vbd XENBUS_PATH="$1" XENBUS_BASE_PATH=backend \
        "$SCRIPTS/block" "$2" </dev/null
}

# A sparse image file in the test's directory.
new_image() {
    local f="$BATS_TEST_TMPDIR/$1"
    truncate -s "${2:-8M}" "$f"
    echo "$f"
}

# Loop devices this test attached, detached in teardown only if still ours.
attach_loop() {
    local dev
    dev=$(losetup -f --show "$@")
    echo "$dev $(readlink -f "${@: -1}")" >> "$BATS_TEST_TMPDIR/loops"
    echo "$dev"
}

# What libxl does after remove: delete the backend directories (a stale backend would,
# rightly, still count in later sharing checks).
destroy_own_vbds() {
    [ -f "$BATS_TEST_TMPDIR/vbds" ] || return 0
    while read -r be; do xenstore-rm "$be" 2>/dev/null || true; done < "$BATS_TEST_TMPDIR/vbds"
}

detach_own_loops() {
    [ -f "$BATS_TEST_TMPDIR/loops" ] || return 0
    while read -r dev img; do
        [ "$(cat "/sys/block/${dev#/dev/}/loop/backing_file" 2>/dev/null)" = "$img" ] && losetup -d "$dev"
    done < "$BATS_TEST_TMPDIR/loops"
    return 0
}

hexdev() {
    stat -L -c '%t:%T' "$1"
}
