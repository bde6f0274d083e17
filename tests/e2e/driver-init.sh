#!/bin/sh
# /init of the driver domain used by the `driver-*` scenarios (built by driver-domain.sh).
# Loads xen-blkback and loop, starts `xl devd` (which runs /etc/xen/scripts/block, i.e.
# the binary under test, for every backend libxl in dom0 creates under this domain), then
# serves dom0's commands through xenstore, because dom0 cannot see this domain's files:
#   dom0 writes data/e2e/cmd (a shell command) then data/e2e/req (a sequence number);
#   this agent runs the command and writes data/e2e/out (last 1500 bytes of its output),
#   data/e2e/rc and data/e2e/done (= req).
# Everything printed goes to hvc0, which xenconsoled in dom0 writes to
# /var/log/xen/console/guest-e2e-dd.log (the `xl devd` log included).
for d in /usr/lib/xen-*/bin; do PATH=$d:$PATH; done
export PATH=$PATH:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs -o size=96m tmpfs /srv
mkdir -p /run/xen /run/lock /var/log/xen /var/lib/xen
echo "E2E-DD-INIT $(uname -r)"

while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/e2e/$m" || echo "E2E-DD-WARN insmod $m failed"
done </lib/modules/e2e/dd.order
mount -t xenfs xenfs /proc/xen
syslogd -O /var/log/messages

# xl devd in the foreground, its log on the console with a prefix
(xl -v devd -F 2>&1 | while IFS= read -r l; do echo "devd| $l"; done) &

# busybox sh runs its own applets before PATH: util-linux's losetup (--show, -j) by name
losetup() { /usr/sbin/losetup "$@"; }
# helpers for dom0's commands: one 4 KiB block, O_DIRECT on devices
put() { printf '%s\n' "$3" | dd of="$1" bs=4096 seek="$2" count=1 conv=sync,notrunc oflag=direct 2>/dev/null; }
get() { dd if="$1" bs=4096 skip="$2" count=1 iflag=direct 2>/dev/null | head -n 1; }
getfile() { dd if="$1" bs=4096 skip="$2" count=1 2>/dev/null | head -n 1; }
# loops_of FILE: loop devices backed by FILE (sysfs)
loops_of() {
	for f in /sys/block/loop*/loop/backing_file; do
		[ -r "$f" ] || continue
		[ "$(cat "$f")" = "$1" ] && { f=${f#/sys/block/}; echo "/dev/${f%%/*}"; }
	done
	return 0
}
# wait_for SECS CMD...: poll CMD every 0.3 s
wait_for() {
	n=$(($1 * 3))
	shift
	while [ "$n" -gt 0 ]; do
		"$@" && return 0
		sleep 0.3
		n=$((n - 1))
	done
	"$@"
}

i=0
while [ ! -e /dev/xen/xenbus ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
echo "E2E-DD-READY domid $(xenstore-read domid 2>&1)"
xenstore-write data/e2e/ready 1 || echo "E2E-DD-WARN cannot write data/e2e/ready"

done_req=""
while :; do
	req=$(xenstore-read data/e2e/req 2>/dev/null)
	if [ -n "$req" ] && [ "$req" != "$done_req" ]; then
		cmd=$(xenstore-read data/e2e/cmd 2>/dev/null)
		out=$( (eval "$cmd") 2>&1 </dev/null)
		rc=$?
		out=$(printf '%s' "$out" | tail -c 1500)
		xenstore-write data/e2e/out "$out" data/e2e/rc "$rc" data/e2e/done "$req" ||
			echo "E2E-DD-WARN cannot write the answer to request $req"
		done_req=$req
	fi
	sleep 0.2
done
