#!/bin/bash
# End-to-end test of xen-block-hotplug under real Xen 4.17 in qemu (TCG).
#
#   tests/e2e/run.sh --install-tree DIR   test a `make install DESTDIR=DIR` tree
#   tests/e2e/run.sh --from-make          make -C <repo> install into a temp dir, test it
#   tests/e2e/run.sh --debian-standin     test Debian's own shell `block` (positive control)
#   tests/e2e/run.sh --negative-control   test a script that always fails (must exit non-zero)
#   tests/e2e/run.sh --self-test          run the negative control, exit 0 only if it failed
#                                         the way it should (libxl's error text in the log)
# Options:
#   --only a,b,c     run only these scenarios (phy-rw file-rw file-ro share-phy share-file share-ro
#                    guest-pv upstream-concurrent lock-interop nbd iscsi drbd leftovers)
#   --xfail a,b      scenarios expected to FAIL (reported XFAIL, not counted as failures;
#                    an unexpected PASS is reported XPASS and counted as a failure)
#   --timeout SECS   hard limit for qemu (default 600)
#   --log FILE       serial log path (default /tmp/xbh-e2e-<mode>.log)
#   --keep           keep the work directory (initramfs trees) for inspection
# Environment: E2E_CACHE (default /var/cache/xbh-e2e) holds downloaded .debs and
# their unpacked contents; nothing is installed on the host.
#
# Exit status: 0 all scenarios passed; 1 a scenario failed; 2 usage error;
# 3 the harness itself failed (fetch/build error, boot failure, timeout, no E2E-DONE).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${E2E_CACHE:-/var/cache/xbh-e2e}
TIMEOUT=600
MODE="" TREE="" ONLY="" XFAIL="" LOG="" KEEP=0
T_START=$(date +%s)

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
say() { printf '[e2e %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { say "ERROR: $*"; exit 3; }

while [ $# -gt 0 ]; do
	case $1 in
	--install-tree) MODE=tree TREE=${2:?}; shift ;;
	--from-make) MODE="make" ;;
	--debian-standin) MODE=debian ;;
	--negative-control) MODE=negative ;;
	--self-test) MODE=selftest ;;
	--only) ONLY=${2:?}; shift ;;
	--xfail) XFAIL=${2:?}; shift ;;
	--timeout) TIMEOUT=${2:?}; shift ;;
	--log) LOG=${2:?}; shift ;;
	--keep) KEEP=1 ;;
	-h | --help) usage ;;
	*) echo "unknown argument: $1" >&2; usage ;;
	esac
	shift
done
[ -n "$MODE" ] || usage
[ "$(id -u)" = 0 ] || die "must run as root (apt-get download into $CACHE, root-owned initramfs files)"

# ------------------------------------------------------------------ self-test
if [ "$MODE" = selftest ]; then
	LOG=${LOG:-/tmp/xbh-e2e-selftest.log}
	args=(--negative-control --log "$LOG" --timeout "$TIMEOUT")
	[ -z "$ONLY" ] || args+=(--only "$ONLY")
	rc=0
	E2E_SUMMARY_PREFIX="negative control (must fail) summary:" "$0" "${args[@]}" || rc=$?
	if [ "$rc" != 1 ]; then
		say "SELF-TEST FAIL: negative control exited $rc (expected 1 = scenarios failed; 0 = failure not detected, 3 = harness broken)"
		echo "self-test: 0 passed, 1 failed" >&2
		exit 1
	fi
	if ! grep -a -q 'script: E2E-NEGATIVE-CONTROL' "$LOG"; then
		say "SELF-TEST FAIL: libxl's error text 'script: E2E-NEGATIVE-CONTROL ...' not in $LOG"
		echo "self-test: 0 passed, 1 failed" >&2
		exit 1
	fi
	if grep -a -q '^E2E-RESULT [^ ]* PASS' <(tr -d '\r' <"$LOG"); then
		say "note: some scenarios passed under the negative control:"
		tr -d '\r' <"$LOG" | grep -a '^E2E-RESULT [^ ]* PASS' >&2
	fi
	say "SELF-TEST PASS: negative control failed as expected and libxl's error is in the log:"
	grep -a -m3 'script: E2E-NEGATIVE-CONTROL' "$LOG" >&2
	echo "self-test: 1 passed, 0 failed" >&2
	exit 0
fi

