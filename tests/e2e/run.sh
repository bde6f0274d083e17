#!/bin/bash
# End-to-end test of xen-block-hotplug under real Xen in qemu (TCG): Xen 4.17 with Debian 12
# (bookworm) as dom0 and guest, or Xen 4.20 with Debian 13 (trixie).
#
#   tests/e2e/run.sh --install-tree DIR   test a `make install DESTDIR=DIR` tree
#   tests/e2e/run.sh --from-make          make -C <repo> install into a temp dir, test it
#   tests/e2e/run.sh --debian-standin     test Debian's own shell `block` (positive control)
#   tests/e2e/run.sh --negative-control   test a script that always fails (must exit non-zero)
#   tests/e2e/run.sh --self-test          run the negative control, exit 0 only if it failed
#                                         the way it should (libxl's error text in the log)
# Options:
#   --xen 4.17|4.20  Xen and Debian release: 4.17 = Debian 12 from the host's apt sources
#                    (default, or $E2E_XEN); 4.20 = Debian 13, fetched with a private apt
#                    configuration in $E2E_CACHE/apt-trixie (the host's sources are not touched)
#   --only a,b,c     run only these scenarios (phy-rw file-rw file-ro share-phy share-file share-ro
#                    guest-pv upstream-concurrent lock-interop nbd iscsi drbd leftovers)
#   --xfail a,b      scenarios expected to FAIL (reported XFAIL, not counted as failures;
#                    an unexpected PASS is reported XPASS and counted as a failure)
#   --timeout SECS   hard limit for qemu (default 600)
#   --log FILE       serial log path (default /tmp/xbh-e2e-<mode>-<xen>.log)
#   --keep           keep the work directory (initramfs trees) for inspection
# Environment: E2E_CACHE (default /var/cache/xbh-e2e) holds downloaded .debs and
# their unpacked contents; nothing is installed on the host. E2E_MIRROR (default
# http://deb.debian.org) is the Debian mirror of the private apt configuration.
#
# Exit status: 0 all scenarios passed; 1 a scenario failed; 2 usage error;
# 3 the harness itself failed (fetch/build error, boot failure, timeout, no E2E-DONE).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${E2E_CACHE:-/var/cache/xbh-e2e}
TIMEOUT=600
MODE="" TREE="" ONLY="" XFAIL="" LOG="" KEEP=0
XENV=${E2E_XEN:-4.17}
T_START=$(date +%s)

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
say() { printf '[e2e %4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() { say "ERROR: $*"; exit 3; }

while [ $# -gt 0 ]; do
	case $1 in
	--install-tree) MODE=tree TREE=${2:?}; shift ;;
	--from-make) MODE="make" ;;
	--debian-standin) MODE=debian ;;
	--negative-control) MODE=negative ;;
	--self-test) MODE=selftest ;;
	--xen) XENV=${2:?}; shift ;;
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
# The Debian release whose Xen, kernel and tools make up dom0 and the guest ("" = the host's
# own apt sources, Debian 12).
case $XENV in
4.17) SUITE="" ;;
4.20) SUITE=trixie ;;
*) echo "--xen: 4.17 (Debian 12) or 4.20 (Debian 13), not '$XENV'" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (apt-get download into $CACHE, root-owned initramfs files)"

# ------------------------------------------------------------------ self-test
if [ "$MODE" = selftest ]; then
	LOG=${LOG:-/tmp/xbh-e2e-selftest.log}
	args=(--negative-control --log "$LOG" --timeout "$TIMEOUT" --xen "$XENV")
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

