# Shared by helpers-*.bats: the installed block-iscsi, block-nbd and block-drbd symlinks run
# as libxl runs them, pointed at a test root of fakes (tests/fakes) with the test-only
# XEN_BLOCK_HOTPLUG_TEST_ROOT. Nodes are checked with Debian's xenstore-* clients.

source "$BATS_TEST_DIRNAME/lib.bash"

# fake_root TOOL...: a fresh test root whose bin/ has exactly these fakes.
fake_root() {
    export FAKE="$BATS_TEST_TMPDIR/fake"
    mkdir -p "$FAKE"/{bin,state/iscsi,state/nbd,state/drbd,state/multipath,dev/disk/by-path,dev/mapper,sys/block}
    chmod 755 "$FAKE" # honoured only when nobody else may write it
    local t
    for t in "$@"; do ln -s "$REPO/tests/fakes/$t" "$FAKE/bin/$t"; done
}

helpers_teardown() {
    [ -n "${FAKE:-}" ] && "$REPO/tests/fakes/cleanup" "$FAKE"
    destroy_own_vbds
}

# helper SCRIPT BE ACTION: runs the installed SCRIPT as libxl does, with the fakes.
# WAIT=<seconds> sets XEN_BLOCK_HOTPLUG_WAIT.
helper() {
    env -i PATH="$PATH" XENSTORED_PATH="$XENSTORED_PATH" XEN_LOG_DIR="$XEN_LOG_DIR" \
        XEN_BLOCK_HOTPLUG_LOCK_DIR="$XEN_BLOCK_HOTPLUG_LOCK_DIR" \
        XEN_BLOCK_HOTPLUG_RECORD_DIR="$XEN_BLOCK_HOTPLUG_RECORD_DIR" \
        XEN_BLOCK_HOTPLUG_SYSLOG="$XEN_BLOCK_HOTPLUG_SYSLOG" \
        script="$SCRIPTS/$1" XENBUS_TYPE=vbd XENBUS_PATH="$2" XENBUS_BASE_PATH=backend \
        XEN_BLOCK_HOTPLUG_TEST_ROOT="$FAKE" ${WAIT:+XEN_BLOCK_HOTPLUG_WAIT=$WAIT} \
        "$SCRIPTS/$1" "$3" </dev/null
}

# The loop device behind a block special file the fakes made (same device number).
loop_of() {
    echo "/dev/loop$((16#$(stat -c %T "$1")))"
}

# The remove record of backend BE: in the file's record directory, named as
# `BackendPath::record_key` names it (the relative path, '/' as '-').
record_of() {
    echo "$XEN_BLOCK_HOTPLUG_RECORD_DIR/${1//\//-}"
}