LOG=${LOG:-/tmp/xbh-e2e-$MODE.log}
WORK=$(mktemp -d /tmp/xbh-e2e.XXXXXX)
QEMU_PID=""
cleanup() {
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null || true
		sleep 1
		kill -9 "$QEMU_PID" 2>/dev/null || true
	fi
	if [ "$KEEP" = 1 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ fetch
# Packages taken verbatim; their library dependencies that are not installed
# on this host are added below.
KPKG=""
resolve_kernel_pkg() {
	KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
}
resolve_kernel_pkg
if [ -z "$KPKG" ]; then
	say "apt lists look empty; running apt-get update"
	apt-get update -qq >&2 || die "apt-get update failed"
	resolve_kernel_pkg
	[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package"
fi
XEN_PKGS="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils libxenmisc4.17
	libxenstore4 libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenhypfs1
	libxentoolcore1 libxentoollog1 libxendevicemodel1"
QEMU_PKGS="qemu-system-x86 qemu-system-common qemu-system-data seabios"
# servers and clients for the block-nbd, block-iscsi and block-drbd scenarios (run
# inside dom0), and udev for the /dev/disk/by-path links block-iscsi waits for
TOOL_PKGS="nbd-server nbd-client tgt open-iscsi drbd-utils udev"
PKGS="$XEN_PKGS $QEMU_PKGS $TOOL_PKGS busybox-static $KPKG"

INSTALLED=" $(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null | awk '$1 == "ii" {print $2}' | tr '\n' ' ') "
installed() { case $INSTALLED in *" $1 "*) return 0 ;; esac; return 1; }
# lib_deps PKG...: library packages (transitively, lib* only) not installed here
lib_deps() {
	local level=("$@") seen=" " d next out=()
	while [ ${#level[@]} -gt 0 ]; do
		next=()
		for d in $(apt-cache depends --important "${level[@]}" 2>/dev/null |
			sed -n 's/^ *\(Pre\)\{0,1\}Depends: \(lib[a-z0-9.+-]*\).*/\2/p' | sort -u); do
			case $seen in *" $d "*) continue ;; esac
			seen="$seen$d "
			installed "$d" && continue
			out+=("$d")
			next+=("$d")
		done
		level=("${next[@]}")
	done
	echo "${out[@]}"
}

fetch() {
	local p want=() missing=() debs=()
	mkdir -p "$CACHE/debs"
	# shellcheck disable=SC2206,SC2207 # package names: word splitting intended
	want=($PKGS $(lib_deps qemu-system-x86 xen-utils-4.17 xenstore-utils libxenmisc4.17 $TOOL_PKGS))
	for p in "${want[@]}"; do
		compgen -G "$CACHE/debs/${p}_*.deb" >/dev/null || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		say "downloading: ${missing[*]}"
		chown _apt: "$CACHE/debs" 2>/dev/null || true
		(cd "$CACHE/debs" && apt-get download -q "${missing[@]}" >&2) ||
			{ say "apt-get download failed; apt-get update and retry"; apt-get update -qq >&2 &&
				(cd "$CACHE/debs" && apt-get download -q "${missing[@]}" >&2); } ||
			die "apt-get download failed"
	fi
	for p in "${want[@]}"; do
		debs+=("$(ls "$CACHE/debs/${p}"_*.deb | sort -V | tail -n1)")
	done
	# Each .deb is unpacked once into its own immutable directory (atomic
	# rename, so concurrent runs are safe); this run's root is a hard-link
	# union of them.
	local u fresh=0
	mkdir -p "$CACHE/unpacked"
	ROOT=$WORK/root
	mkdir -p "$ROOT"
	for p in "${debs[@]}"; do
		u=$CACHE/unpacked/$(basename "$p" .deb)
		if [ ! -e "$u/.complete" ]; then
			rm -rf "$u.tmp.$$"
			mkdir -p "$u.tmp.$$"
			dpkg -x "$p" "$u.tmp.$$" || die "dpkg -x $p failed"
			touch "$u.tmp.$$/.complete"
			mv -T "$u.tmp.$$" "$u" 2>/dev/null || rm -rf "$u.tmp.$$"
			fresh=$((fresh + 1))
		fi
		cp -al --remove-destination "$u/." "$ROOT/" 2>/dev/null || cp -a --remove-destination "$u/." "$ROOT/"
	done
	[ $fresh = 0 ] || say "unpacked $fresh new package(s) into $CACHE/unpacked"
	XEN_DEB=$(basename "$(ls "$CACHE/debs/xen-hypervisor-4.17-amd64"_*.deb | sort -V | tail -n1)" .deb)
	KERNEL_DEB=$(basename "$(ls "$CACHE/debs/${KPKG}"_*.deb | sort -V | tail -n1)" .deb)
}

T0=$(date +%s)
fetch
KVER=${KPKG#linux-image-}
VMLINUZ=$ROOT/boot/vmlinuz-$KVER
MODROOT=$ROOT/lib/modules/$KVER
BB=$ROOT/bin/busybox
QEMU=$ROOT/usr/bin/qemu-system-x86_64
QEMU_LD=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu
XEN_LD=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu
for f in "$VMLINUZ" "$MODROOT" "$BB" "$QEMU" "$ROOT/boot/xen-4.17-amd64.gz"; do
	[ -e "$f" ] || die "missing after unpack: $f"
done
XEN=$CACHE/$XEN_DEB.xen.elf
[ -s "$XEN" ] || { gunzip -c "$ROOT/boot/xen-4.17-amd64.gz" >"$XEN.tmp.$$" && mv "$XEN.tmp.$$" "$XEN"; }
GUEST_VMLINUX=$CACHE/$KERNEL_DEB.vmlinux
[ -s "$GUEST_VMLINUX" ] || python3 "$HERE/e2e_tools.py" vmlinux "$VMLINUZ" "$GUEST_VMLINUX" ||
	die "cannot decompress $VMLINUZ"
if LD_LIBRARY_PATH=$QEMU_LD ldd "$QEMU" | grep -q 'not found'; then
	LD_LIBRARY_PATH=$QEMU_LD ldd "$QEMU" | grep 'not found' >&2
	die "qemu has unresolved libraries"
fi
T_FETCH=$(($(date +%s) - T0))
say "packages ready in ${T_FETCH}s (kernel $KVER)"

# ------------------------------------------------------------------ install tree
T0=$(date +%s)
case $MODE in
tree)
	TREE=$(cd "$TREE" && pwd) || die "no such install tree"
	;;
make)
	[ -f "$REPO/Makefile" ] || die "$REPO/Makefile missing: no install target yet"
	TREE=$WORK/install
	say "make -C $REPO install DESTDIR=$TREE"
	make -C "$REPO" install DESTDIR="$TREE" >&2 || die "make install failed"
	;;
debian)
	TREE=$WORK/install
	mkdir -p "$TREE/etc/xen/scripts"
	cp -a "$ROOT/etc/xen/scripts/block" "$ROOT/etc/xen/scripts/"*.sh "$TREE/etc/xen/scripts/"
	;;
negative)
	TREE=$WORK/install
	mkdir -p "$TREE/etc/xen/scripts"
	install -m 0755 "$HERE/negative-block" "$TREE/etc/xen/scripts/block"
	;;
