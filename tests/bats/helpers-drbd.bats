#!/usr/bin/env bats
# block-drbd, installed, against the fake drbdadm (drbd-utils 9.22; DRBD 8.4 role format).

load helpers-common

setup_file() { xbh_setup_file; }
teardown_file() { xbh_teardown_file; }
setup() { fake_root drbdadm; }
teardown() { helpers_teardown; }

resource() { # RES MINOR [SETTINGS...]
    local res=$1 minor=$2 img
    img=$(new_image "$res.img")
    shift 2
    { echo "minors=\"$minor\""; echo "backing=$img"; printf '%s\n' "$@"; } > "$FAKE/state/drbd/$res.conf"
    echo "$img"
}

role() { cat "$FAKE/state/drbd/$1.role" 2>/dev/null || echo Secondary; }

@test "block-drbd: add promotes and publishes /dev/drbdN, remove demotes" {
    img=$(resource r0 7)
    be=$(new_vbd drbd:r0 w)
    run helper block-drbd "$be" add
    [ "$status" -eq 0 ]
    [ "$(xenstore-read "$be/physical-device-path")" = "$FAKE/dev/drbd7" ]
    [ "$(losetup -n -O BACK-FILE "$(loop_of "$FAKE/dev/drbd7")")" = "$img" ]
    [ "$(role r0)" = Primary ]
    run helper block-drbd "$be" remove
    [ "$status" -eq 0 ]
    [ "$(role r0)" = Secondary ]
}

@test "block-drbd: DRBD 8 Primary/Secondary output; no read-only sharing between guests" {
    resource r8 3 version=8 >/dev/null
    a=$(new_vbd r8 r)
    b=$(new_vbd r8 r)
    run helper block-drbd "$a" add
    [ "$status" -eq 0 ]
    run helper block-drbd "$b" add
    [ "$status" -eq 1 ]
    [ "$(xenstore-read "$b/hotplug-status")" = busy ]
    [[ "$(xenstore-read "$b/hotplug-error")" == "DRBD resource r8 ($FAKE/dev/drbd3) is mounted in a guest domain"* ]]
    [ "$(role r8)" = Primary ]
    run helper block-drbd "$a" remove
    [ "$status" -eq 0 ]
    [ "$(role r8)" = Secondary ]
}

@test "block-drbd: remove after the backend nodes are gone still demotes" {
    resource r0 7 >/dev/null
    be=$(new_vbd r0 w)
    run helper block-drbd "$be" add
    [ "$status" -eq 0 ]
    xenstore-rm "$be"
    run helper block-drbd "$be" remove
    [ "$status" -eq 0 ]
    [ "$(role r0)" = Secondary ]
    [ ! -f "$(record_of "$be")" ]
}