LOG=${LOG:-/tmp/xbh-e2e-$MODE-$XENV.log}
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
# Two package sets: the machine under test (Xen, kernel, tools, busybox) from $SUITE, unpacked
# into $ROOT; qemu (and zstd, for the trixie kernel) from the host's own suite into $QROOT.
# For 4.17 both come from the host's apt sources. For 4.20 the machine comes from a private apt
# configuration (its own sources list, lists, cache and state under $CACHE/apt-$SUITE); the
# host's sources, lists and dpkg status are never touched.
HOST_APT_GET=(apt-get)
HOST_APT_CACHE=(apt-cache)
if [ -n "$SUITE" ]; then
	PA=$CACHE/apt-$SUITE
	MIRROR=${E2E_MIRROR:-http://deb.debian.org}
	mkdir -p "$PA/sources.list.d" "$PA/preferences.d" "$PA/state/lists/partial" "$PA/cache/archives/partial"
	[ -e "$PA/state/status" ] || : >"$PA/state/status"
	key=/usr/share/keyrings/debian-archive-keyring.gpg
	printf '%s\n' "deb [signed-by=$key] $MIRROR/debian $SUITE main" \
		"deb [signed-by=$key] $MIRROR/debian $SUITE-updates main" \
		"deb [signed-by=$key] $MIRROR/debian-security $SUITE-security main" >"$PA/sources.list.tmp.$$"
	mv "$PA/sources.list.tmp.$$" "$PA/sources.list"
	chown -R _apt: "$PA/state/lists" "$PA/cache" 2>/dev/null || true
	PA_OPTS=(-o "Dir::Etc::sourcelist=$PA/sources.list" -o "Dir::Etc::sourceparts=$PA/sources.list.d"
		-o "Dir::Etc::preferences=$PA/preferences" -o "Dir::Etc::preferencesparts=$PA/preferences.d"
		-o "Dir::State=$PA/state" -o "Dir::State::status=$PA/state/status" -o "Dir::Cache=$PA/cache"
		-o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
	APT_GET=(apt-get "${PA_OPTS[@]}")
	APT_CACHE=(apt-cache "${PA_OPTS[@]}")
	DEBS=$CACHE/debs-$SUITE
else
	APT_GET=("${HOST_APT_GET[@]}")
	APT_CACHE=("${HOST_APT_CACHE[@]}")
	DEBS=$CACHE/debs
fi
KPKG=""
resolve_kernel_pkg() {
	KPKG=$("${APT_CACHE[@]}" depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
}
resolve_kernel_pkg
if [ -z "$KPKG" ]; then
	say "apt lists${SUITE:+ ($SUITE, private)} look empty; running apt-get update"
	"${APT_GET[@]}" update -qq >&2 || die "apt-get update failed"
	resolve_kernel_pkg
	[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package"
fi
XEN_PKGS="xen-hypervisor-$XENV-amd64 xen-utils-$XENV xen-utils-common xenstore-utils libxenmisc$XENV
	libxenstore4 libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenhypfs1
	libxentoolcore1 libxentoollog1 libxendevicemodel1"
QEMU_PKGS="qemu-system-x86 qemu-system-common qemu-system-data seabios zstd"
# servers and clients for the block-nbd, block-iscsi and block-drbd scenarios (run
# inside dom0), and udev for the /dev/disk/by-path links block-iscsi waits for
TOOL_PKGS="nbd-server nbd-client tgt open-iscsi drbd-utils udev"
PKGS="$XEN_PKGS $TOOL_PKGS busybox-static $KPKG"

INSTALLED=" $(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null | awk '$1 == "ii" {print $2}' | tr '\n' ' ') "
installed() { case $INSTALLED in *" $1 "*) return 0 ;; esac; return 1; }
# lib_deps FILTER APT-CACHE... -- PKG...: library packages (transitively, lib* and zlib1g only);
# FILTER=host leaves out those installed here (the host's copy is used), FILTER=all keeps
# them (another release's dom0 needs its own glibc and friends)
lib_deps() {
	local filter=$1 ac=() level=() seen=" " d next out=()
	shift
	while [ "$1" != -- ]; do ac+=("$1"); shift; done
	shift
	level=("$@")
	while [ ${#level[@]} -gt 0 ]; do
		next=()
		for d in $("${ac[@]}" depends --important "${level[@]}" 2>/dev/null |
			sed -n 's/^ *\(Pre\)\{0,1\}Depends: \(lib[a-z0-9.+-]*\|zlib1g\).*/\2/p' | sort -u); do
			case $seen in *" $d "*) continue ;; esac
			seen="$seen$d "
			[ "$filter" = host ] && installed "$d" && continue
			out+=("$d")
			next+=("$d")
		done
		level=("${next[@]}")
	done
	echo "${out[@]}"
}

# download DIR APT-GET... -- PKG...: the newest .deb of each PKG into DIR, unless there
download() {
	local dir=$1 ag=() p missing=()
	shift
	while [ "$1" != -- ]; do ag+=("$1"); shift; done
	shift
	mkdir -p "$dir"
	for p in "$@"; do
		compgen -G "$dir/${p}_*.deb" >/dev/null || missing+=("$p")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	say "downloading${SUITE:+ into $dir}: ${missing[*]}"
	chown _apt: "$dir" 2>/dev/null || true
	(cd "$dir" && "${ag[@]}" download -q "${missing[@]}" >&2) ||
		{ say "apt-get download failed; apt-get update and retry"; "${ag[@]}" update -qq >&2 &&
			(cd "$dir" && "${ag[@]}" download -q "${missing[@]}" >&2); } ||
		die "apt-get download failed"
}
newest_deb() { ls "$1/${2}"_*.deb | sort -V | tail -n1; }

# unpack_union DEST DIR PKG...: each .deb is unpacked once into its own immutable directory
# (atomic rename, so concurrent runs are safe); DEST is a hard-link union of them, with /bin,
# /sbin, /lib and /lib64 merged into /usr (trixie's packages ship /usr/bin, bookworm's
# still /bin: one layout for the paths below)
UNPACKED_FRESH=0
unpack_union() {
	local dest=$1 dir=$2 p deb u d
	shift 2
	mkdir -p "$CACHE/unpacked" "$dest"
	for p in "$@"; do
		deb=$(newest_deb "$dir" "$p")
		u=$CACHE/unpacked/$(basename "$deb" .deb)
		if [ ! -e "$u/.complete" ]; then
			rm -rf "$u.tmp.$$"
			mkdir -p "$u.tmp.$$"
			dpkg -x "$deb" "$u.tmp.$$" || die "dpkg -x $deb failed"
			touch "$u.tmp.$$/.complete"
			mv -T "$u.tmp.$$" "$u" 2>/dev/null || rm -rf "$u.tmp.$$"
			UNPACKED_FRESH=$((UNPACKED_FRESH + 1))
		fi
		cp -al --remove-destination "$u/." "$dest/" 2>/dev/null || cp -a --remove-destination "$u/." "$dest/"
	done
	for d in bin sbin lib lib64; do
		if [ -d "$dest/$d" ] && [ ! -L "$dest/$d" ]; then
			mkdir -p "$dest/usr/$d"
			cp -al --remove-destination "$dest/$d/." "$dest/usr/$d/" && rm -rf "${dest:?}/$d"
		fi
		[ -e "$dest/$d" ] || ln -s "usr/$d" "$dest/$d"
	done
}

fetch() {
	local want=() qwant=()
	# shellcheck disable=SC2206,SC2207 # package names: word splitting intended
	if [ -n "$SUITE" ]; then
		want=($PKGS $(lib_deps all "${APT_CACHE[@]}" -- xen-utils-$XENV xenstore-utils libxenmisc$XENV $TOOL_PKGS))
	else
		want=($PKGS $(lib_deps host "${APT_CACHE[@]}" -- xen-utils-$XENV xenstore-utils libxenmisc$XENV $TOOL_PKGS))
	fi
	# shellcheck disable=SC2206,SC2207
	qwant=($QEMU_PKGS $(lib_deps host "${HOST_APT_CACHE[@]}" -- qemu-system-x86))
	download "$DEBS" "${APT_GET[@]}" -- "${want[@]}"
	download "$CACHE/debs" "${HOST_APT_GET[@]}" -- "${qwant[@]}"
	ROOT=$WORK/root
	QROOT=$WORK/qroot
	unpack_union "$ROOT" "$DEBS" "${want[@]}"
	unpack_union "$QROOT" "$CACHE/debs" "${qwant[@]}"
	[ $UNPACKED_FRESH = 0 ] || say "unpacked $UNPACKED_FRESH new package(s) into $CACHE/unpacked"
	XEN_DEB=$(basename "$(newest_deb "$DEBS" "xen-hypervisor-$XENV-amd64")" .deb)
	KERNEL_DEB=$(basename "$(newest_deb "$DEBS" "$KPKG")" .deb)
}

T0=$(date +%s)
fetch
KVER=${KPKG#linux-image-}
VMLINUZ=$ROOT/boot/vmlinuz-$KVER
MODROOT=$ROOT/lib/modules/$KVER
BB=$ROOT/bin/busybox
QEMU=$QROOT/usr/bin/qemu-system-x86_64
QEMU_LD=$QROOT/usr/lib/x86_64-linux-gnu
XEN_LD=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu/systemd
# The dynamic loader that lists (and, in dom0, runs) the machine's binaries: the host's for
# Debian 12, trixie's own for Debian 13 (its libc is newer than the host's loader).
LDSO=/lib64/ld-linux-x86-64.so.2
[ -z "$SUITE" ] || LDSO=$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
XEN_GZ=$ROOT/boot/xen-$XENV-amd64.gz
for f in "$VMLINUZ" "$MODROOT" "$BB" "$QEMU" "$XEN_GZ" "$LDSO"; do
	[ -e "$f" ] || die "missing after unpack: $f"
done
XEN=$CACHE/$XEN_DEB.xen.elf
[ -s "$XEN" ] || { gunzip -c "$XEN_GZ" >"$XEN.tmp.$$" && mv "$XEN.tmp.$$" "$XEN"; }
GUEST_VMLINUX=$CACHE/$KERNEL_DEB.vmlinux
[ -s "$GUEST_VMLINUX" ] || E2E_ZSTD=$QROOT/usr/bin/zstd LD_LIBRARY_PATH=$QEMU_LD \
	python3 "$HERE/e2e_tools.py" vmlinux "$VMLINUZ" "$GUEST_VMLINUX" || die "cannot decompress $VMLINUZ"
if LD_LIBRARY_PATH=$QEMU_LD ldd "$QEMU" | grep -q 'not found'; then
	LD_LIBRARY_PATH=$QEMU_LD ldd "$QEMU" | grep 'not found' >&2
	die "qemu has unresolved libraries"
fi
T_FETCH=$(($(date +%s) - T0))
say "packages ready in ${T_FETCH}s (Xen $XENV from ${SUITE:-the host suite}, kernel $KVER)"

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
		out=$(LD_LIBRARY_PATH=$XEN_LD "$LDSO" --list "$f" 2>&1) || true
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
	python3 "$HERE/e2e_tools.py" modcopy "$MODROOT" "$G" \
		"$(python3 "$HERE/e2e_tools.py" moddeps "$MODROOT" xen-blkfront | tail -n1)"
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
		put_bin "$ROOT/usr/lib/xen-$XENV/bin/$f" usr/lib/xen-$XENV/bin
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
	for d in "$ROOT/usr/lib/x86_64-linux-gnu" /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu; do
		[ -e "$d/libgcc_s.so.1" ] && { echo "$d/libgcc_s.so.1" >>"$LIBS_WANTED"; break; }
	done
	sort -u "$LIBS_WANTED" | while read -r f; do
		case $f in
		*/ld-linux-x86-64.so.2) cp -L "$LDSO" "$R/usr/lib64/ld-linux-x86-64.so.2" ;;
		*) cp -L "$f" "$R/usr/lib/x86_64-linux-gnu/$(basename "$f")" ;;
		esac
	done
	[ -e "$R/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" ] || die "libgcc_s.so.1 not found on host"
	# kernel modules, flattened, with load order resolved from modinfo
	python3 "$HERE/e2e_tools.py" moddeps "$MODROOT" xen-evtchn xen-privcmd xenfs xen-gntdev \
		xen-gntalloc loop xen-blkback xen-blkfront >"$WORK/dom0.mods"
	python3 "$HERE/e2e_tools.py" moddeps "$MODROOT" nbd crc32c_generic drbd iscsi_tcp sd_mod >"$WORK/extra.mods"
	# shellcheck disable=SC2046 # one module path per line
	python3 "$HERE/e2e_tools.py" modcopy "$MODROOT" "$R/lib/modules/e2e" $(cat "$WORK/dom0.mods" "$WORK/extra.mods")
	# trixie's modules are .ko.xz; modcopy writes them uncompressed as .ko
	sed 's|.*/||; s/\.ko\.[a-z]*$/.ko/' "$WORK/dom0.mods" >"$R/lib/modules/e2e/dom0.order"
	sed 's|.*/||; s/\.ko\.[a-z]*$/.ko/' "$WORK/extra.mods" | grep -vxF -f "$R/lib/modules/e2e/dom0.order" \
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
		printf 'E2E_XEN=%q\n' "$XENV"
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
QEMU_MODULE_DIR=$QROOT/usr/lib/x86_64-linux-gnu/qemu LD_LIBRARY_PATH=$QEMU_LD "$QEMU" \
	-L "$QROOT/usr/share/qemu" -L "$QROOT/usr/share/seabios" \
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
# the hypervisor version dom0 reports (xl info) must be the one asked for
XEN_SEEN=$(sed -n 's/^E2E-XEN-VERSION \([^ ]*\).*/\1/p' "$CLEAN" | head -n1)
echo "  Xen (xl info in dom0): ${XEN_SEEN:-not reported} (asked for $XENV, Debian ${SUITE:-12 (host suite)})" >&2
if [ -n "$DONE_LINE" ]; then
	case $XEN_SEEN in
	"$XENV" | "$XENV".*) ;;
	*) echo "  harness: dom0 runs Xen '${XEN_SEEN:-?}', not $XENV" >&2; rc=3 ;;
	esac
fi
echo "  timing: fetch ${T_FETCH}s, build ${T_BUILD}s, qemu ${T_QEMU}s (dom0 /init at ${T_INIT:-never}s, scenarios done at ${T_DONE:-never}s), total $(($(date +%s) - T_START))s" >&2
echo "  qemu peak RSS: $((PEAK_KB / 1024)) MiB; serial log: $LOG" >&2
echo "${E2E_SUMMARY_PREFIX:-e2e:} $npass passed, $nfail failed, $nskip skipped" >&2
[ "$nxfail" -eq 0 ] || echo "  ($nxfail expected failures: $XFAIL)" >&2
exit $rc
