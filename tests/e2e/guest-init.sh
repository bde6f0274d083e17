#!/bin/sh
# /init of the small PV guest used by tests/e2e (busybox only).
# Kernel command line (xl "extra"): e2e_marker=<nonce>
# Protocol on /dev/xvda (4096-byte blocks):
#   block 0: the guest writes "E2E-GUEST-MARKER-<nonce>"
#   block 2: the guest writes "E2E-GUEST-STATUS <ok|readback-mismatch|...>"
#   block 1: dom0 writes "E2E-GO-DOWN" (through its loop device) when it has
#            checked everything it wants to check while the guest runs; the
#            guest then powers off (or after 120 s regardless).
# With e2e_second=1 on the command line, blocks 0 and 2 of /dev/xvdb are written
# the same way (the driver-domain scenario's second disk); block 1 of xvda still rules.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "guest: $*"; }

marker=$(sed -n 's/.*e2e_marker=\([^ ]*\).*/\1/p' /proc/cmdline)
say "init started, marker=$marker"
insmod /xen-blkfront.ko || say "insmod xen-blkfront failed"

i=0
while [ ! -b /dev/xvda ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b /dev/xvda ]; then
	say "E2E-GUEST no /dev/xvda"
	poweroff -f
fi

blk() { # blk N TEXT: write TEXT into block N, bypassing the page cache
	printf '%s\n' "$2" >/tmp/blk
	dd if=/tmp/blk of="${DISK:-/dev/xvda}" bs=4096 seek="$1" count=1 conv=sync,notrunc,fsync oflag=direct 2>/dev/null
}
rd() { # rd N: print the first line of block N, bypassing the page cache
	dd if="${DISK:-/dev/xvda}" bs=4096 skip="$1" count=1 iflag=direct 2>/dev/null | head -n 1
}

mark() { # mark DEV: marker in block 0, read back, status in block 2
	DISK=$1
	status=ok
	if ! blk 0 "E2E-GUEST-MARKER-$marker"; then
		status=write-failed
	elif [ "$(rd 0)" != "E2E-GUEST-MARKER-$marker" ]; then
		status=readback-mismatch
	fi
	blk 2 "E2E-GUEST-STATUS $status" || true
	say "wrote marker on $1, status=$status"
	DISK=/dev/xvda
}
mark /dev/xvda
if grep -q 'e2e_second=1' /proc/cmdline; then
	i=0
	while [ ! -b /dev/xvdb ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
	if [ -b /dev/xvdb ]; then mark /dev/xvdb; else say "E2E-GUEST no /dev/xvdb"; fi
fi

i=0
while [ $i -lt 600 ]; do
	if [ "$(rd 1)" = "E2E-GO-DOWN" ]; then
		say "got E2E-GO-DOWN"
		break
	fi
	sleep 0.2
	i=$((i + 1))
done
say "powering off"
sync
poweroff -f
