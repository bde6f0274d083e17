#!/usr/bin/env bats
# make install and make uninstall over a copy of Debian's scripts in a private root: the
# installed binary's own activate/deactivate do the switch (one implementation with the
# package), the originals come back exactly, and a foreign script stops make install
# with nothing changed.

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)

setup() {
    ROOT="$BATS_TEST_TMPDIR/root"
    S="$ROOT/etc/xen/scripts"
    mkdir -p "$S"
    # Debian's xen-utils-common scripts (make test-deps installs them), as shipped
    # (the kept copy when another test has activated this host's scripts meanwhile)
    local n src
    for n in block block-iscsi block-nbd block-common.sh; do
        src=/etc/xen/scripts/$n
        [ -L "$src" ] && src=$src.upstream
        cp -a "$src" "$S/$n"
    done
    # no dpkg database in this root: judged by content
    for n in block block-iscsi block-nbd; do stat -c %i "$S/$n" > "$BATS_TEST_TMPDIR/ino.$n"; done
    BEFORE=$(state)
}

# type, mode, mtime, md5 or link text of the four names and their kept copies
state() {
    local n f
    for n in block block-iscsi block-nbd block-drbd block-common.sh; do
        for f in "$S/$n" "$S/$n.upstream"; do
            if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"
            elif [ -e "$f" ]; then echo "$f $(stat -c '%F %a %Y' "$f") $(md5sum <"$f" | cut -c1-32)"
            else echo "$f absent"; fi
        done
    done
}

@test "make install keeps Debian's scripts, make uninstall puts them back exactly" {
    run make -s -C "$REPO" install DESTDIR="$ROOT" OS=Linux
    [ "$status" -eq 0 ]
    for n in block block-iscsi block-nbd; do
        [ "$(readlink "$S/$n")" = "../../../usr/libexec/xen-block-hotplug/$n" ]
        [ "$(stat -c %i "$S/$n.upstream")" = "$(cat "$BATS_TEST_TMPDIR/ino.$n")" ]
    done
    # make install links every name (block-drbd too, with nothing kept)
    [ "$(readlink "$S/block-drbd")" = ../../../usr/libexec/xen-block-hotplug/block-drbd ]
    [ ! -e "$S/block-drbd.upstream" ]
    [ "$(readlink "$ROOT/usr/sbin/xen-block-hotplug")" = ../libexec/xen-block-hotplug/xen-block-hotplug ]
    [ -s "$ROOT/usr/share/man/man8/xen-block-hotplug.8" ]
    ACTIVE=$(state)

    run make -s -C "$REPO" install DESTDIR="$ROOT" OS=Linux
    [ "$status" -eq 0 ]
    [ "$(state)" = "$ACTIVE" ]

    run make -s -C "$REPO" uninstall DESTDIR="$ROOT" OS=Linux
    [ "$status" -eq 0 ]
    [ "$(state)" = "$BEFORE" ]
    [ ! -e "$ROOT/usr/libexec/xen-block-hotplug" ]
    [ ! -e "$ROOT/usr/sbin/xen-block-hotplug" ]
    [ ! -e "$ROOT/usr/share/man/man8/xen-block-hotplug.8" ]
}

@test "make install refuses a script that is neither Debian's nor ours, changing nothing" {
    printf '#!/bin/sh\necho site-specific\n' > "$S/block-nbd"
    chmod 755 "$S/block-nbd"
    BEFORE=$(state)
    run make -s -C "$REPO" install DESTDIR="$ROOT" OS=Linux
    [ "$status" -ne 0 ]
    [[ "$output" == *"etc/xen/scripts/block-nbd: not a Xen hotplug script"* ]]
    [[ "$output" == *"nothing changed"* ]]
    [ "$(state)" = "$BEFORE" ]
    # ACTIVATE_FLAGS=--force takes it, and uninstall gives it back
    run make -s -C "$REPO" install DESTDIR="$ROOT" OS=Linux ACTIVATE_FLAGS=--force
    [ "$status" -eq 0 ]
    [ "$(readlink "$S/block-nbd")" = ../../../usr/libexec/xen-block-hotplug/block-nbd ]
    run make -s -C "$REPO" uninstall DESTDIR="$ROOT" OS=Linux
    [ "$status" -eq 0 ]
    [ "$(state)" = "$BEFORE" ]
}
