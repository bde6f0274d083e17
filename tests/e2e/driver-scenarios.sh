# shellcheck shell=bash
# Driver-domain scenarios (issue 11 point 6), sourced by scenarios.sh in dom0.
#
# A PV domain `e2e-dd` (driver_domain=1, initramfs from driver-domain.sh, /init
# driver-init.sh) runs xen-blkback and `xl devd`; guests get disks with `backend=e2e-dd`,
# so libxl in dom0 only writes the backend directory and `xl devd` in e2e-dd runs our
# `block`, which reaches xenstore through the xenbus device and cannot read the guests'
# `/local/domain/<id>/vm` (EACCES). dom0 cannot see e2e-dd's files or loop devices: it
# asks e2e-dd's agent through xenstore (dd_run). The driver domain is booted by the first
# driver scenario and destroyed by driver-leftovers (or dd_down at the end).
#
#   driver-file-phy  a running guest with two rw disks served by e2e-dd: an image file
#                    (loop made there) and a loop device the caller set up there; the
#                    guest's writes through blkfront land in both images; remove on
#                    shutdown frees the file's loop, leaves the caller's, and the backends go
#   driver-share     a paused guest holds an image rw (xl block-attach); a second paused
#                    guest asking it rw is refused: hotplug-status=busy, our hotplug-error
#                    in `xl devd`'s libxl error line, no physical-device, the holder's
#                    loop untouched by the refused disk's remove
#   driver-share-ro  one image ro to both paused guests: both connected, ro loops
#   driver-leftovers no loop, backend, lock file or domain left; e2e-dd destroyed

DD_NAME=e2e-dd
DD_ID=""
DD_UP=0
DD_SEQ=0
DD_OUT=""
DD_CONSOLE=/var/log/xen/console/guest-$DD_NAME.log

dd_path() { echo "/local/domain/$DD_ID/data/e2e"; }
dd_be() { echo "/local/domain/$DD_ID/backend/vbd/$1/51712"; }

# dd_up: boot the driver domain once; 1 if it does not come up
dd_up() {
	[ "$DD_UP" = 1 ] && return 0
	[ "$DD_UP" = failed ] && return 1
	DD_UP=failed
	[ -s /e2e/dd.cpio ] || { log "  /e2e/dd.cpio missing"; return 1; }
	cat >/tmp/$DD_NAME.cfg <<EOF
name = "$DD_NAME"
type = "pv"
kernel = "$GUEST_KERNEL"
ramdisk = "/e2e/dd.cpio"
extra = "console=hvc0 loglevel=4"
memory = 160
vcpus = 1
driver_domain = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
EOF
	local t0
	t0=$(date +%s)
	xlrun create /tmp/$DD_NAME.cfg || return 1
	DD_ID=$(xl domid $DD_NAME 2>/dev/null)
	if ! wait_until 150 eval '[ "$(xsr "$(dd_path)/ready")" = 1 ]'; then
		log "  driver domain $DD_ID did not report ready"
		dd_console_tail 40
		return 1
	fi
	log "  driver domain $DD_NAME is domain $DD_ID, ready after $(($(date +%s) - t0)) s"
	DD_UP=1
}

dd_down() {
	[ -n "$DD_ID" ] || return 0
	[ "$DD_PAIR" = 0 ] || dd_pair_down
	dom_gone $DD_NAME || xlrun destroy $DD_NAME
	DD_ID="" DD_UP=0
}

dd_console_tail() {
	[ -s "$DD_CONSOLE" ] || return 0
	log "  --- $DD_CONSOLE (tail)"
	tail -n "$1" "$DD_CONSOLE" | sed 's/^/  | /'
}

# dd_run CMD [SECS]: run CMD in the driver domain (agent in driver-init.sh), keep its
# output in DD_OUT, return its status (125: no answer within SECS, default 30)
dd_run() {
	local rc p
	p=$(dd_path)
	DD_SEQ=$((DD_SEQ + 1))
	DD_OUT=""
	xenstore-write "$p/cmd" "$1" "$p/req" "$DD_SEQ" || return 125
	if ! wait_until "${2:-30}" eval '[ "$(xsr "'"$p"'/done")" = '"$DD_SEQ"' ]'; then
		log "  dd\$ $1 -> no answer"
		return 125
	fi
	DD_OUT=$(xsr "$p/out")
	rc=$(xsr "$p/rc")
	log "  dd\$ $1 -> rc=$rc"
	[ -z "$DD_OUT" ] || printf '%s\n' "$DD_OUT" | sed 's/^/  dd| /'
	return "${rc:-125}"
}

