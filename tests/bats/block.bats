#!/usr/bin/env bats
# The installed `block` symlink, run as libxl runs it, checked with Debian's xenstore-*.

load lib

setup_file() { xbh_setup_file; }
teardown_file() { xbh_teardown_file; }
teardown() { destroy_own_vbds; detach_own_loops; }

@test "make install links block, block-iscsi, block-nbd, block-drbd to one binary through its personality links" {
    for n in block block-iscsi block-nbd block-drbd; do
        [ -L "$SCRIPTS/$n" ]
        [ "$(readlink "$SCRIPTS/$n")" = "../../../usr/libexec/xen-block-hotplug/$n" ]
        [ "$(readlink -f "$SCRIPTS/$n")" = "$XBH_ROOT/usr/libexec/xen-block-hotplug/xen-block-hotplug" ]
    done
    [ -x "$XBH_ROOT/usr/libexec/xen-block-hotplug/xen-block-hotplug" ]
    run "$XBH_ROOT/usr/libexec/xen-block-hotplug/xen-block-hotplug" --version
    [ "$status" -eq 0 ]
    [[ "$output" == xen-block-hotplug* ]]
}

@test "phy: add writes the nodes, remove leaves the device" {
    img=$(new_image a.img)
    dev=$(attach_loop "$img")
    be=$(new_vbd "$dev" w)
    run hotplug "$be" add
    [ "$status" -eq 0 ]
    [ "$(xenstore-read "$be/physical-device")" = "$(hexdev "$dev")" ]
    [ "$(xenstore-read "$be/physical-device-path")" = "$dev" ]
    [ "$(xenstore-read "$be/hotplug-status")" = connected ]
    run xenstore-read "$be/hotplug-error"
    [ "$status" -ne 0 ]
    run hotplug "$be" remove
    [ "$status" -eq 0 ]
    [ "$(cat "/sys/block/${dev#/dev/}/loop/backing_file")" = "$img" ]
}

@test "file: a loop device per attach, read-only for mode r, detached on remove" {
    img=$(new_image f.img)
    be=$(new_vbd "$img" r)
    run hotplug "$be" add
    [ "$status" -eq 0 ]
    node=$(xenstore-read "$be/node")
    [ "$(xenstore-read "$be/physical-device-path")" = "$node" ]
    [ "$(xenstore-read "$be/physical-device")" = "$(hexdev "$node")" ]
    [ "$(cat "/sys/block/${node#/dev/}/ro")" = 1 ]
    [ "$(losetup -n -O BACK-FILE "$node")" = "$img" ]
    run hotplug "$be" remove
    [ "$status" -eq 0 ]
    [ -z "$(losetup -j "$img")" ]
}

@test "the same image read-write for two guests: the second is busy and says who" {
    img=$(new_image s.img)
    a=$(new_vbd "$img" w)
    b=$(new_vbd "$img" w)
    run hotplug "$a" add
    [ "$status" -eq 0 ]
    run hotplug "$b" add
    [ "$status" -eq 1 ]
    [ "$(xenstore-read "$b/hotplug-status")" = busy ]
    xenstore-read "$b/hotplug-error" | grep -q "is loopback-mounted through /dev/loop"
    xenstore-read "$b/hotplug-error" | grep -q "domain $(xenstore-read "$a/frontend-id")"
    run xenstore-read "$b/physical-device"
    [ "$status" -ne 0 ]
    [ "$(losetup -j "$img" | wc -l)" -eq 1 ]
    run hotplug "$a" remove
    [ "$status" -eq 0 ]
    [ -z "$(losetup -j "$img")" ]
}

@test "a params that is neither file nor device: error, never connected" {
    be=$(new_vbd /nonexistent/disk.img w)
    run hotplug "$be" add
    [ "$status" -eq 1 ]
    [ "$(xenstore-read "$be/hotplug-status")" = error ]
    xenstore-read "$be/hotplug-error" | grep -q "does not exist"
}

@test "remove works after the backend is gone" {
    img=$(new_image g.img)
    be=$(new_vbd "$img" w)
    run hotplug "$be" add
    [ "$status" -eq 0 ]
    xenstore-rm "$be"
    run hotplug "$be" remove
    [ "$status" -eq 0 ]
    [ -z "$(losetup -j "$img")" ]
}

@test "invalid command: exit 1 and hotplug-error" {
    be=$(new_vbd /dev/null w)
    run hotplug "$be" online
    [ "$status" -eq 1 ]
    xenstore-read "$be/hotplug-error" | grep -q 'invalid command "online"'
    [ "$(xenstore-read "$be/hotplug-status")" = error ]
}

@test "log lines go to the hotplug log with the invoked path as prefix" {
    be=$(new_vbd /nonexistent w)
    run hotplug "$be" add
    [ "$status" -eq 1 ]
    grep -q "^$SCRIPTS/block: params \"/nonexistent\" is a path that does not exist" "$XEN_LOG_DIR/xen-hotplug.log"
}

@test "a backend libxl already removed: add and remove exit 1, logged, not recreated" {
    fe=$(next_domid)
    for action in add remove; do
        run hotplug "backend/vbd/$fe/51712" "$action"
        [ "$status" -eq 1 ]
        run xenstore-ls "backend/vbd/$fe"
        [ "$status" -ne 0 ]
    done
    [ "$(grep -c "^$SCRIPTS/block: backend backend/vbd/$fe/51712 was removed" "$XEN_LOG_DIR/xen-hotplug.log")" -ge 2 ]
}

@test "an image QEMU serves read-write is busy for another guest, naming QEMU and its domain" {
    img=$(new_image q.img)
    fe=$(next_domid)
    q="backend/qdisk/$fe/51712"
    xenstore-write "$q/params" "aio:$img" "$q/mode" w "$q/state" 4 "/local/domain/$fe/vm" "/vm/bats-$fe"
    echo "$q" >> "$BATS_TEST_TMPDIR/vbds"
    be=$(new_vbd "$img" w)
    run hotplug "$be" add
    [ "$status" -eq 1 ]
    [ "$(xenstore-read "$be/hotplug-status")" = busy ]
    xenstore-read "$be/hotplug-error" | grep -q "(domain $fe, $q, served by QEMU)"
    [ -z "$(losetup -j "$img")" ]
}