esac
[ -e "$TREE/etc/xen/scripts/block" ] || [ -L "$TREE/etc/xen/scripts/block" ] ||
	die "$TREE/etc/xen/scripts/block missing"

# ------------------------------------------------------------------ initramfs
R=$WORK/dom0
G=$WORK/guest
LIBS_WANTED=$WORK/libs.txt
: >"$LIBS_WANTED"

is_elf() { [ -f "$1" ] && [ ! -L "$1" ] && [ "$(head -c4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }
# need_libs FILE...: record the shared libraries of dynamic ELF files
need_libs() {
	local f out
	for f in "$@"; do
		is_elf "$f" || continue
		out=$(LD_LIBRARY_PATH=$XEN_LD ldd "$f" 2>&1) || true
		case $out in *"not a dynamic executable"* | *"statically linked"*) continue ;; esac
		if printf '%s\n' "$out" | grep -q 'not found'; then
			printf '%s\n' "$out" >&2
			die "unresolved libraries for $f"
		fi
		printf '%s\n' "$out" | sed -n 's/.*=> \(\/[^ ]*\) (.*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p' >>"$LIBS_WANTED"
	done
}
# put_bin SRC DESTDIR [NAME]: copy an executable (dereferenced) and note its libs
put_bin() {
	local dst=$R/$2/${3:-$(basename "$1")}
	mkdir -p "$(dirname "$dst")"
	cp -L "$1" "$dst"
	need_libs "$dst"
}

build_guest() {
	mkdir -p "$G"/{bin,proc,sys,dev,tmp}
	cp "$BB" "$G/bin/busybox"
	for a in $("$BB" --list); do [ "$a" = busybox ] || ln -s busybox "$G/bin/$a"; done
	install -m 0755 "$HERE/guest-init.sh" "$G/init"
	cp "$MODROOT/$(python3 "$HERE/e2e_tools.py" moddeps "$MODROOT" xen-blkfront | tail -n1)" "$G/xen-blkfront.ko"
	(cd "$G" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null) >"$WORK/guest.cpio"
}

build_dom0() {
	local f d
	mkdir -p "$R"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc/xen/scripts,proc,sys,dev,run,tmp,root,srv,var/log,var/lib,e2e,lib/modules/e2e}
	ln -s usr/bin "$R/bin"
	ln -s usr/sbin "$R/sbin"
	ln -s usr/lib "$R/lib"
	ln -s usr/lib64 "$R/lib64"
	ln -s ../run "$R/var/run"
	ln -s ../run/lock "$R/var/lock"
	# real tools the scripts and scenarios rely on (GNU/util-linux semantics)
	for f in bash flock losetup stat readlink mount umount blockdev expr dd timeout truncate realpath logger; do
		d=$(command -v "$f") || die "host lacks $f"
		case $(readlink -f "$d") in */sbin/*) put_bin "$d" usr/sbin ;; *) put_bin "$d" usr/bin ;; esac
	done
	# Xen userspace from the downloaded packages
	for f in xl xenstored xenconsoled xen-init-dom0 libxl-save-helper xenconsole; do
		put_bin "$ROOT/usr/lib/xen-4.17/bin/$f" usr/lib/xen-4.17/bin
	done
	for f in "$ROOT"/usr/bin/xenstore*; do put_bin "$f" usr/bin; done
	put_bin "$ROOT/bin/nbd-server" usr/bin
	put_bin "$ROOT/sbin/nbd-client" usr/sbin
	# iSCSI: tgt (target), open-iscsi (initiator), udev (by-path links)
	put_bin "$ROOT/usr/sbin/tgtd" usr/sbin
	put_bin "$ROOT/usr/sbin/tgtadm" usr/sbin
	put_bin "$ROOT/sbin/iscsid" usr/sbin
	put_bin "$ROOT/sbin/iscsiadm" usr/sbin
	mkdir -p "$R/etc/iscsi"
	cp "$ROOT/etc/iscsi/iscsid.conf" "$R/etc/iscsi/"
	echo "InitiatorName=iqn.1993-08.org.debian:01:e2edom0" >"$R/etc/iscsi/initiatorname.iscsi"
	put_bin "$ROOT/bin/udevadm" usr/bin
	mkdir -p "$R/usr/lib/systemd" "$R/usr/lib/udev/rules.d" "$R/etc/udev/rules.d"
	ln -s ../../bin/udevadm "$R/usr/lib/systemd/systemd-udevd"
	put_bin "$ROOT/lib/udev/scsi_id" usr/lib/udev
	cp "$ROOT/lib/udev/rules.d/60-persistent-storage.rules" "$R/usr/lib/udev/rules.d/"
	# DRBD: drbdadm execs the 8.4 tools for the 8.4 kernel module
	for f in drbdadm drbdsetup drbdmeta; do put_bin "$ROOT/sbin/$f" usr/sbin; done
	for f in drbdadm-84 drbdsetup-84; do
		put_bin "$ROOT/lib/drbd/$f" usr/lib/drbd
		ln -s ../lib/drbd/$f "$R/usr/sbin/$f"
	done
	mkdir -p "$R/etc/drbd.d" "$R/var/lib/drbd"
	cp "$ROOT/etc/xen/xl.conf" "$R/etc/xen/"
	# Debian's script libraries (a drop-in keeps them for third-party scripts), and
	# Debian's `block` under another name for the mixed-lock scenario
	cp -a "$ROOT"/etc/xen/scripts/*.sh "$R/etc/xen/scripts/"
	install -m 0755 "$ROOT/etc/xen/scripts/block" "$R/etc/xen/scripts/block-upstream"
	# the tree under test, symlinks preserved
	cp -a "$TREE/." "$R/"
	while IFS= read -r -d '' f; do need_libs "$f"; done < <(find "$TREE" -type f -print0)
	# busybox for everything else
	cp "$BB" "$R/usr/bin/busybox"
	for f in $("$BB" --list); do
		[ -e "$R/usr/bin/$f" ] || [ -e "$R/usr/sbin/$f" ] || ln -s busybox "$R/usr/bin/$f"
	done
	# libraries: ldd results plus libgcc_s.so.1, which glibc dlopens for pthread_cancel
	for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu; do
		[ -e "$d/libgcc_s.so.1" ] && { echo "$d/libgcc_s.so.1" >>"$LIBS_WANTED"; break; }
	done
	sort -u "$LIBS_WANTED" | while read -r f; do
		case $f in
		*/ld-linux-x86-64.so.2) cp -L "$f" "$R/usr/lib64/ld-linux-x86-64.so.2" ;;
		*) cp -L "$f" "$R/usr/lib/x86_64-linux-gnu/$(basename "$f")" ;;
		esac
	done
	[ -e "$R/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" ] || die "libgcc_s.so.1 not found on host"
	# kernel modules, flattened, with load order resolved from modinfo
	python3 "$HERE/e2e_tools.py" moddeps "$MODROOT" xen-evtchn xen-privcmd xenfs xen-gntdev \
		xen-gntalloc loop xen-blkback xen-blkfront >"$WORK/dom0.mods"
	python3 "$HERE/e2e_tools.py" moddeps "$MODROOT" nbd crc32c_generic drbd iscsi_tcp sd_mod >"$WORK/extra.mods"
	for f in $(cat "$WORK/dom0.mods" "$WORK/extra.mods"); do cp "$MODROOT/$f" "$R/lib/modules/e2e/"; done
	xargs -n1 basename <"$WORK/dom0.mods" >"$R/lib/modules/e2e/dom0.order"
	xargs -n1 basename <"$WORK/extra.mods" | grep -vxF -f "$R/lib/modules/e2e/dom0.order" \
		>"$R/lib/modules/e2e/extra.order" || true
	# etc
	echo 'root:x:0:0:root:/root:/bin/bash' >"$R/etc/passwd"
	echo 'root:x:0:' >"$R/etc/group"
	echo dom0 >"$R/etc/hostname"
	# test payload
	install -m 0755 "$HERE/dom0-init.sh" "$R/init"
	install -m 0755 "$HERE/scenarios.sh" "$R/e2e/scenarios.sh"
	cp "$GUEST_VMLINUX" "$R/e2e/vmlinux"
	cp "$WORK/guest.cpio" "$R/e2e/guest.cpio"
	{
		printf 'E2E_ONLY=%q\n' "$ONLY"
		printf 'E2E_MODE=%q\n' "$MODE"
	} >"$R/e2e/config.sh"
	(cd "$R" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null) >"$WORK/dom0.cpio"
}