# dd_connected BE: the script in e2e-dd reported success; on failure log its error
dd_connected() {
	if wait_until 60 eval '[ -n "$(xsr "'"$1"'/hotplug-status")" ]' &&
		[ "$(xsr "$1/hotplug-status")" = connected ]; then
		return 0
	fi
	log "    hotplug-status='$(xsr "$1/hotplug-status")' hotplug-error='$(xsr "$1/hotplug-error")'"
	return 1
}

# dd_check_nodes BE MODE: nodes written by the script in e2e-dd; sets DD_PDP
DD_PDP=""
dd_check_nodes() {
	local be=$1 pd
	ok "hotplug-status = connected, written by block in $DD_NAME" dd_connected "$be" || return 1
	DD_PDP=$(xsr "$be/physical-device-path")
	pd=$(xsr "$be/physical-device")
	ok "physical-device-path written ($DD_PDP)" test -n "$DD_PDP" || return 1
	ok "physical-device ($pd) = major:minor of $DD_PDP in $DD_NAME" \
		dd_run "[ \"\$(stat -L -c %t:%T $DD_PDP)\" = '$pd' ]"
	ok "mode = $2" eq "$(xsr "$be/mode")" "$2"
}

# dd_disk_up BE IMAGE: a disk of the running guest: nodes, Connected, the loop of IMAGE in
# e2e-dd, the guest's marker and status on it (written through blkfront and blkback);
# prints nothing, sets DD_PDP ("" when the script failed)
dd_disk_up() {
	local be=$1 img=$2
	DD_PDP=""
	dd_check_nodes "$be" w || return 1
	ok "backend state reaches 4 (Connected)" wait_until 60 state_is "$be" 4
	ok "$DD_PDP is the loop device of $img in $DD_NAME" dd_run "[ \"\$(loops_of $img)\" = '$DD_PDP' ]"
	ok "the guest's marker arrives on $DD_PDP and it read it back" \
		dd_run "wait_for 90 eval '[ \"\$(get $DD_PDP 0)\" = E2E-GUEST-MARKER-$DD_MARKER ]' && [ \"\$(get $DD_PDP 2)\" = 'E2E-GUEST-STATUS ok' ]" 100
}

