# shellcheck shell=bash
# Sourced by run.sh. Builds the driver domain of the `driver-*` scenarios (issue 11 point
# 6): a PV domain running Debian's kernel with xen-blkback, `xl devd`, and the install
# tree under test, so that disks whose `backend=` is that domain are served by our `block`
# inside it, talking to xenstore through the xenbus device.
#
# build_driver_domain takes everything from the dom0 tree $R that build_dom0 made (Xen
# tools, libraries, modules, the install tree) and appends a second newc archive to
# $WORK/dom0.cpio holding /e2e/dd.cpio (the driver domain's initramfs) and
# /e2e/driver-scenarios.sh. The kernel's initramfs unpacker reads concatenated archives.

# dd_put SRC-IN-R: copy a file of the dom0 tree (dereferenced) to the same place in $D
dd_put() {
	mkdir -p "$D/$(dirname "$1")"
	cp -L "$R/$1" "$D/$1"
}

build_driver_domain() {
	local D=$WORK/dd P=$WORK/dd-payload f xendir lib
	# not needed when --only names no driver scenario
	case ",$ONLY," in ,, | *,driver-*) ;; *) return 0 ;; esac
	rm -rf "$D" "$P"
	mkdir -p "$D"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc/xen,proc,sys,dev,run,tmp,root,srv,var/log,var/lib/xen,lib/modules/e2e}
	ln -s usr/bin "$D/bin"
	ln -s usr/sbin "$D/sbin"
	ln -s usr/lib "$D/lib"
	ln -s usr/lib64 "$D/lib64"
	ln -s ../run "$D/var/run"
	ln -s ../run/lock "$D/var/lock"
	# xl (for `xl devd`) from whichever Xen the dom0 got, the xenstore tools (the agent),
	# and the few GNU/util-linux tools the checks use; busybox for the rest
	xendir=$(cd "$R" && ls -d usr/lib/xen-*/bin | head -n 1)
	[ -n "$xendir" ] || die "driver domain: no usr/lib/xen-*/bin in the dom0 tree"
	dd_put "$xendir/xl"
	for f in "$R"/usr/bin/xenstore*; do dd_put "usr/bin/${f##*/}"; done
	for f in usr/sbin/losetup usr/bin/stat usr/bin/timeout usr/bin/truncate; do dd_put "$f"; done
	cp "$R/usr/bin/busybox" "$D/usr/bin/busybox"
	for f in $("$D/usr/bin/busybox" --list); do
		[ -e "$D/usr/bin/$f" ] || [ -e "$D/usr/sbin/$f" ] || ln -s busybox "$D/usr/bin/$f"
	done
	cp "$R/etc/xen/xl.conf" "$D/etc/xen/"
	# the tree under test, symlinks preserved (/etc/xen/scripts/block -> our binary)
	cp -a "$TREE/." "$D/"
	# libraries: what the tree's own loader ($LDSO, run.sh: the suite's, since trixie's
	# glibc is newer than the host's) says the dynamic executables need, resolved in the
	# dom0 tree (which has every library of these tools), plus libgcc_s.so.1 that glibc
	# dlopens
	while IFS= read -r -d '' f; do
		is_elf "$f" || continue
		# static executables make the loader refuse: nothing to copy for them
		{ LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu "$LDSO" --list "$f" 2>/dev/null || true; } |
			sed -n 's/.*=> \(\/[^ ]*\) (.*/\1/p'
	done < <(find "$D" -type f -print0) | sort -u | while read -r lib; do
		cp -L "$R/usr/lib/x86_64-linux-gnu/${lib##*/}" "$D/usr/lib/x86_64-linux-gnu/" 2>/dev/null ||
			cp -L "$lib" "$D/usr/lib/x86_64-linux-gnu/"
	done
	cp -L "$R/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" "$D/usr/lib/x86_64-linux-gnu/"
	cp -L "$R/usr/lib64/ld-linux-x86-64.so.2" "$D/usr/lib64/"
	# dom0's modules minus blkfront: evtchn, privcmd, xenfs, gntdev, gntalloc, loop, blkback
	grep -v '^xen-blkfront' "$R/lib/modules/e2e/dom0.order" >"$D/lib/modules/e2e/dd.order"
	while read -r f; do cp "$R/lib/modules/e2e/$f" "$D/lib/modules/e2e/"; done <"$D/lib/modules/e2e/dd.order"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$D/etc/passwd"
	echo 'root:x:0:' >"$D/etc/group"
	echo e2e-dd >"$D/etc/hostname"
	install -m 0755 "$HERE/driver-init.sh" "$D/init"
	(cd "$D" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null) >"$WORK/dd.cpio"
	# the payload for dom0, appended as a second archive
	mkdir -p "$P/e2e"
	cp "$WORK/dd.cpio" "$P/e2e/dd.cpio"
	install -m 0755 "$HERE/driver-scenarios.sh" "$P/e2e/driver-scenarios.sh"
	(cd "$P" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null) >>"$WORK/dom0.cpio"
	say "driver domain initramfs: $(($(stat -c %s "$WORK/dd.cpio") / 1048576)) MiB"
}
