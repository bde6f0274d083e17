#!/usr/bin/env bats
# block-nbd, installed, against the fake nbd-client (nbd 3.24 command line).

load helpers-common

setup_file() { xbh_setup_file; }
teardown_file() { xbh_teardown_file; }
setup() {
    fake_root nbd-client
    for i in 0 1 2 3; do mkdir -p "$FAKE/sys/block/nbd$i"; echo 0 > "$FAKE/sys/block/nbd$i/size"; done
}
teardown() { helpers_teardown; }

export_img() { # HOST PORT EXPORT [OPTS]
    local img
    img=$(new_image "$3.img")
    echo "$1 $2 $3 $img ${4:-}" >> "$FAKE/state/nbd/servers"
    echo "$img"
}

@test "block-nbd: the historical '<host> <port>' form connects a free device read-only for mode r" {
    img=$(export_img 127.0.0.1 20004 -)
    echo 77 > "$FAKE/sys/block/nbd0/pid"
    be=$(new_vbd "nbd:127.0.0.1 20004" r)
    run helper block-nbd "$be" add
    [ "$status" -eq 0 ]
    [ "$(xenstore-read "$be/node")" = "$FAKE/dev/nbd1" ]
    lp=$(loop_of "$FAKE/dev/nbd1")
    [ "$(losetup -n -O BACK-FILE "$lp")" = "$img" ]
    [ "$(cat "/sys/block/${lp#/dev/}/ro")" = 1 ]
    [ "$(xenstore-read "$be/physical-device")" = "$(hexdev "$lp")" ]
    grep -qx "nbd-client -R 127.0.0.1 20004 $FAKE/dev/nbd1" "$FAKE/calls.log"
    run helper block-nbd "$be" remove
    [ "$status" -eq 0 ]
    [ ! -e "$FAKE/sys/block/nbd1/pid" ]
    [ "$(cat "$FAKE/sys/block/nbd0/pid")" = 77 ]
    [ -z "$(losetup -j "$img")" ]
}

@test "block-nbd: a device that never gets a size times out and is disconnected" {
    export_img 127.0.0.1 10809 disk1 nosize >/dev/null
    be=$(new_vbd "nbd://127.0.0.1/disk1" w)
    WAIT=1 run helper block-nbd "$be" add
    [ "$status" -eq 1 ]
    [[ "$(xenstore-read "$be/hotplug-error")" == "timed out after 1 s waiting for $FAKE/dev/nbd0 to get a size"* ]]
    [ ! -e "$FAKE/sys/block/nbd0/pid" ]
}

@test "block-nbd: remove leaves a device someone else reconnected" {
    export_img 127.0.0.1 10809 disk1 >/dev/null
    other=$(export_img 127.0.0.1 10809 other)
    be=$(new_vbd "nbd://127.0.0.1:10809/disk1" w)
    run helper block-nbd "$be" add
    [ "$status" -eq 0 ]
    XEN_BLOCK_HOTPLUG_TEST_ROOT=$FAKE "$FAKE/bin/nbd-client" -d "$FAKE/dev/nbd0"
    XEN_BLOCK_HOTPLUG_TEST_ROOT=$FAKE "$FAKE/bin/nbd-client" -N other 127.0.0.1 10809 "$FAKE/dev/nbd0" 2>/dev/null
    run helper block-nbd "$be" remove
    [ "$status" -eq 0 ]
    [ -e "$FAKE/sys/block/nbd0/pid" ]
    [ "$(losetup -n -O BACK-FILE "$(loop_of "$FAKE/dev/nbd0")")" = "$other" ]
    [ ! -f "$(record_of "$be")" ]
}

@test "block-nbd: bad params and a missing nbd-client" {
    be=$(new_vbd "nbds://127.0.0.1/disk1" w)
    run helper block-nbd "$be" add
    [ "$status" -eq 1 ]
    [[ "$(xenstore-read "$be/hotplug-error")" == *"TLS NBD URIs are not supported"* ]]
    rm "$FAKE/bin/nbd-client"
    be=$(new_vbd "nbd://127.0.0.1/disk1" w)
    run helper block-nbd "$be" add
    [ "$status" -eq 1 ]
    [[ "$(xenstore-read "$be/hotplug-error")" == "nbd-client not found (looked in $FAKE/bin)"* ]]
}
