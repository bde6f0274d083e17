#!/usr/bin/env bats
# The operator commands of the installed binary (`make install` layout), against a private
# oxenstored, with the installed `block` planting the host state. Hermetic as every bats
# file (lib.bash `xbh_setup_file`): the file's own lock and record directories, so other
# tests' records on this host are neither reported nor swept.

load lib

setup_file() {
    xbh_setup_file
    export XBH="$XBH_ROOT/usr/libexec/xen-block-hotplug/xen-block-hotplug"
}
teardown_file() { xbh_teardown_file; }
teardown() { destroy_own_vbds; detach_own_loops; }

@test "status: a file disk attached by the installed block, listed with its loop and record" {
    img=$(new_image s.img)
    be=$(new_vbd "$img" w)
    run hotplug "$be" add
    [ "$status" -eq 0 ]
    node=$(xenstore-read "$be/node")
    echo "$node $img" >> "$BATS_TEST_TMPDIR/loops"
    run "$XBH" status --json
    [ "$status" -eq 0 ]
    [ "$(jq -r --arg p "$be" '.backends[] | select(.path == $p) | .backing_file' <<<"$output")" = "$img" ]
    [ "$(jq -r --arg p "$be" '.backends[] | select(.path == $p) | .record' <<<"$output")" = true ]
    [ "$(jq '.problems | length' <<<"$output")" -eq 0 ]
    run "$XBH" status
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "No problems." ]
    [[ "${lines[1]}" == BACKEND* ]]
    run hotplug "$be" remove
    [ "$status" -eq 0 ]
}

@test "status and sweep: an orphan loop is reported, then detached by sweep --apply" {
    img=$(new_image o.img)
    be=$(new_vbd "$img" w)
    run hotplug "$be" add
    [ "$status" -eq 0 ]
    node=$(xenstore-read "$be/node")
    echo "$node $img" >> "$BATS_TEST_TMPDIR/loops"
    xenstore-rm "$be"
    run "$XBH" status --json
    [ "$status" -eq 1 ]
    [ "$(jq -r '.problems[0].kind' <<<"$output")" = orphan-loop ]
    [ "$(jq -r '.problems[0].loop' <<<"$output")" = "$node" ]
    run "$XBH" sweep
    [ "$status" -eq 1 ]
    [ "$(cat "/sys/block/${node#/dev/}/loop/backing_file")" = "$img" ]
    run "$XBH" sweep --apply
    [ "$status" -eq 0 ]
    [[ "$output" == *"detached $node"* ]]
    [ -z "$(losetup -n -O NAME -j "$img")" ]
    run "$XBH" status
    [ "$status" -eq 0 ]
}

@test "explain: a phy disk another guest writes is busy, a fresh image is grantable" {
    img=$(new_image e.img)
    dev=$(attach_loop "$img")
    be=$(new_vbd "$dev" w)
    run hotplug "$be" add
    [ "$status" -eq 0 ]
    fe=$(xenstore-read "$be/frontend-id")
    run "$XBH" explain "$dev" --mode r --json
    [ "$status" -eq 1 ]
    [ "$(jq -r '.holders[0].kind' <<<"$output")" = guest ]
    [ "$(jq -r '.holders[0].domain' <<<"$output")" = "$fe" ]
    run "$XBH" explain "$dev" --frontend "$fe"
    [ "$status" -eq 0 ]
    run "$XBH" explain "$(new_image free.img)" --json
    [ "$status" -eq 0 ]
    [ "$(jq -r .grantable <<<"$output")" = true ]
    run "$XBH" explain "$BATS_TEST_TMPDIR"
    [ "$status" -eq 2 ]
    [[ "$output" == *"a directory"* ]]
}

@test "no daemon: exit 2 with the reason, and {\"error\"} with --json" {
    run env XENSTORED_PATH=/nonexistent/socket "$XBH" status --json
    [ "$status" -eq 2 ]
    [[ "$output" == *"cannot connect to xenstore"* ]]
    [[ "$output" == *'{"error":'* ]]
}
