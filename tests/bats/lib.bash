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

# A frontend domain id unique to this test run.
next_domid() {
    local f="$BATS_FILE_TMPDIR/domid"
    local n
    n=$(cat "$f" 2>/dev/null || echo $((30000 + $$ % 1000)))
    echo $((n + 1)) > "$f"
    echo "$n"
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
