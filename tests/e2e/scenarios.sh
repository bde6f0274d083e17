#!/bin/bash
# End-to-end scenarios, run inside the Xen dom0 booted by tests/e2e/run.sh.
#
# Output protocol (parsed by run.sh from the serial log):
#   E2E-RESULT <name> PASS|FAIL|SKIP <detail>
#   E2E-DONE pass=N fail=M skip=K
# Everything else is diagnostics. A scenario is PASS only if every check in it
# ran and held; any failed or unrunnable check makes it FAIL.
set -u
# one /usr/lib/xen-<version>/bin: 4.17 (Debian 12) or 4.20 (Debian 13)
PATH=$(echo /usr/lib/xen-*/bin | tr ' ' ':'):/usr/sbin:/usr/bin:/sbin:/bin
export PATH
export LANG=C
# shellcheck disable=SC1091
[ -r /e2e/config.sh ] && . /e2e/config.sh
E2E_ONLY=${E2E_ONLY:-}

SCRIPTS=/etc/xen/scripts
IMG=/srv
GUEST_KERNEL=/e2e/vmlinux
GUEST_RAMDISK=/e2e/guest.cpio
NPASS=0 NFAIL=0 NSKIP=0

log() { printf '%s\n' "$*"; }

# ---------------------------------------------------------------- results
CUR=""
FAILS=()
begin() {
	CUR=$1
	FAILS=()
	log ""
	log "=== scenario $CUR: $2"
}
# ok DESC CMD...: run one check, remember it if it fails
ok() {
	local desc=$1
	shift
	if "$@"; then
		log "  ok: $desc"
		return 0
	fi
	log "  NOT OK: $desc"
	FAILS+=("$desc")
	return 1
}
# bad DESC: record a failure that was detected by hand
bad() {
	log "  NOT OK: $1"
	FAILS+=("$1")
}
finish() {
	if [ ${#FAILS[@]} -eq 0 ]; then
		log "E2E-RESULT $CUR PASS all checks held"
		NPASS=$((NPASS + 1))
	else
		local IFS=';'
		log "E2E-RESULT $CUR FAIL ${FAILS[*]}"
		NFAIL=$((NFAIL + 1))
	fi
}
skip() {
	log "E2E-RESULT $1 SKIP $2"
	NSKIP=$((NSKIP + 1))
}
wanted() {
	[ -z "$E2E_ONLY" ] && return 0
	case ",$E2E_ONLY," in *",$1,"*) return 0 ;; esac
	return 1
}

# ---------------------------------------------------------------- helpers
XL_OUT=""
# xlrun ARGS...: run xl with a hard timeout, echo its output, keep it in XL_OUT
xlrun() {
	local rc=0 t0
	t0=$(date +%s)
	XL_OUT=$(timeout -s KILL "${XL_TIMEOUT:-120}" xl "$@" 2>&1) || rc=$?
	log "  \$ xl $* -> rc=$rc ($(($(date +%s) - t0)) s)"
	[ -z "$XL_OUT" ] || printf '%s\n' "$XL_OUT" | sed 's/^/  xl| /'
	return $rc
}

# vdev_devid xvdX -> xenstore device id (202 << 8 | index << 4)
vdev_devid() {
	local l=${1#xvd}
	echo $((202 * 256 + ($(printf '%d' "'$l") - 97) * 16))
}
be_path() { echo "/local/domain/0/backend/vbd/$1/$(vdev_devid "$2")"; }
fe_path() { echo "/local/domain/$1/device/vbd/$(vdev_devid "$2")"; }
xsr() { xenstore-read "$1" 2>/dev/null; }
xs_absent() { ! xenstore-exists "$1" 2>/dev/null; }

# wait_until SECS CMD...: poll CMD every 0.2 s
wait_until() {
	local n=$(($1 * 5))
	shift
	while [ $n -gt 0 ]; do
		"$@" && return 0
		sleep 0.2
		n=$((n - 1))
	done
	"$@"
}
state_is() { [ "$(xsr "$1/state")" = "$2" ]; }
is_blk() { [ -b "$1" ]; }
not_exists() { [ ! -e "$1" ]; }
eq() { [ "$1" = "$2" ] || { log "    expected '$2', got '$1'"; return 1; }; }

mkimg() { # mkimg NAME MB -> path
	local p=$IMG/$1.img
	rm -f "$p"
	truncate -s "$2M" "$p"
	echo "$p"
}
# loops_of FILE: loop devices currently backed by FILE (via sysfs)
loops_of() {
	local f want
	want=$(readlink -f "$1")
	for f in /sys/block/loop*/loop/backing_file; do
		[ -r "$f" ] || continue
		[ "$(cat "$f")" = "$want" ] && { f=${f#/sys/block/}; echo "/dev/${f%%/*}"; }
	done
	return 0
}
nloops_of() { loops_of "$1" | grep -c . || true; }

# put DEV BLOCK TEXT / get DEV BLOCK: one 4 KiB block, O_DIRECT on devices
put() { printf '%s\n' "$3" | dd of="$1" bs=4096 seek="$2" count=1 conv=sync,notrunc oflag=direct status=none; }
get() { dd if="$1" bs=4096 skip="$2" count=1 iflag=direct status=none | head -n 1; }
getfile() { dd if="$1" bs=4096 skip="$2" count=1 status=none | head -n 1; }

# check_nodes BE EXPECTED_PATH|"" MODE(r|w) WAIT_CONNECTED(1|0)
# Sets PDP (physical-device-path) for the caller.
PDP=""
check_nodes() {
	local be=$1 want=$2 mode=$3 conn=$4 pd mm
	PDP=$(xsr "$be/physical-device-path")
	ok "physical-device-path written ($PDP)" test -n "$PDP" || return 1
	ok "physical-device-path is a block device" is_blk "$PDP" || return 1
	if [ -n "$want" ]; then
		ok "physical-device-path is $want" eq "$(readlink -f "$PDP")" "$(readlink -f "$want")"
	fi
	pd=$(xsr "$be/physical-device")
	mm=$(stat -L -c '%t:%T' "$PDP")
	ok "physical-device ($pd) = major:minor of $PDP ($mm)" eq "$pd" "$mm"
	ok "hotplug-status = connected" eq "$(xsr "$be/hotplug-status")" connected
	ok "mode = $mode" eq "$(xsr "$be/mode")" "$mode"
	if [ "$conn" = 1 ]; then
		ok "backend state reaches 4 (Connected)" wait_until 30 state_is "$be" 4
		local sys
		sys=/sys/bus/xen-backend/devices/vbd-$(basename "$(dirname "$be")")-$(basename "$be")/physical_device
		ok "blkback opened $mm (sysfs physical_device)" eq "$(cat "$sys" 2>/dev/null)" "$pd"
	fi
	return 0
}

# dom0_attach VDEV SPEC-SUFFIX: xl block-attach 0 'format=raw, vdev=VDEV, SPEC'
dom0_attach() { xlrun block-attach 0 "format=raw, vdev=$1, $2"; }
# detach_and_check VDEV: detach from dom0 and check the nodes are gone
detach_and_check() {
	local be fe
	be=$(be_path 0 "$1")
	fe=$(fe_path 0 "$1")
	ok "xl block-detach 0 $1 succeeds" xlrun block-detach 0 "$1"
	ok "backend dir $be removed" wait_until 10 xs_absent "$be"
	ok "frontend dir $fe removed" wait_until 10 xs_absent "$fe"
	ok "/dev/$1 gone" wait_until 10 not_exists "/dev/$1"
}
# xl_script_error: the libxl error line that carries the script's hotplug-error
xl_script_error() { printf '%s\n' "$XL_OUT" | grep -m1 -E 'script: .*[^ ]' || true; }

# guest_cfg NAME TARGET ACCESS MARKER -> config file path
guest_cfg() {
	local cfg=/tmp/$1.cfg
	cat >"$cfg" <<EOF
name = "$1"
type = "pv"
kernel = "$GUEST_KERNEL"
ramdisk = "$GUEST_RAMDISK"
extra = "console=hvc0 loglevel=4 e2e_marker=$4"
memory = 96
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
disk = [ 'format=raw, vdev=xvda, access=$3, script=block, target=$2' ]
EOF
	echo "$cfg"
}
dom_gone() { ! xl domid "$1" >/dev/null 2>&1; }
show_guest_logs() {
	local f
	for f in /var/log/xen/console/guest-"$1".log /var/log/xen/xl-"$1".log; do
		[ -s "$f" ] || continue
		log "  --- $f"
		sed 's/^/  | /' "$f" | tail -n 40
	done
}

# ================================================================ scenarios

sc_phy_rw() {
	begin phy-rw "block-attach a phy loop device to dom0, data, detach"
	local img loop be m
	img=$(mkimg s1 16)
	loop=$(losetup -f --show "$img")
	be=$(be_path 0 xvdb)
	if ok "xl block-attach phy $loop" dom0_attach xvdb "access=rw, script=block, target=$loop"; then
		check_nodes "$be" "$loop" w 1
		if ok "/dev/xvdb appears" wait_until 20 is_blk /dev/xvdb; then
			m="E2E-S1-$RANDOM$RANDOM"
			ok "write through /dev/xvdb" put /dev/xvdb 3 "$m"
			ok "data written via xvdb visible on $loop" eq "$(get "$loop" 3)" "$m"
			ok "write to $loop" put "$loop" 4 "$m-back"
			ok "data written on $loop visible via xvdb" eq "$(get /dev/xvdb 4)" "$m-back"
		fi
		detach_and_check xvdb
		ok "phy remove left the caller's $loop attached" eq "$(loops_of "$img")" "$loop"
	fi
	losetup -d "$loop" 2>/dev/null
	rm -f "$img"
	finish
}

sc_file_rw() {
	begin file-rw "block-attach an image file rw (script creates the loop), data, detach"
	local img be loop m
	img=$(mkimg s2 16)
	be=$(be_path 0 xvdb)
	if ok "xl block-attach file rw" dom0_attach xvdb "access=rw, script=block, target=$img"; then
		check_nodes "$be" "" w 1
		loop=$PDP
		ok "exactly one loop device backs $img" eq "$(nloops_of "$img")" 1
		ok "physical-device-path is the loop backing $img" eq "$(loops_of "$img")" "$loop"
		ok "loop device is read-write" eq "$(cat "/sys/block/${loop#/dev/}/ro" 2>/dev/null)" 0
		if ok "/dev/xvdb appears" wait_until 20 is_blk /dev/xvdb; then
			m="E2E-S2-$RANDOM$RANDOM"
			ok "write through /dev/xvdb" put /dev/xvdb 5 "$m"
			ok "read back through /dev/xvdb" eq "$(get /dev/xvdb 5)" "$m"
			ok "data landed in the image file" eq "$(getfile "$img" 5)" "$m"
		fi
		detach_and_check xvdb
		ok "loop device created by the script is gone" eq "$(nloops_of "$img")" 0
	fi
	finish
}

sc_file_ro() {
	begin file-ro "block-attach an image file access=ro: ro loop, writes refused"
	local img be loop m
	img=$IMG/s2.img
	[ -f "$img" ] || img=$(mkimg s2 16)
	m="E2E-S2RO-$RANDOM$RANDOM"
	printf '%s\n' "$m" | dd of="$img" bs=4096 seek=6 count=1 conv=sync,notrunc status=none
	be=$(be_path 0 xvdb)
	if ok "xl block-attach file ro" dom0_attach xvdb "access=ro, script=block, target=$img"; then
		check_nodes "$be" "" r 1
		loop=$PDP
		ok "exactly one loop device backs $img" eq "$(nloops_of "$img")" 1
		ok "loop device has the read-only flag" eq "$(cat "/sys/block/${loop#/dev/}/ro" 2>/dev/null)" 1
		if ok "/dev/xvdb appears" wait_until 20 is_blk /dev/xvdb; then
			ok "/dev/xvdb is read-only" eq "$(blockdev --getro /dev/xvdb)" 1
			ok "read through /dev/xvdb" eq "$(get /dev/xvdb 6)" "$m"
			if put /dev/xvdb 6 "MUST-NOT-LAND" 2>/dev/null; then
				bad "write through read-only /dev/xvdb was accepted"
			else
				log "  ok: write through /dev/xvdb refused"
			fi
			ok "image unchanged" eq "$(getfile "$img" 6)" "$m"
		fi
		detach_and_check xvdb
		ok "loop device created by the script is gone" eq "$(nloops_of "$img")" 0
	fi
	rm -f "$img"
	finish
}

# refused_create NAME TARGET: `xl create -p` of a second rw user must fail with
# the script's error in libxl's output, and the refused domain must be gone
refused_create() {
	local cfg err
	cfg=$(guest_cfg "$1" "$2" rw 0)
	if xlrun create -p "$cfg"; then
		bad "xl create of a second rw user of $2 succeeded"
		xl destroy "$1" >/dev/null 2>&1
		return 1
	fi
	log "  ok: xl create of a second rw user of $2 failed"
	err=$(xl_script_error)
	ok "libxl output carries the script's hotplug-error ($err)" test -n "$err"
	ok "refused domain $1 was cleaned up" wait_until 20 dom_gone "$1"
}
# refused_dom0_attach TARGET: a rw block-attach to dom0 must fail the same way
refused_dom0_attach() {
	local err
	if dom0_attach xvdb "access=rw, script=block, target=$1"; then
		bad "rw block-attach of $1 to dom0 succeeded"
		xl block-detach 0 xvdb >/dev/null 2>&1
		return 1
	fi
	log "  ok: rw block-attach of $1 to dom0 failed"
	err=$(xl_script_error)
	ok "libxl output carries the script's hotplug-error ($err)" test -n "$err"
	# libxl leaves the backend of a refused hot-plug in xenstore: the script's
	# verdict is still readable there
	local be
	be=$(be_path 0 xvdb)
	if xenstore-exists "$be" 2>/dev/null; then
		ok "refused backend: hotplug-status = busy" eq "$(xsr "$be/hotplug-status")" busy
		ok "refused backend: no physical-device (blkback must not open it)" \
			eval '[ -z "$(xsr "'"$be"'/physical-device")" ]'
	fi
	# detaching it runs the script's remove, which must not touch the holder's device
	if xenstore-exists "$be" 2>/dev/null; then
		xlrun block-detach 0 xvdb || true
		xenstore-rm "$(be_path 0 xvdb)" "$(fe_path 0 xvdb)" 2>/dev/null || true
	fi
}
# holder_create TARGET ACCESS: paused guest e2e-holder using TARGET; sets HBE
HBE=""
holder_create() {
	local cfg domid
	cfg=$(guest_cfg e2e-holder "$1" "$2" 0)
	ok "xl create -p e2e-holder ($2 $1)" xlrun create -p "$cfg" || return 1
	domid=$(xl domid e2e-holder 2>/dev/null)
	HBE=/local/domain/0/backend/vbd/$domid/51712
	check_nodes "$HBE" "" "$([ "$2" = rw ] && echo w || echo r)" 0
}
holder_destroy() {
	ok "xl destroy e2e-holder" xlrun destroy e2e-holder
	ok "holder's backend removed" wait_until 15 xs_absent "$HBE"
}

# Sharing is checked against a guest that holds the disk: dom0 has no
# /local/domain/0/vm node, and the upstream same_vm() treats a domain without
# one as "the same VM", so dom0 holding a disk does not block a guest.
sc_share_phy() {
	begin share-phy "loop device rw in a guest; a second guest and dom0 are refused rw"
	local img loop pd
	img=$(mkimg s3p 16)
	loop=$(losetup -f --show "$img")
	if holder_create "$loop" rw; then
		pd=$(xsr "$HBE/physical-device")
		refused_create e2e-second "$loop"
		refused_dom0_attach "$loop"
		ok "holder's physical-device unchanged" eq "$(xsr "$HBE/physical-device")" "$pd"
		holder_destroy
		ok "phy remove left the caller's $loop attached" eq "$(loops_of "$img")" "$loop"
	fi
	xl destroy e2e-holder >/dev/null 2>&1
	losetup -d "$loop" 2>/dev/null
	rm -f "$img"
	finish
}

sc_share_file() {
	begin share-file "image file rw in a guest; a second guest and dom0 are refused rw"
	local img pd
	img=$(mkimg s3f 16)
	if holder_create "$img" rw; then
		pd=$(xsr "$HBE/physical-device")
		refused_create e2e-second "$img"
		ok "no extra loop device left for $img" eq "$(nloops_of "$img")" 1
		refused_dom0_attach "$img"
		ok "no extra loop device left for $img" eq "$(nloops_of "$img")" 1
		ok "holder's physical-device unchanged" eq "$(xsr "$HBE/physical-device")" "$pd"
		holder_destroy
		ok "loop device released after destroy" wait_until 10 eval '[ "$(nloops_of "$img")" = 0 ]'
	fi
	xl destroy e2e-holder >/dev/null 2>&1
	rm -f "$img"
	finish
}

sc_share_ro() {
	begin share-ro "the same loop device read-only to a guest and to dom0 is allowed"
	local img loop m
	img=$(mkimg s3r 16)
	m="E2E-S3R-$RANDOM"
	printf '%s\n' "$m" | dd of="$img" bs=4096 count=1 conv=sync,notrunc status=none
	loop=$(losetup -f --show "$img")
	if holder_create "$loop" ro; then
		if ok "ro block-attach of $loop to dom0 while a guest has it ro" \
			dom0_attach xvdb "access=ro, script=block, target=$loop"; then
			check_nodes "$(be_path 0 xvdb)" "$loop" r 1
			ok "/dev/xvdb appears" wait_until 20 is_blk /dev/xvdb &&
				ok "read through /dev/xvdb" eq "$(get /dev/xvdb 0)" "$m"
			detach_and_check xvdb
		fi
		holder_destroy
	fi
	xl destroy e2e-holder >/dev/null 2>&1
	losetup -d "$loop" 2>/dev/null
	rm -f "$img"
	finish
}

sc_guest_pv() {
	begin guest-pv "xl create a PV guest with script=block on an image; guest writes via blkfront"
	local img cfg domid be marker loop got
	img=$(mkimg s4 16)
	marker=$RANDOM$RANDOM
	cfg=$(guest_cfg e2e-guest "$img" rw "$marker")
	if ok "xl create guest" xlrun create "$cfg"; then
		domid=$(xl domid e2e-guest 2>/dev/null)
		be=/local/domain/0/backend/vbd/$domid/51712
		log "  guest domid=$domid"
		check_nodes "$be" "" w 1
		loop=$PDP
		ok "exactly one loop device backs $img" eq "$(nloops_of "$img")" 1
		if [ -b "$loop" ]; then
			got=""
			ok "guest's marker arrives on $loop" wait_until 90 eval '[ "$(get "$loop" 0)" = "E2E-GUEST-MARKER-$marker" ]'
			got=$(get "$loop" 2)
			ok "guest read its write back through blkfront ($got)" eq "$got" "E2E-GUEST-STATUS ok"
			put "$loop" 1 "E2E-GO-DOWN" || bad "could not signal the guest"
		fi
		ok "guest powers off and is destroyed" wait_until 120 dom_gone e2e-guest
		ok "guest backend dir removed" wait_until 20 xs_absent "/local/domain/0/backend/vbd/$domid"
		ok "libxl ran remove: no loop device left for $img" wait_until 10 eval '[ "$(nloops_of "$img")" = 0 ]'
		ok "marker readable from the image after shutdown" eq "$(getfile "$img" 0)" "E2E-GUEST-MARKER-$marker"
	fi
	dom_gone e2e-guest || xl destroy e2e-guest >/dev/null 2>&1
	show_guest_logs e2e-guest
	rm -f "$img"
	finish
}

sc_upstream_concurrent() {
	begin upstream-concurrent "Debian's shell block (script=block-upstream) and ours attach concurrently"
	local a b p1 p2 rc1 rc2 la lb
	if [ ! -x $SCRIPTS/block-upstream ]; then
		bad "$SCRIPTS/block-upstream missing"
		finish
		return
	fi
	a=$(mkimg s5a 16)
	b=$(mkimg s5b 16)
	(timeout -s KILL 120 xl block-attach 0 "format=raw, vdev=xvdb, access=rw, script=block-upstream, target=$a" >/tmp/s5a.out 2>&1
	echo $? >/tmp/s5a.rc) &
	p1=$!
	(timeout -s KILL 120 xl block-attach 0 "format=raw, vdev=xvdc, access=rw, script=block, target=$b" >/tmp/s5b.out 2>&1
	echo $? >/tmp/s5b.rc) &
	p2=$!
	wait $p1 $p2
	rc1=$(cat /tmp/s5a.rc) rc2=$(cat /tmp/s5b.rc)
	sed 's/^/  xl(upstream)| /' /tmp/s5a.out
	sed 's/^/  xl(ours)| /' /tmp/s5b.out
	ok "attach via block-upstream succeeded (rc=$rc1)" eq "$rc1" 0
	ok "attach via block succeeded (rc=$rc2)" eq "$rc2" 0
	if [ "$rc1" = 0 ]; then
		check_nodes "$(be_path 0 xvdb)" "" w 1
		la=$PDP
	fi
	if [ "$rc2" = 0 ]; then
		check_nodes "$(be_path 0 xvdc)" "" w 1
		lb=$PDP
	fi
	if [ "$rc1" = 0 ] && [ "$rc2" = 0 ]; then
		ok "distinct loop devices ($la, $lb)" test "$la" != "$lb"
		ok "$la backs $a" eq "$(loops_of "$a")" "$la"
		ok "$lb backs $b" eq "$(loops_of "$b")" "$lb"
		if wait_until 20 is_blk /dev/xvdb && wait_until 20 is_blk /dev/xvdc; then
			ok "write xvdb" put /dev/xvdb 0 "S5A"
			ok "write xvdc" put /dev/xvdc 0 "S5B"
			ok "xvdb data in $a" eq "$(getfile "$a" 0)" S5A
			ok "xvdc data in $b" eq "$(getfile "$b" 0)" S5B
		else
			bad "/dev/xvdb or /dev/xvdc did not appear"
		fi
	fi
	[ "$rc1" = 0 ] && detach_and_check xvdb
	[ "$rc2" = 0 ] && detach_and_check xvdc
	ok "no loop left for $a" eq "$(nloops_of "$a")" 0
	ok "no loop left for $b" eq "$(nloops_of "$b")" 0
	rm -f "$a" "$b"
	finish
}

sc_lock_interop() {
	begin lock-interop "our block waits while Debian's locking.sh holds /var/run/xen-hotplug/block"
	local img holder xlpid rc be
	img=$(mkimg s5c 16)
	be=$(be_path 0 xvdd)
	rm -f /tmp/lock.held /tmp/lock.released
	(
		set +u
		# shellcheck disable=SC1091
		. $SCRIPTS/locking.sh
		claim_lock block
		touch /tmp/lock.held
		sleep 12
		touch /tmp/lock.released
		release_lock block
	) &
	holder=$!
	if ! wait_until 10 test -e /tmp/lock.held; then
		bad "test could not take the lock with Debian's locking.sh"
		kill $holder 2>/dev/null
		finish
		return
	fi
	log "  lock held by the upstream shell protocol (pid $holder)"
	(timeout -s KILL 120 xl block-attach 0 "format=raw, vdev=xvdd, access=rw, script=block, target=$img" >/tmp/s5c.out 2>&1
	echo $? >/tmp/s5c.rc) &
	xlpid=$!
	sleep 9
	if [ -e /tmp/lock.released ]; then
		bad "lock holder released too early; test timing invalid"
	else
		ok "attach still in progress while the lock is held" kill -0 $xlpid
		ok "no physical-device written while the lock is held" eval '[ -z "$(xsr "'"$be"'/physical-device")" ]'
	fi
	wait $holder
	wait $xlpid
	rc=$(cat /tmp/s5c.rc)
	sed 's/^/  xl| /' /tmp/s5c.out
	if ok "attach completes after the lock is released (rc=$rc)" eq "$rc" 0; then
		check_nodes "$be" "" w 1
		detach_and_check xvdd
	fi
	ok "no loop left for $img" eq "$(nloops_of "$img")" 0
	ok "lock file not left behind by a holder" wait_until 5 not_exists /var/run/xen-hotplug/block
	rm -f "$img"
	finish
}

# ---------------------------------------------------------------- helper personalities
# probe_helper NAME: run block-NAME add against a dummy backend and log what it
# said. Returns 1 (after printing a SKIP) if the script is absent or reports
# "not supported yet".
probe_helper() {
	local s=$1 f=$SCRIPTS/block-$1 xp=backend/vbd/990/51712 out herr
	if [ ! -e "$f" ]; then
		skip "$s" "SKIP: $f not installed"
		return 1
	fi
	xenstore-write "$xp/params" "e2e-probe" "$xp/mode" w "$xp/type" phy "$xp/frontend-id" 990 "$xp/state" 2
	out=$(XENBUS_PATH=$xp XENBUS_TYPE=vbd XENBUS_BASE_PATH=backend script=$f timeout -s KILL 20 "$f" add 2>&1 </dev/null)
	herr=$(xsr "$xp/hotplug-error")
	xenstore-rm "/local/domain/0/backend/vbd/990" 2>/dev/null
	log "  probe block-$s add: out='$out' hotplug-error='$herr'"
	if printf '%s\n%s\n' "$out" "$herr" | grep -qi 'not supported yet'; then
		skip "$s" "SKIP: not yet supported by the binary"
		return 1
	fi
	return 0
}

# drop_leftover_vbds: detach dom0 vbds a failed check left behind (before the
# daemons or resources they use are torn down)
drop_leftover_vbds() {
	local v
	for v in xvdb xvdc xvdd; do
		xenstore-exists "$(be_path 0 $v)" 2>/dev/null || continue
		log "  cleanup: detaching leftover $v"
		xl block-detach 0 $v >/dev/null 2>&1
		xenstore-rm "$(be_path 0 $v)" "$(fe_path 0 $v)" 2>/dev/null
	done
	return 0
}
# load_extra MOD: insmod /lib/modules/e2e/extra.order (dependencies first) up to MOD
load_extra() {
	local m n
	while read -r m; do
		[ -n "$m" ] || continue
		n=${m%.ko}
		n=${n//-/_}
		[ -e "/sys/module/$n" ] || insmod "/lib/modules/e2e/$m" || log "  insmod $m failed"
		[ "$n" = "${1//-/_}" ] && break
	done </lib/modules/e2e/extra.order
}
# need_tools TOOL...: record a failure (and return 1) if a tool is missing from dom0
need_tools() {
	local t miss=""
	for t in "$@"; do command -v "$t" >/dev/null || miss="$miss $t"; done
	[ -z "$miss" ] && return 0
	bad "missing from the dom0 image:$miss"
	return 1
}
# bg_start NAME CMD...: run a daemon in the foreground of a background job; sets BG_PID
BG_PID=""
bg_start() {
	local name=$1
	shift
	"$@" >"/tmp/$name.log" 2>&1 &
	BG_PID=$!
	log "  started $name (pid $BG_PID): $*"
}
# bg_stop NAME PID: stop a daemon started by bg_start, show the tail of its output
bg_stop() {
	[ -n "$2" ] || return 0
	kill "$2" 2>/dev/null
	wait_until 5 eval '! kill -0 '"$2"' 2>/dev/null' || kill -9 "$2" 2>/dev/null
	wait "$2" 2>/dev/null
	if [ -s "/tmp/$1.log" ]; then
		log "  --- $1 output (tail)"
		tail -n 15 "/tmp/$1.log" | sed 's/^/  | /'
	fi
}

ISCSI_IQN=iqn.2026-01.org.xbh-e2e:disk1
iscsi_sessions() { iscsiadm -m session 2>/dev/null | grep -c -F "$ISCSI_IQN" || true; }
# iscsid_up PID: iscsid alive and answering iscsiadm (exit 20 = cannot connect to iscsid)
iscsid_up() {
	kill -0 "$1" 2>/dev/null || return 1
	iscsiadm -m session >/dev/null 2>&1
	[ $? != 20 ]
}
# refused_second_iscsi TARGET: a second rw attach of the same LUN (xvdc) must be busy
refused_second_iscsi() {
	local err be
	be=$(be_path 0 xvdc)
	if dom0_attach xvdc "access=rw, script=block-iscsi, target=$1"; then
		bad "second rw block-attach of the same LUN succeeded"
		xl block-detach 0 xvdc >/dev/null 2>&1
		return 1
	fi
	log "  ok: second rw block-attach of the same LUN failed"
	err=$(xl_script_error)
	ok "libxl output carries the script's hotplug-error ($err)" test -n "$err"
	if xenstore-exists "$be" 2>/dev/null; then
		ok "refused backend: hotplug-status = busy" eq "$(xsr "$be/hotplug-status")" busy
		ok "refused backend: no physical-device" eval '[ -z "$(xsr "'"$be"'/physical-device")" ]'
		# its remove must not log out the session the first disk uses
		xlrun block-detach 0 xvdc || true
		xenstore-rm "$be" "$(fe_path 0 xvdc)" 2>/dev/null || true
	fi
	ok "the first disk's session survived the refusal and its remove" eq "$(iscsi_sessions)" 1
}

sc_iscsi() {
	load_extra sd_mod
	probe_helper iscsi || return 0
	begin iscsi "block-iscsi against tgtd in dom0 (open-iscsi, iscsi_tcp, udev by-path links)"
	local img be m="" tpid="" ipid="" upid="" target dev link
	ok "iscsi_tcp and sd_mod loaded" eval '[ -e /sys/module/iscsi_tcp ] && [ -e /sys/module/sd_mod ]'
	if ! need_tools tgtd tgtadm iscsid iscsiadm udevadm /usr/lib/systemd/systemd-udevd; then
		finish
		return
	fi
	img=$(mkimg iscsi 16)
	link=/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-$ISCSI_IQN-lun-1
	target="iqn=$ISCSI_IQN,portal=127.0.0.1:3260,lun=1"
	# udev: Debian's systemd-udevd with its 60-persistent-storage rules makes the link
	mkdir -p /run/udev
	bg_start udevd /usr/lib/systemd/systemd-udevd --resolve-names=never
	upid=$BG_PID
	# no `udevadm trigger`: only the iSCSI disk, added after this, needs its link
	ok "systemd-udevd running" wait_until 10 udevadm control --ping
	# target: tgtd on loopback only, LUN 1 backed by an image file
	mkdir -p /run/tgtd /var/lib/iscsi /run/lock/iscsi /etc/iscsi/nodes /etc/iscsi/send_targets
	bg_start tgtd tgtd -f --iscsi portal=127.0.0.1:3260
	tpid=$BG_PID
	if ok "tgtd answers tgtadm" wait_until 15 eval 'tgtadm --lld iscsi --op show --mode target >/dev/null 2>&1' &&
		ok "tgtadm: new target $ISCSI_IQN" tgtadm --lld iscsi --op new --mode target --tid 1 -T "$ISCSI_IQN" &&
		ok "tgtadm: LUN 1 backed by $img" tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$img" &&
		ok "tgtadm: allow all initiators" tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL; then
		tgtadm --lld iscsi --op show --mode target 2>&1 | grep -E 'Target|LUN:|Backing store path' | sed 's/^/  tgt| /'
		# its own session: on SIGTERM iscsid signals its whole process group
		bg_start iscsid setsid iscsid -f
		ipid=$BG_PID
		ok "iscsid running" wait_until 10 iscsid_up "$ipid"
		ok "no iSCSI session before attach" eq "$(iscsi_sessions)" 0
		be=$(be_path 0 xvdb)
		if ok "xl block-attach script=block-iscsi target=$target" \
			dom0_attach xvdb "access=rw, script=block-iscsi, target=$target"; then
			check_nodes "$be" "" w 1
			dev=$PDP
			ok "one session to $ISCSI_IQN" eq "$(iscsi_sessions)" 1
			iscsiadm -m session 2>&1 | sed 's/^/  iscsiadm| /'
			ok "udev made $link" test -L "$link"
			ok "physical-device-path ($dev) is the LUN's by-path disk" \
				eq "$(readlink -f "$dev")" "$(readlink -f "$link")"
			ok "the disk is a SCSI disk ($(readlink -f "$dev"))" \
				eval 'case "$(readlink -f "$dev")" in /dev/sd*) true ;; *) false ;; esac'
			if ok "/dev/xvdb appears" wait_until 20 is_blk /dev/xvdb; then
				m="E2E-ISCSI-$RANDOM$RANDOM"
				ok "write through /dev/xvdb" put /dev/xvdb 7 "$m"
				ok "read back through /dev/xvdb" eq "$(get /dev/xvdb 7)" "$m"
				ok "data reached the target's backing image" wait_until 5 eval '[ "$(getfile "$img" 7)" = "$m" ]'
			fi
			refused_second_iscsi "$target"
			[ -b /dev/xvdb ] && ok "/dev/xvdb still reads after the refusal" eq "$(get /dev/xvdb 7)" "$m"
			dev=$(readlink -f "$dev")
			detach_and_check xvdb
			ok "session logged out after remove" wait_until 5 eval '[ "$(iscsi_sessions)" = 0 ]'
			ok "SCSI disk $dev gone" wait_until 5 not_exists "$dev"
			ok "by-path link gone" wait_until 5 not_exists "$link"
		fi
	fi
	drop_leftover_vbds
	# never leave a session behind for the next scenarios
	[ "$(iscsi_sessions)" = 0 ] || iscsiadm -m node -T "$ISCSI_IQN" --logout >/dev/null 2>&1
	bg_stop iscsid "$ipid"
	bg_stop tgtd "$tpid"
	bg_stop udevd "$upid"
	rm -f "$img"
	finish
}

DRBD_RES=e2e
drbd_role() { drbdadm role "$DRBD_RES" 2>/dev/null | head -n 1; }
role_is() { case $(drbd_role) in "$1"/* | "$1") return 0 ;; esac; return 1; }
# drbdrun ARGS...: drbdadm with its output logged
drbdrun() {
	local rc=0 out
	out=$(timeout -s KILL 60 drbdadm "$@" 2>&1 </dev/null) || rc=$?
	log "  \$ drbdadm $* -> rc=$rc"
	[ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/  drbdadm| /'
	return $rc
}

sc_drbd() {
	load_extra drbd
	probe_helper drbd || return 0
	begin drbd "block-drbd on a single-node DRBD 8.4 resource (peer never reachable)"
	local img loop be m up=0
	ok "drbd module loaded ($(head -n 1 /proc/drbd 2>/dev/null))" test -e /proc/drbd
	if ! need_tools drbdadm drbdsetup drbdmeta drbdadm-84 drbdsetup-84; then
		finish
		return
	fi
	hostname dom0
	mkdir -p /var/lib/drbd /run/drbd
	img=$(mkimg drbd 32)
	loop=$(losetup -f --show "$img")
	cat >/etc/drbd.conf <<CONF
global { usage-count no; }
resource $DRBD_RES {
	device /dev/drbd0;
	disk $loop;
	meta-disk internal;
	on dom0 { address 127.0.0.1:7789; }
	on e2e-absent-peer { address 127.0.0.2:7789; }
}
CONF
	if ok "drbdadm create-md" drbdrun create-md --force "$DRBD_RES" &&
		ok "drbdadm up" drbdrun up "$DRBD_RES" && up=1 &&
		ok "initial primary --force (no peer to sync from)" drbdrun primary --force "$DRBD_RES" &&
		ok "drbdadm secondary" drbdrun secondary "$DRBD_RES"; then
		ok "role before attach is Secondary ($(drbd_role))" role_is Secondary
		sed 's/^/  proc-drbd| /' /proc/drbd
		be=$(be_path 0 xvdb)
		if ok "xl block-attach script=block-drbd target=$DRBD_RES" \
			dom0_attach xvdb "access=rw, script=block-drbd, target=$DRBD_RES"; then
			check_nodes "$be" /dev/drbd0 w 1
			ok "role after attach is Primary ($(drbd_role))" role_is Primary
			if ok "/dev/xvdb appears" wait_until 20 is_blk /dev/xvdb; then
				m="E2E-DRBD-$RANDOM$RANDOM"
				ok "write through /dev/xvdb" put /dev/xvdb 7 "$m"
				ok "read back through /dev/xvdb" eq "$(get /dev/xvdb 7)" "$m"
				ok "data reached the backing disk $loop" eq "$(get "$loop" 7)" "$m"
				ok "data reached the backing image" wait_until 5 eval '[ "$(getfile "$img" 7)" = "$m" ]'
			fi
			detach_and_check xvdb
			ok "demoted to Secondary after remove ($(drbd_role))" wait_until 3 role_is Secondary
		fi
	fi
	drop_leftover_vbds
	[ -e /proc/drbd ] && sed 's/^/  proc-drbd| /' /proc/drbd
	[ "$up" = 0 ] || drbdrun down "$DRBD_RES" || true
	losetup -d "$loop" 2>/dev/null
	rm -f "$img"
	finish
}

nbd_size() { cat "/sys/block/${1#/dev/}/size" 2>/dev/null || echo 0; }
# nbd_attach_cycle TARGET: attach through block-nbd, check, data, detach
nbd_attach_cycle() {
	local target=$1 be nbd m
	be=$(be_path 0 xvdb)
	log "  -- target '$target'"
	ok "xl block-attach script=block-nbd target=$target" \
		dom0_attach xvdb "access=rw, script=block-nbd, target=$target" || return 1
	check_nodes "$be" "" w 1
	nbd=$PDP
	ok "physical-device-path is an nbd device ($nbd)" eval 'case "$nbd" in /dev/nbd[0-9]*) true ;; *) false ;; esac'
	ok "$nbd is connected (size > 0)" eval '[ "$(nbd_size "$nbd")" -gt 0 ]'
	if ok "/dev/xvdb appears" wait_until 20 is_blk /dev/xvdb; then
		m="E2E-NBD-$RANDOM$RANDOM"
		ok "write through /dev/xvdb" put /dev/xvdb 7 "$m"
		ok "read back through /dev/xvdb" eq "$(get /dev/xvdb 7)" "$m"
		ok "data reached the nbd-server's image" wait_until 5 eval '[ "$(getfile "$IMG/nbd.img" 7)" = "$m" ]'
	fi
	detach_and_check xvdb
	ok "$nbd disconnected after remove" wait_until 10 eval '[ "$(nbd_size "$nbd")" = 0 ]'
}

sc_nbd() {
	[ -e /sys/module/nbd ] || insmod /lib/modules/e2e/nbd.ko || log "  insmod nbd failed"
	probe_helper nbd || return 0
	begin nbd "block-nbd against nbd-server in dom0 (unix socket URI and TCP URI)"
	local img spid=""
	ok "nbd module loaded" test -e /sys/module/nbd
	if ! command -v nbd-server >/dev/null || ! command -v nbd-client >/dev/null; then
		bad "nbd-server/nbd-client missing from the dom0 image"
		finish
		return
	fi
	img=$(mkimg nbd 16)
	cat >/tmp/nbd.conf <<EOF
[generic]
	listenaddr = 127.0.0.1
	port = 10809
	unixsock = /run/nbd.sock
	duallisten = true
[exp]
	exportname = $img
EOF
	rm -f /run/nbd-server.pid /run/nbd.sock
	nbd-server -C /tmp/nbd.conf -p /run/nbd-server.pid 2>&1 | sed 's/^/  nbd-server| /'
	if ok "nbd-server listening" wait_until 10 test -S /run/nbd.sock; then
		spid=$(cat /run/nbd-server.pid 2>/dev/null)
		log "  nbd-server pid $spid"
		nbd_attach_cycle "nbd+unix:///exp?socket=/run/nbd.sock"
		nbd_attach_cycle "nbd://127.0.0.1:10809/exp"
	fi
	[ -z "$spid" ] || kill "$spid" 2>/dev/null
	rm -f "$img"
	finish
}

# driver-domain scenarios (driver-*): driver-scenarios.sh
# shellcheck disable=SC1091
[ -r /e2e/driver-scenarios.sh ] && . /e2e/driver-scenarios.sh
# ---------------------------------------------------------------- attach latency
# Not in the default set: `--only latency,leftovers` (make e2e-latency). What a user waits for:
# `xl block-attach` + `xl block-detach` of a phy loop device to dom0, through our `block` and
# through Debian's shell `block` (installed as block-upstream), with N other guests' vbds in
# xenstore populated as bench/run populates them (one vbd per guest with the nodes libxl
# writes, all with physical-device, every second also with physical-device-path to a block
# device node, every fourth mode r, each domain with its vm). The fake guests' domids start
# at 1001, clear of real guests. Prints one E2E-LATENCY line per sample; e2e_tools.py
# latency-md makes the BENCHMARKS.md table from them.
LAT_ROUNDS=${E2E_LAT_ROUNDS:-5}
LAT_SIZES=${E2E_LAT_SIZES:-0 200}
LAT_BASE=1000
LAT_POP=0
# lat_populate N: make exactly N fake guests (adds or removes the difference)
lat_populate() {
	local n=$1 d id be fe major mode vm pd args=()
	mkdir -p /tmp/xbench
	# printf -v and arithmetic, no $(...): every fork costs under TCG; one xenstore-write
	# per 20 guests
	d=$((LAT_POP + 1))
	while [ $d -le "$n" ]; do
		id=$((LAT_BASE + d))
		be=/local/domain/0/backend/vbd/$id/51712
		fe=/local/domain/$id/device/vbd/51712
		if ((d % 2)); then major=253; else major=254; fi
		if ((d % 4)); then mode=w; else mode=r; fi
		printf -v vm '/vm/00000000-0000-4000-8000-%012d' $id
		printf -v pd '%x:%x' $major $id
		args+=(/local/domain/$id/vm "$vm" /local/domain/$id/name "guest$id" /local/domain/$id/domid $id
			"$fe/backend" "$be" "$fe/backend-id" 0 "$fe/state" 4
			"$be/frontend" "$fe" "$be/frontend-id" $id "$be/params" "/dev/xbench/d$d"
			"$be/script" /etc/xen/scripts/block "$be/online" 1 "$be/removable" 0 "$be/bootable" 1
			"$be/state" 4 "$be/dev" xvda "$be/type" phy "$be/mode" $mode
			"$be/device-type" disk "$be/discard-enable" 1 "$be/physical-device" "$pd"
			"$be/hotplug-status" connected)
		if ! ((d % 2)); then
			[ -e "/tmp/xbench/d$d" ] || mknod "/tmp/xbench/d$d" b $major $id
			args+=("$be/physical-device-path" "/tmp/xbench/d$d")
		fi
		if ((d % 20 == 0 || d == n)); then
			xenstore-write "${args[@]}" || return 1
			args=()
		fi
		d=$((d + 1))
	done
	d=$((n + 1))
	while [ $d -le "$LAT_POP" ]; do
		xenstore-rm "/local/domain/0/backend/vbd/$((LAT_BASE + d))" "/local/domain/$((LAT_BASE + d))" || return 1
		d=$((d + 1))
	done
	LAT_POP=$n
	[ "$(xenstore-list /local/domain/0/backend/vbd 2>/dev/null | grep -c '^1[0-9][0-9][0-9]$')" = "$n" ]
}
# lat_settle N WHO ROUND: after libxl killed a script at its 40 s timeout, wait (untimed)
# until nothing holds the block lock any more, so the next sample does not pay for it.
# libxl kills only the script's own process: Debian's `block` runs its sharing check in a
# command substitution, a subshell that inherited the locked fd and goes on walking every
# vbd after its parent is gone. How long it held on is logged (E2E-LATENCY-ORPHAN), and the
# lock file the killed script never removed is removed once free.
LOCKFILE=/var/run/xen-hotplug/block
lat_busy() { [ -e $LOCKFILE ] && ! flock -n $LOCKFILE true 2>/dev/null; }
lat_settle() {
	local t0 t1 i=0 p killed=""
	t0=$(us)
	while lat_busy && [ $i -lt 120 ]; do
		sleep 0.5
		i=$((i + 1))
	done
	# at N=200 under TCG the orphan walks the vbds for many minutes: after 60 s, end the
	# killed script's remnants (processes running block-upstream), by PID
	if lat_busy; then
		for p in /proc/[0-9]*; do
			case $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) in
			*block-upstream*) kill -9 "${p#/proc/}" 2>/dev/null && killed="$killed ${p#/proc/}" ;;
			esac
		done
		wait_until 10 eval '! lat_busy'
	fi
	t1=$(us)
	log "E2E-LATENCY-ORPHAN n=$1 script=$2 round=$3 lock_busy_after_kill_us=$((t1 - t0))${killed:+ killed=${killed# }}"
	flock -n $LOCKFILE rm -f $LOCKFILE 2>/dev/null
	return 0
}
# us: wall clock in microseconds (bash's EPOCHREALTIME)
us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
# lat_once N WHO SCRIPT LOOP ROUND: one timed attach + detach, checked outside the timing
lat_once() {
	local n=$1 who=$2 script=$3 loop=$4 round=$5 be t0 t1 t2 pd mm
	be=$(be_path 0 xvdb)
	t0=$(us)
	if ! timeout -s KILL 120 xl block-attach 0 "format=raw, vdev=xvdb, access=rw, script=$script, target=$loop" >/tmp/lat.out 2>&1; then
		t1=$(us)
		sed 's/^/  xl| /' /tmp/lat.out
		bad "N=$n $who round $round: xl block-attach failed"
		# a failed sample is data too (libxl's 40 s hotplug timeout): the table counts it
		log "E2E-LATENCY-FAILED n=$n script=$who round=$round after_us=$((t1 - t0))"
		xl block-detach 0 xvdb >/dev/null 2>&1
		xenstore-rm "$be" "$(fe_path 0 xvdb)" 2>/dev/null
		lat_settle "$n" "$who" "$round"
		return 1
	fi
	t1=$(us)
	pd=$(xsr "$be/physical-device")
	mm=$(stat -L -c '%t:%T' "$loop")
	if ! timeout -s KILL 120 xl block-detach 0 xvdb >/tmp/lat.out 2>&1; then
		sed 's/^/  xl| /' /tmp/lat.out
		bad "N=$n $who round $round: xl block-detach failed"
		return 1
	fi
	t2=$(us)
	[ "$pd" = "$mm" ] || bad "N=$n $who round $round: physical-device '$pd', expected $mm"
	wait_until 10 xs_absent "$be" || bad "N=$n $who round $round: backend left after detach"
	log "E2E-LATENCY n=$n script=$who round=$round attach_us=$((t1 - t0)) detach_us=$((t2 - t1))"
}

sc_latency() {
	begin latency "xl block-attach + block-detach timed: ours vs Debian's block, N other guests' vbds"
	local img loop n i who
	if [ ! -x $SCRIPTS/block-upstream ]; then
		bad "$SCRIPTS/block-upstream missing"
		finish
		return
	fi
	img=$(mkimg lat 16)
	loop=$(losetup -f --show "$img")
	for n in $LAT_SIZES; do
		if ! lat_populate "$n"; then
			bad "could not populate $n other guests' vbds"
			break
		fi
		log "  N=$n: $(xenstore-list /local/domain/0/backend/vbd 2>/dev/null | grep -c .) vbd backends in xenstore"
		i=1
		while [ $i -le "$LAT_ROUNDS" ]; do
			# alternate which script goes first, as bench/run does
			if [ $((i % 2)) = 1 ]; then set -- ours:block debian:block-upstream; else set -- debian:block-upstream ours:block; fi
			for who in "$@"; do
				lat_once "$n" "${who%%:*}" "${who#*:}" "$loop" "$i"
			done
			i=$((i + 1))
		done
	done
	lat_populate 0 || bad "could not remove the fake guests"
	rm -rf /tmp/xbench
	ok "phy remove left the caller's $loop attached" eq "$(loops_of "$img")" "$loop"
	losetup -d "$loop" 2>/dev/null
	rm -f "$img"
	finish
}

# ================================================================ main
log "E2E-SCENARIOS start mode=${E2E_MODE:-?} only=${E2E_ONLY:-all}"
# the Xen version dom0 runs, as the hypervisor reports it (run.sh prints it and checks it is
# the one asked for)
XL_INFO=$(xl info 2>&1)
log "E2E-XEN-VERSION $(printf '%s\n' "$XL_INFO" | awk -F' *: *' '$1 == "xen_major" {M = $2} $1 == "xen_minor" {m = $2}
	$1 == "xen_extra" {e = $2} END {print M "." m e}') (asked for ${E2E_XEN:-?}; dom0 kernel $(uname -r))"
printf '%s\n' "$XL_INFO" | grep -E '^(release|xen_version|xen_caps|xen_commandline|cc_compiler) ' | sed 's/^/  xl-info| /'
log "scripts in $SCRIPTS:"
ls -l $SCRIPTS | sed 's/^/  /'
log "xenstore /local/domain/0:"
xenstore-ls -f /local/domain/0 2>&1 | head -n 20 | sed 's/^/  /'

T0=$(date +%s)
for sc in phy-rw file-rw file-ro share-phy share-file share-ro guest-pv upstream-concurrent lock-interop \
	nbd iscsi drbd driver-file-phy driver-share driver-share-ro driver-leftovers; do
	wanted "$sc" || continue
	t=$(date +%s)
	"sc_${sc//-/_}"
	log "  ($sc took $(($(date +%s) - t)) s)"
	# leftovers from a failed scenario would poison the next ones
	for v in xvdb xvdc xvdd; do
		xenstore-exists "$(be_path 0 $v)" 2>/dev/null && xl block-detach 0 $v >/dev/null 2>&1
	done
done

# only when asked for by name (make e2e-latency): several minutes under TCG
if [ -n "$E2E_ONLY" ] && wanted latency; then
	t=$(date +%s)
	sc_latency
	log "  (latency took $(($(date +%s) - t)) s)"
fi
# the driver domain must be gone before the leftovers check
declare -F dd_down >/dev/null && dd_down

if wanted leftovers; then
	begin leftovers "after all scenarios: no loop devices, no vbd backends, no guests"
	ok "no loop devices attached" eval '[ -z "$(losetup -a)" ]'
	ok "no vbd backends in xenstore" eval '[ -z "$(xenstore-list /local/domain/0/backend/vbd 2>/dev/null)" ]'
	ok "only Domain-0 running" eval '[ "$(xl list | grep -vc -e "^Name" -e "^Domain-0")" = 0 ]'
	ok "no lock file left in /var/run/xen-hotplug" eval '[ ! -e /var/run/xen-hotplug/block ]'
	ok "no iSCSI sessions" eval '[ -z "$(ls /sys/class/iscsi_session 2>/dev/null)" ]'
	ok "no DRBD minors configured" eval '! grep -q "^ *[0-9][0-9]*: cs:" /proc/drbd 2>/dev/null'
	ok "no nbd device connected" eval '! grep -q -v "^0$" /sys/block/nbd*/size 2>/dev/null'
	finish
fi

log ""
log "--- dom0 diagnostics"
log "loop devices:"
losetup -a | sed 's/^/  /'
log "xen-hotplug.log (tail):"
tail -n 40 /var/log/xen/xen-hotplug.log 2>/dev/null | sed 's/^/  /'
log "syslog (hotplug lines, tail):"
grep -E 'scripts|hotplug|block' /var/log/messages 2>/dev/null | tail -n 40 | sed 's/^/  /'
log "scenarios took $(($(date +%s) - T0)) s"
log "E2E-DONE pass=$NPASS fail=$NFAIL skip=$NSKIP"
