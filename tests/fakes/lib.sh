# Shared by the fake storage tools (tests only). Each fake keeps its state under
# $XEN_BLOCK_HOTPLUG_TEST_ROOT/state, logs every call to $XEN_BLOCK_HOTPLUG_TEST_ROOT/calls.log,
# and backs the disks it "attaches" with real loop devices over the test's image files (or
# with a block device the test names), so that the binary's sharing check, nodes and
# remove work on real devices. Nothing here touches a device it did not create.

ROOT=${XEN_BLOCK_HOTPLUG_TEST_ROOT:?the fakes run only under XEN_BLOCK_HOTPLUG_TEST_ROOT}
STATE=$ROOT/state
mkdir -p "$STATE"
printf '%s\n' "$(basename "$0") $*" >> "$ROOT/calls.log"

# backing_dev FILE_OR_BLOCKDEV [ro]: a block device for the backing, a new loop device over
# a file (recorded in $STATE/loops for detach_dev and the clean-up).
backing_dev() {
    if [ -b "$1" ]; then
        echo "$1"
        return 0
    fi
    local dev
    if [ "${2:-}" = ro ]; then
        dev=$(losetup -f --show -r "$1") || return 1
    else
        dev=$(losetup -f --show "$1") || return 1
    fi
    echo "$dev $(readlink -f "$1")" >> "$STATE/loops"
    echo "$dev"
}

# detach_dev DEV: detaches DEV only if this fake attached it and it is still bound to the
# same file.
detach_dev() {
    local dev=$1 d f
    [ -f "$STATE/loops" ] || return 0
    while read -r d f; do
        if [ "$d" = "$dev" ]; then
            [ "$(cat "/sys/block/${d#/dev/}/loop/backing_file" 2>/dev/null)" = "$f" ] &&
                losetup -d "$d"
        fi
    done < "$STATE/loops"
    grep -v "^$dev " "$STATE/loops" > "$STATE/loops.new" || true
    mv "$STATE/loops.new" "$STATE/loops"
}

# node_like NODE DEV: a block special file NODE with DEV's device number.
node_like() {
    local maj min
    maj=$((16#$(stat -L -c %t "$2")))
    min=$((16#$(stat -L -c %T "$2")))
    rm -f "$1"
    mkdir -p "$(dirname "$1")"
    mknod "$1" b "$maj" "$min"
}

# dev_decimal DEV: major:minor in decimal, as multipath and sysfs print it.
dev_decimal() {
    echo "$((16#$(stat -L -c %t "$1"))):$((16#$(stat -L -c %T "$1")))"
}