build_guest
build_dom0
# the driver domain of the driver-* scenarios, appended to dom0.cpio
# shellcheck source=driver-domain.sh
. "$HERE/driver-domain.sh"
build_driver_domain
T_BUILD=$(($(date +%s) - T0))
say "initramfs built in ${T_BUILD}s: dom0 $(($(stat -c %s "$WORK/dom0.cpio") / 1048576)) MiB, guest $(($(stat -c %s "$WORK/guest.cpio") / 1024)) KiB"
say "tree under test: $TREE"
(cd "$TREE" && find . \( -type f -o -type l \) -printf '  %p %l\n' | sort) >&2

# ------------------------------------------------------------------ boot
: >"$LOG"
say "booting Xen + dom0 under qemu (TCG), serial log: $LOG, timeout ${TIMEOUT}s"
T0=$(date +%s)
QEMU_MODULE_DIR=$ROOT/usr/lib/x86_64-linux-gnu/qemu LD_LIBRARY_PATH=$QEMU_LD "$QEMU" \
	-L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios" \
	-accel tcg,tb-size=256 -cpu qemu64 -smp 2 -m 1024 \
	-nodefaults -display none -vga none -nic none -monitor none -no-reboot \
	-serial "file:$LOG" \
	-kernel "$XEN" \
	-append "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M loglvl=all guest_loglvl=all" \
	-initrd "$VMLINUZ console=hvc0 earlyprintk=xen loglevel=5,$WORK/dom0.cpio" \
	</dev/null >"$WORK/qemu.out" 2>&1 &
