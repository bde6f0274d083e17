#!/usr/bin/env bats
# Cluster leases (issue 15) on the installed layout: the `lease` commands of the installed
# binary and the installed `block` symlink with LEASES=sanlock, against one real sanlock
# daemon (its own SANLOCK_RUN_DIR, unprivileged, no watchdog) and a lease directory on
# ext4 on a loop device. Several hosts are covered by tests/it/lease.rs. The local lease
# state is in the file's own lock directory (lib.bash), under xen-block-hotplug-lease/.

load lib

BIN_INSTALLED() { echo "$XBH_ROOT/usr/libexec/xen-block-hotplug/xen-block-hotplug"; }

setup_file() {
    xbh_setup_file
    export POOL="$BATS_FILE_TMPDIR/pool"
    mkdir -p "$POOL/mnt" "$POOL/run"
    truncate -s 32M "$POOL/ext4.img"
    mkfs.ext4 -q -F "$POOL/ext4.img"
    losetup -f --show "$POOL/ext4.img" > "$POOL/loop"
    mount "$(cat "$POOL/loop")" "$POOL/mnt"
    mkdir "$POOL/mnt/leases"
    export LS="bats$$"
    export CONF="$POOL/host1.conf"
    printf 'LEASES=sanlock\nLEASE_LOCKSPACE=%s\nLEASE_DIR=%s\nLEASE_HOST_ID=1\nLEASE_IO_TIMEOUT=1\n' \
        "$LS" "$POOL/mnt/leases" > "$CONF"
    chmod 644 "$CONF"
    export SANLOCK_RUN_DIR="$POOL/run"
    SANLOCK_PRIVILEGED=0 sanlock daemon -D -w 0 -l 0 -h 0 -U root -G root \
        >"$POOL/daemon.log" 2>&1 &
    echo $! > "$POOL/daemon.pid"
    for _ in $(seq 200); do
        sanlock client status >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "sanlock did not start" >&2
    return 1
}

teardown_file() {
    if [ -f "$POOL/daemon.pid" ]; then
        pid=$(cat "$POOL/daemon.pid")
        sanlock shutdown -f 1 >/dev/null 2>&1 || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    umount "$POOL/mnt" 2>/dev/null || true
    [ -f "$POOL/loop" ] && losetup -d "$(cat "$POOL/loop")" 2>/dev/null
    xbh_teardown_file
}

teardown() { destroy_own_vbds; detach_own_loops; }

lease() { XEN_BLOCK_HOTPLUG_CONF="$CONF" "$(BIN_INSTALLED)" lease "$@"; }

# The installed `block`, as libxl runs it, with this host's lease configuration.
hotplug_leased() {
    env -i PATH="$PATH" XENSTORED_PATH="$XENSTORED_PATH" XEN_LOG_DIR="$XEN_LOG_DIR" \
        XEN_BLOCK_HOTPLUG_LOCK_DIR="$XEN_BLOCK_HOTPLUG_LOCK_DIR" \
        XEN_BLOCK_HOTPLUG_RECORD_DIR="$XEN_BLOCK_HOTPLUG_RECORD_DIR" \
        XEN_BLOCK_HOTPLUG_SYSLOG="$XEN_BLOCK_HOTPLUG_SYSLOG" \
        XEN_BLOCK_HOTPLUG_CONF="$CONF" SANLOCK_RUN_DIR="$SANLOCK_RUN_DIR" \
        script="$SCRIPTS/block" XENBUS_TYPE=vbd XENBUS_PATH="$1" XENBUS_BASE_PATH=backend \
        "$SCRIPTS/block" "$2" </dev/null
}

@test "lease init once per pool, join is idempotent" {
    run lease init
    [ "$status" -eq 0 ]
    [ -f "$POOL/mnt/leases/$LS.lockspace" ]
    run lease init
    [ "$status" -eq 1 ]
    [[ "$output" == *"exists"* ]]
    run lease join
    [ "$status" -eq 0 ]
    [[ "$output" == *"joined lockspace $LS as host id 1"* ]]
    run lease join
    [ "$status" -eq 0 ]
    [[ "$output" == *"already joined"* ]]
    run lease status --json
    [ "$status" -eq 0 ]
    [[ "$output" == *'"state":"joined"'* ]]
    [[ "$output" == *'"leases":[]'* ]]
}

@test "add w takes an exclusive lease, leave is refused while held, remove releases it" {
    img=$(new_image l.img)
    be=$(new_vbd "$img" w)
    run hotplug_leased "$be" add
    [ "$status" -eq 0 ]
    [ "$(xenstore-read "$be/hotplug-status")" = connected ]
    hash=$(printf %s "$img" | sha256sum | cut -d' ' -f1)
    [ -f "$POOL/mnt/leases/$hash" ]
    grep -q "^vm=bats-" "$POOL/mnt/leases/$hash.owner-1"
    run lease status --json "$img"
    [ "$status" -eq 0 ]
    [[ "$output" == *"\"hash\":\"$hash\",\"kind\":\"exclusive\",\"phase\":\"held\""* ]]
    [[ "$output" == *'"holders":[{"host_id":1,"vms":["bats-'* ]]
    run lease leave
    [ "$status" -eq 1 ]
    [[ "$output" == *"holds 1 lease"* ]]
    run hotplug_leased "$be" remove
    [ "$status" -eq 0 ]
    [ ! -e "$POOL/mnt/leases/$hash.owner-1" ]
    run lease status --json "$img"
    [[ "$output" == *'"leases":[]'* ]]
    [[ "$output" == *'"holders":[]'* ]]
}

@test "not joined: add is an error naming the fix, nothing attached" {
    run lease leave
    [ "$status" -eq 0 ]
    img=$(new_image n.img)
    be=$(new_vbd "$img" w)
    run hotplug_leased "$be" add
    [ "$status" -eq 1 ]
    [ "$(xenstore-read "$be/hotplug-status")" = error ]
    [[ "$(xenstore-read "$be/hotplug-error")" == *"has not joined lockspace $LS"*"lease join"* ]]
    run xenstore-read "$be/physical-device"
    [ "$status" -ne 0 ]
    [ -z "$(losetup -n -j "$img")" ]
}