sc_driver_file_phy() {
	begin driver-file-phy "a file and a phy disk of a running guest served by a driver domain (xl devd, blkback, our block there)"
	local loop="" domid fbe pbe fpdp ppdp
	if ! dd_up; then
		bad "driver domain $DD_NAME did not come up"
		finish
		return
	fi
	if ok "image and caller's loop device in $DD_NAME" \
		dd_run "truncate -s 16M /srv/ddf.img /srv/ddp.img && losetup -f --show /srv/ddp.img"; then
		loop=$(printf '%s\n' "$DD_OUT" | tail -n 1)
		DD_MARKER=$RANDOM$RANDOM
		cat >/tmp/e2e-ddg.cfg <<EOF
name = "e2e-ddg"
type = "pv"
kernel = "$GUEST_KERNEL"
ramdisk = "$GUEST_RAMDISK"
extra = "console=hvc0 loglevel=4 e2e_marker=$DD_MARKER e2e_second=1"
memory = 96
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
disk = [ 'format=raw, vdev=xvda, access=rw, backend=$DD_NAME, script=block, target=/srv/ddf.img',
         'format=raw, vdev=xvdb, access=rw, backend=$DD_NAME, script=block, target=$loop' ]
EOF
		if ok "xl create a guest: xvda file /srv/ddf.img, xvdb phy $loop, both backend=$DD_NAME" \
			xlrun create /tmp/e2e-ddg.cfg; then
			domid=$(xl domid e2e-ddg 2>/dev/null)
			fbe=$(dd_be "$domid")
			pbe=${fbe%/*}/$(vdev_devid xvdb)
			log "  guest e2e-ddg is domain $domid; backends $fbe, $pbe"
			log "  -- file disk (xvda)"
			dd_disk_up "$fbe" /srv/ddf.img
			fpdp=$DD_PDP
			log "  -- phy disk (xvdb)"
			dd_disk_up "$pbe" /srv/ddp.img &&
				ok "physical-device-path of the phy disk is $loop" eq "$DD_PDP" "$loop"
			ppdp=$DD_PDP
			if [ -n "$fpdp" ]; then
				dd_run "put $fpdp 1 E2E-GO-DOWN" || bad "could not signal the guest"
				ok "guest powers off and is destroyed" wait_until 120 dom_gone e2e-ddg
			else
				# no disk to signal through: do not wait for the guest to give up
				ok "xl destroy e2e-ddg" xlrun destroy e2e-ddg
			fi
			ok "both backends removed (remove ran in $DD_NAME)" \
				wait_until 30 xs_absent "/local/domain/$DD_ID/backend/vbd/$domid"
			[ -z "$fpdp" ] || ok "file: marker in the image, its loop device freed" \
				dd_run "[ \"\$(getfile /srv/ddf.img 0)\" = E2E-GUEST-MARKER-$DD_MARKER ] && wait_for 10 eval '[ -z \"\$(loops_of /srv/ddf.img)\" ]'" 20
			ok "phy: the caller's $loop left attached" dd_run "[ \"\$(loops_of /srv/ddp.img)\" = '$loop' ]"
			[ -z "$ppdp" ] || ok "phy: marker in its image" \
				dd_run "[ \"\$(getfile /srv/ddp.img 0)\" = E2E-GUEST-MARKER-$DD_MARKER ]"
		fi
		dom_gone e2e-ddg || xl destroy e2e-ddg >/dev/null 2>&1
		show_guest_logs e2e-ddg
	fi
	[ -z "$loop" ] || dd_run "losetup -d $loop"
	dd_run "rm -f /srv/ddf.img /srv/ddp.img"
	finish
}

# Two paused guests without disks, made once for the sharing scenarios; disks are
# hot-plugged to them (`xl block-attach ... backend=e2e-dd`), cheaper under TCG than a
# domain per holder.
DD_PAIR=0
dd_pair_up() {
	local n
	[ "$DD_PAIR" = 1 ] && return 0
	for n in e2e-dda e2e-ddb; do
		dom_gone "$n" || continue
		cat >/tmp/$n.cfg <<EOF
name = "$n"
type = "pv"
kernel = "$GUEST_KERNEL"
ramdisk = "$GUEST_RAMDISK"
extra = "console=hvc0 loglevel=4"
memory = 96
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOF
		ok "xl create -p $n (paused, no disk yet)" xlrun create -p /tmp/$n.cfg || return 1
	done
	DD_PAIR=1
}
dd_pair_down() {
	local n
	for n in e2e-dda e2e-ddb; do dom_gone "$n" || xlrun destroy "$n"; done
	DD_PAIR=0
}

# dd_attach GUEST VDEV ACCESS TARGET: hot-plug a disk served by e2e-dd; sets DD_ABE
DD_ABE=""
dd_attach() {
	DD_ABE=$(dd_be "$(xl domid "$1" 2>/dev/null)")
	DD_ABE=${DD_ABE%/*}/$(vdev_devid "$2")
	xlrun block-attach "$1" "format=raw, vdev=$2, access=$3, backend=$DD_NAME, script=block, target=$4"
}
# dd_detach GUEST VDEV BE: hot-unplug; libxl in dom0 waits for e2e-dd to remove BE.
# -f: a paused guest's blkfront never answers Closing, so a safe detach can only time
# out; forced, libxl removes the frontend as `xl destroy` does, blkback closes, and
# `xl devd` runs our remove and deletes the backend.
dd_detach() {
	ok "xl block-detach -f $1 $2" xlrun block-detach -f "$1" "$2"
	ok "backend $3 removed by $DD_NAME" wait_until 30 xs_absent "$3"
}

sc_driver_share() {
	begin driver-share "one image rw to two guests through a driver domain: the second is refused busy"
	local img=/srv/dds.img hbe pd be herr
	if ! dd_up || ! dd_pair_up; then
		bad "driver domain $DD_NAME or its paused guests did not come up"
		finish
		return
	fi
	dd_run "truncate -s 16M $img"
	if ok "rw attach of $img to e2e-dda" dd_attach e2e-dda xvdb rw "$img"; then
		hbe=$DD_ABE
		if dd_check_nodes "$hbe" w; then
			pd=$(xsr "$hbe/physical-device")
			# libxl in dom0 does not run a driver domain's scripts: the attach succeeds
			# once blkback is in InitWait, and the refusal is the script's, in e2e-dd
			ok "xl block-attach of the same image rw to e2e-ddb returns" dd_attach e2e-ddb xvdb rw "$img"
			be=$DD_ABE
			ok "second rw user: hotplug-status = busy" \
				wait_until 60 eval '[ "$(xsr "'"$be"'/hotplug-status")" = busy ]'
			herr=$(xsr "$be/hotplug-error")
			log "  hotplug-error: $herr"
			ok "its hotplug-error is written" test -n "$herr"
			# xenstore-read shows the value's newlines as \n; the console has real ones
			ok "xl devd in $DD_NAME logged libxl's 'script: ' line with our hotplug-error" \
				wait_until 20 grep -q -F "script: ${herr%%\\n*}" "$DD_CONSOLE"
			grep -F 'script: ' "$DD_CONSOLE" | tail -n 3 | sed 's/^/  console| /'
			ok "refused backend: no physical-device (blkback must not open it)" \
				eval '[ -z "$(xsr "'"$be"'/physical-device")" ]'
			ok "one loop device for $img in $DD_NAME" dd_run "[ \$(loops_of $img | wc -l) = 1 ]"
			dd_detach e2e-ddb xvdb "$be"
			ok "the refused disk's remove left the holder's loop" dd_run "[ \$(loops_of $img | wc -l) = 1 ]"
			ok "holder's physical-device unchanged" eq "$(xsr "$hbe/physical-device")" "$pd"
		fi
		dd_detach e2e-dda xvdb "$hbe"
		ok "no loop device left for $img" dd_run "wait_for 10 eval '[ -z \"\$(loops_of $img)\" ]'" 20
	fi
	dd_run "rm -f $img"
	finish
}

sc_driver_share_ro() {
	begin driver-share-ro "one image read-only to two guests through a driver domain: allowed"
	local img=/srv/ddr.img abe bbe
	if ! dd_up || ! dd_pair_up; then
		bad "driver domain $DD_NAME or its paused guests did not come up"
		finish
		return
	fi
	dd_run "truncate -s 16M $img"
	if ok "ro attach of $img to e2e-dda" dd_attach e2e-dda xvdc ro "$img"; then
		abe=$DD_ABE
		dd_check_nodes "$abe" r
		if ok "ro attach of $img to e2e-ddb" dd_attach e2e-ddb xvdc ro "$img"; then
			bbe=$DD_ABE
			dd_check_nodes "$bbe" r
			ok "the image's loop devices in $DD_NAME are read-only" \
				dd_run "[ -n \"\$(loops_of $img)\" ] && for l in \$(loops_of $img); do [ \"\$(cat /sys/block/\${l#/dev/}/ro)\" = 1 ] || exit 1; done"
			dd_detach e2e-ddb xvdc "$bbe"
		fi
		dd_detach e2e-dda xvdc "$abe"
		ok "no loop device left for $img" dd_run "wait_for 10 eval '[ -z \"\$(loops_of $img)\" ]'" 20
	fi
	dd_run "rm -f $img"
	finish
}

sc_driver_leftovers() {
	begin driver-leftovers "after the driver scenarios: nothing left in the driver domain, then it goes"
	if [ "$DD_UP" != 1 ]; then
		bad "driver domain $DD_NAME is not up"
		finish
		return
	fi
	dd_pair_down
	ok "no loop devices in $DD_NAME" dd_run '[ -z "$(losetup -a)" ]'
	ok "no vbd backends under $DD_NAME" eval '[ -z "$(xenstore-list /local/domain/'"$DD_ID"'/backend/vbd 2>/dev/null)" ]'
	ok "no lock file left in $DD_NAME" dd_run '[ ! -e /var/run/xen-hotplug/block ]'
	ok "no guest left but $DD_NAME" eval '[ "$(xl list | grep -vc -e "^Name" -e "^Domain-0" -e "^'"$DD_NAME"' ")" = 0 ]'
	dd_console_tail 30
	dd_down
	ok "$DD_NAME destroyed" wait_until 20 dom_gone $DD_NAME
	finish
}