QEMU_PID=$!
PEAK_KB=0 T_INIT="" T_DONE="" REASON=""
while :; do
	if ! kill -0 "$QEMU_PID" 2>/dev/null; then REASON="qemu exited"; break; fi
	hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$QEMU_PID/status" 2>/dev/null || true)
	[ -n "$hwm" ] && [ "$hwm" -gt "$PEAK_KB" ] && PEAK_KB=$hwm
	now=$(($(date +%s) - T0))
	[ -n "$T_INIT" ] || ! grep -a -q 'E2E-DOM0-INIT' "$LOG" || { T_INIT=$now; say "dom0 reached /init after ${now}s"; }
	if [ -z "$T_DONE" ] && grep -a -q 'E2E-DONE' "$LOG"; then T_DONE=$now; say "scenarios done after ${now}s"; fi
	if [ -n "$T_DONE" ] && [ $((now - T_DONE)) -ge 15 ]; then REASON="no power-off 15s after E2E-DONE"; break; fi
	if [ "$now" -ge "$TIMEOUT" ]; then REASON="TIMEOUT after ${TIMEOUT}s"; break; fi
	sleep 1
done
if kill -0 "$QEMU_PID" 2>/dev/null; then
	kill "$QEMU_PID" 2>/dev/null || true
	for _ in 1 2 3 4 5; do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
	kill -9 "$QEMU_PID" 2>/dev/null || true
