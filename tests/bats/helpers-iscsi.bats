#!/usr/bin/env bats
# block-iscsi, installed, against the fake iscsiadm (open-iscsi 2.1.8 formats).

load helpers-common

IQN=iqn.2003-01.org.linux-iscsi.dom0:disk1

setup_file() { xbh_setup_file; }
teardown_file() { xbh_teardown_file; }
setup() { fake_root iscsiadm multipath; }
teardown() { helpers_teardown; }

target() { # IQN LUN [OPTS]: a LUN on 127.0.0.1:3260 backed by a new image
    local img
    img=$(new_image "${1##*:}-$2.img")
    echo "127.0.0.1:3260 $1 $2 $img ${3:-}" >> "$FAKE/state/iscsi/targets"
    echo "$img"
}

@test "block-iscsi: add logs in and publishes the LUN, remove logs out" {
    img=$(target "$IQN" 0)
    be=$(new_vbd "iscsi:iqn=$IQN,portal=127.0.0.1" w)
    run helper block-iscsi "$be" add
    [ "$status" -eq 0 ]
    dev=$(xenstore-read "$be/physical-device-path")
    [ "$(losetup -n -O BACK-FILE "$dev")" = "$img" ]
    [ "$(xenstore-read "$be/physical-device")" = "$(hexdev "$dev")" ]
    [ "$(xenstore-read "$be/hotplug-status")" = connected ]
    grep -q " $IQN " "$FAKE/state/iscsi/sessions"
    [ -f "$(record_of "$be")" ]
    run helper block-iscsi "$be" remove
    [ "$status" -eq 0 ]
    [ ! -s "$FAKE/state/iscsi/sessions" ]
    [ -z "$(losetup -j "$img")" ]
    [ ! -f "$(record_of "$be")" ]
}

@test "block-iscsi: a LUN that never appears times out fast and is logged out" {
    target "$IQN" 0 nodev >/dev/null
    be=$(new_vbd "iqn=$IQN,portal=127.0.0.1" w)
    start=$(date +%s%N)
    WAIT=1 run helper block-iscsi "$be" add
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    [ "$status" -eq 1 ]
    [ "$ms" -lt 4000 ]
    [[ "$(xenstore-read "$be/hotplug-error")" == "timed out after 1 s waiting for $FAKE/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-$IQN-lun-0"* ]]
    [ "$(xenstore-read "$be/hotplug-status")" = error ]
    [ ! -s "$FAKE/state/iscsi/sessions" ]
}

@test "block-iscsi: disk10's session is not disk1's" {
    img1=$(target "$IQN" 0)
    target "${IQN}0" 0 >/dev/null
    XEN_BLOCK_HOTPLUG_TEST_ROOT=$FAKE "$FAKE/bin/iscsiadm" -m discovery -t st -p 127.0.0.1:3260 >/dev/null
    XEN_BLOCK_HOTPLUG_TEST_ROOT=$FAKE "$FAKE/bin/iscsiadm" -m node -T "${IQN}0" -p 127.0.0.1:3260 --login >/dev/null
    be=$(new_vbd "iqn=$IQN,portal=127.0.0.1" w)
    run helper block-iscsi "$be" add
    [ "$status" -eq 0 ]
    [ "$(losetup -n -O BACK-FILE "$(xenstore-read "$be/physical-device-path")")" = "$img1" ]
    run helper block-iscsi "$be" remove
    [ "$status" -eq 0 ]
    grep -q " ${IQN}0 " "$FAKE/state/iscsi/sessions"
    XEN_BLOCK_HOTPLUG_TEST_ROOT=$FAKE "$FAKE/bin/iscsiadm" -m node -T "${IQN}0" -p 127.0.0.1:3260 --logout >/dev/null
}

@test "block-iscsi: a missing iscsiadm is named in hotplug-error" {
    rm "$FAKE/bin/iscsiadm"
    be=$(new_vbd "iqn=$IQN,portal=127.0.0.1" w)
    run helper block-iscsi "$be" add
    [ "$status" -eq 1 ]
    [ "$(xenstore-read "$be/hotplug-error")" = "iscsiadm not found (looked in $FAKE/bin): install it, or fix PATH" ]
}

@test "block-iscsi: bad params name the key" {
    be=$(new_vbd "iqn=$IQN,portal=127.0.0.1,lun=x" w)
    run helper block-iscsi "$be" add
    [ "$status" -eq 1 ]
    [ "$(xenstore-read "$be/hotplug-error")" = 'params key lun: "x" is not a LUN number' ]
    [ ! -e "$FAKE/calls.log" ]
}

@test "block-iscsi: remove works after the backend nodes are gone" {
    img=$(target "$IQN" 0)
    be=$(new_vbd "iqn=$IQN,portal=127.0.0.1" w)
    run helper block-iscsi "$be" add
    [ "$status" -eq 0 ]
    xenstore-rm "$be"
    run helper block-iscsi "$be" remove
    [ "$status" -eq 0 ]
    [ ! -s "$FAKE/state/iscsi/sessions" ]
    [ -z "$(losetup -j "$img")" ]
}
