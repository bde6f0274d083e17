#!/bin/sh
# /init of the dom0 initramfs built by tests/e2e/run.sh.
# Brings up the Xen userspace (xenstored, xen-init-dom0, xenconsoled), runs
# /e2e/scenarios.sh, then powers the machine off. Everything it prints goes to
# hvc0, which Xen forwards to the serial log that run.sh parses.
# one /usr/lib/xen-<version>/bin: 4.17 (Debian 12) or 4.20 (Debian 13)
export PATH=$(echo /usr/lib/xen-*/bin | tr ' ' ':'):/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# devtmpfs has none of these; Debian's locking.sh stats /dev/stdin.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /srv && mount -t tmpfs -o size=256m tmpfs /srv
mkdir -p /run/xen /run/xenstored /run/lock /var/log/xen/console /var/lib/xen /var/lib/xenstored

echo "E2E-DOM0-INIT $(uname -r)"

while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/e2e/$m" || echo "E2E-DOM0-WARN insmod $m failed"
done </lib/modules/e2e/dom0.order

mount -t xenfs xenfs /proc/xen
ip link set lo up
syslogd -O /var/log/messages
xenstored --pid-file /run/xenstored.pid
i=0
while [ ! -S /run/xenstored/socket ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
xen-init-dom0 || echo "E2E-DOM0-WARN xen-init-dom0 failed"
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
echo "E2E-DOM0-READY"

bash /e2e/scenarios.sh
echo "E2E-DOM0-POWEROFF"
sync
poweroff -f
# If poweroff did not stop the machine, run.sh kills qemu after E2E-DONE.
sleep 1000