fi
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=""
T_QEMU=$(($(date +%s) - T0))
[ -s "$WORK/qemu.out" ] && { say "qemu said:"; sed 's/^/  /' "$WORK/qemu.out" >&2; }

# ------------------------------------------------------------------ verdict
CLEAN=$WORK/serial.txt
tr -d '\r' <"$LOG" >"$CLEAN"
echo >&2
echo "==== e2e results ($MODE) ====" >&2
npass=0 nfail=0 nskip=0 nxfail=0
while read -r _ name status detail; do
	xf=0
	case ",$XFAIL," in *",$name,"*) xf=1 ;; esac
	case $status in
	PASS) if [ $xf = 1 ]; then status=XPASS; nfail=$((nfail + 1)); else npass=$((npass + 1)); fi ;;
	FAIL) if [ $xf = 1 ]; then status=XFAIL; nxfail=$((nxfail + 1)); else nfail=$((nfail + 1)); fi ;;
	SKIP) nskip=$((nskip + 1)) ;;
	*) status="BAD($status)"; nfail=$((nfail + 1)) ;;
	esac
	printf '  %-6s %-20s %s\n' "$status" "$name" "$detail" >&2
done < <(grep -a '^E2E-RESULT ' "$CLEAN" || true)
DONE_LINE=$(grep -a -m1 '^E2E-DONE ' "$CLEAN" || true)
[ -z "$DONE_LINE" ] || [ -n "$T_DONE" ] || T_DONE=$T_QEMU
rc=0
if [ -z "$DONE_LINE" ]; then
	echo "  harness: no E2E-DONE in the serial log ($REASON)" >&2
	[ -n "$T_INIT" ] || echo "  harness: dom0 never reached /init" >&2
	echo "---- last 60 lines of the serial log ----" >&2
	tail -n 60 "$CLEAN" >&2
	nfail=$((nfail + 1))
	rc=3
elif [ "$nfail" -gt 0 ]; then
	rc=1
	echo "---- libxl / script errors in the serial log ----" >&2
	grep -a -E 'libxl: error|script: ' "$CLEAN" | sort | uniq -c | sort -rn | head -n 20 >&2 || true
fi
[ -n "$DONE_LINE" ] && echo "  dom0 reported: $DONE_LINE" >&2
echo "  timing: fetch ${T_FETCH}s, build ${T_BUILD}s, qemu ${T_QEMU}s (dom0 /init at ${T_INIT:-never}s, scenarios done at ${T_DONE:-never}s), total $(($(date +%s) - T_START))s" >&2
echo "  qemu peak RSS: $((PEAK_KB / 1024)) MiB; serial log: $LOG" >&2
echo "${E2E_SUMMARY_PREFIX:-e2e:} $npass passed, $nfail failed, $nskip skipped" >&2
[ "$nxfail" -eq 0 ] || echo "  ($nxfail expected failures: $XFAIL)" >&2
exit $rc
