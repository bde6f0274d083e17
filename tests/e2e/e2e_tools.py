#!/usr/bin/env python3
"""Host-side helpers for tests/e2e/run.sh (standard library only).

  e2e_tools.py vmlinux BZIMAGE OUT
      Decompress a bzImage (xz or gzip: Debian 12; zstd: Debian 13, through the
      `zstd` program named by $E2E_ZSTD or found on PATH) to the ELF vmlinux it
      carries, so that libxenguest loads the guest kernel without decompressing
      it under TCG.
  e2e_tools.py moddeps MODROOT NAME...
      Print the module files (relative to MODROOT) needed to load NAME...,
      dependencies first, resolved from each module's .modinfo `depends=`
      and `softdep=pre:` fields (the Debian package ships no modules.dep).
      Names that are built in (modules.builtin) are silently skipped.
      Modules may be compressed (.ko.xz in Debian 13, .ko.gz).
  e2e_tools.py modcopy MODROOT DESTDIR FILE...
      Copy module FILEs (relative to MODROOT, as moddeps prints them) into
      DESTDIR as uncompressed NAME.ko, for busybox's insmod.
  e2e_tools.py latency-md SERIAL_LOG XEN BENCHMARKS_MD [NOTE]
      From the E2E-LATENCY lines of a `--only latency` run (scenarios.sh),
      write the medians and ratios for Xen version XEN into the section
      "Attach latency in real Xen" at the end of BENCHMARKS_MD, replacing
      that version's earlier results and keeping the other versions'. NOTE,
      if given, is added to the table's notes (e.g. a run cut short).
"""
import gzip
import lzma
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time


def zstd_payload(data):
    """The ELF inside a zstd-compressed bzImage, or None.

    The boot protocol's setup header gives the payload's place (payload_offset at 0x248 and
    payload_length at 0x24c, relative to the protected-mode code after the setup sectors);
    the kernel appends the uncompressed size after the zstd frame, which the `zstd` program
    reports as trailing garbage, so its exit status is not the test: the ELF magic is.
    """
    if data[0x202:0x206] != b"HdrS":
        return None
    setup = (data[0x1F1] or 4) + 1
    off, length = struct.unpack("<II", data[0x248:0x250])
    payload = data[setup * 512 + off:setup * 512 + off + length]
    if payload[:4] != b"\x28\xb5\x2f\xfd":
        return None
    prog = os.environ.get("E2E_ZSTD") or shutil.which("zstd")
    if not prog or not os.path.exists(prog):
        sys.exit("e2e_tools: the kernel is zstd-compressed and no zstd program was found")
    out = subprocess.run([prog, "-dcq"], input=payload[:-4], capture_output=True).stdout
    return out if out[:4] == b"\x7fELF" else None


def vmlinux(src, dst):
    data = open(src, "rb").read()
    if data[:4] == b"\x7fELF":
        out = data
    else:
        out = zstd_payload(data)
        for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gz")):
            if out is not None:
                break
            pos = data.find(magic)
            while pos >= 0 and out is None:
                try:
                    if kind == "xz":
                        cand = lzma.LZMADecompressor().decompress(data[pos:])
                    else:
                        cand = gzip.GzipFile(fileobj=__import__("io").BytesIO(data[pos:])).read()
                    if cand[:4] == b"\x7fELF":
                        out = cand
                except Exception:
                    pass
                pos = data.find(magic, pos + 1)
            if out is not None:
                break
        if out is None:
            sys.exit("e2e_tools: no xz/gzip/zstd ELF payload found in %s" % src)
    tmp = "%s.tmp.%d" % (dst, os.getpid())
    with open(tmp, "wb") as f:
        f.write(out)
    os.rename(tmp, dst)


def norm(name):
    return name.replace("-", "_")


# softdep targets that are aliases rather than module names
ALIASES = {"crc32c": "crc32c_generic", "crct10dif": "crct10dif_generic"}


# module file suffixes, uncompressed first
MOD_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")


def module_bytes(path):
    """A module file's contents, decompressed (Debian 13 ships .ko.xz)."""
    data = open(path, "rb").read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    return data


def modinfo(path):
    data = module_bytes(path)
    fields = {}
    # .modinfo entries are NUL-separated key=value strings; scanning the whole
    # file for the two keys we need is sufficient and avoids an ELF parser.
    for key in (b"depends=", b"softdep="):
        pos = data.find(b"\0" + key)
        vals = []
        while pos >= 0:
            end = data.find(b"\0", pos + 1)
            vals.append(data[pos + 1 + len(key):end].decode())
            pos = data.find(b"\0" + key, end)
        fields[key[:-1].decode()] = vals
    return fields


def moddeps(root, names):
    index = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            for suf in MOD_SUFFIXES:
                if fn.endswith(suf):
                    index[norm(fn[:-len(suf)])] = os.path.relpath(os.path.join(dirpath, fn), root)
    builtin = set()
    bpath = os.path.join(root, "modules.builtin")
    if os.path.exists(bpath):
        for line in open(bpath):
            builtin.add(norm(os.path.basename(line.strip()).split(".ko")[0]))
    order, seen = [], set()

    def visit(name, stack=()):
        n = norm(ALIASES.get(name, name))
        if n in seen:
            return
        if n not in index:
            if n in builtin:
                seen.add(n)
                return
            sys.exit("e2e_tools: module %s not found (needed by %s)" % (name, "/".join(stack) or "command line"))
        seen.add(n)
        info = modinfo(os.path.join(root, index[n]))
        deps = []
        for d in info.get("depends", []):
            deps += [x for x in d.split(",") if x]
        for s in info.get("softdep", []):
            # "pre: a b post: c" - only pre deps must be loaded first
            words, mode = s.split(), None
            for w in words:
                if w.endswith(":"):
                    mode = w[:-1]
                elif mode == "pre":
                    deps.append(w)
        for d in deps:
            visit(d, stack + (name,))
        order.append(index[n])

    for name in names:
        visit(name)
    print("\n".join(order))


def modcopy(root, dest, files):
    for rel in files:
        name = os.path.basename(rel).split(".ko")[0] + ".ko"
        with open(os.path.join(dest, name), "wb") as f:
            f.write(module_bytes(os.path.join(root, rel)))


LAT_HEADING = "## Attach latency in real Xen (`make e2e-latency`)"
LAT_METHOD = """\
Generated by `make e2e-latency XEN=<version>` (tests/e2e/run.sh `--only latency,leftovers`,
then `tests/e2e/e2e_tools.py latency-md`); each Xen version's table is replaced by its own run.
Not part of CI (more than 25 minutes per version on a loaded 2-core machine under TCG).

* Real Xen under qemu TCG (tests/e2e): Xen 4.17 with Debian 12's dom0 kernel and tools, or
  Xen 4.20 with Debian 13's. One sample = `xl block-attach 0
  'format=raw, vdev=xvdb, access=rw, script=S, target=<loop device>'` then `xl block-detach 0
  xvdb`, each timed in dom0 from before `xl` starts to after it exits (bash `EPOCHREALTIME`):
  what an admin or toolstack waits for, libxl's own work included. S is our `block` or
  Debian's shell `block` (the release's own, installed as `block-upstream`); they alternate
  which goes first in each round. The physical-device after attach and the backend's removal
  after detach are checked outside the timing.
* N other guests' vbds are in dom0's xenstore, populated as `make bench` populates them
  (bench/run): one vbd per guest with the nodes libxl writes, all with `physical-device`,
  every second with `physical-device-path` to a block device node, every fourth mode `r`,
  each domain with its `vm` (domids from 1001 on, no such domains running).
* Under TCG every instruction is emulated, so the absolute times are far above a real
  host's; both scripts pay the same emulation and the same libxl, so the ratio is the figure.
  Medians of the rounds; min-max in brackets."""


def latency_md(log, xen, md, note=None):
    text = open(log, "rb").read().decode("utf-8", "replace").replace("\r", "")
    samples = {}
    for m in re.finditer(r"^E2E-LATENCY n=(\d+) script=(\w+) round=(\d+) attach_us=(\d+) "
                         r"detach_us=(\d+)", text, re.M):
        n, who = int(m.group(1)), m.group(2)
        samples.setdefault(n, {}).setdefault(who, []).append((int(m.group(4)), int(m.group(5))))
    failed = {}
    for m in re.finditer(r"^E2E-LATENCY-FAILED n=(\d+) script=(\w+) round=(\d+) after_us=(\d+)",
                         text, re.M):
        failed.setdefault(int(m.group(1)), {}).setdefault(m.group(2), []).append(int(m.group(4)))
    orphans = {}
    for m in re.finditer(r"^E2E-LATENCY-ORPHAN n=(\d+) script=(\w+) round=\d+ "
                         r"lock_busy_after_kill_us=(\d+)( killed=)?", text, re.M):
        orphans.setdefault((int(m.group(1)), m.group(2)), []).append(
            (int(m.group(3)), bool(m.group(4))))
    if not samples and not failed:
        sys.exit("e2e_tools: no E2E-LATENCY lines in %s" % log)
    seen = re.search(r"^E2E-XEN-VERSION (\S+).*dom0 kernel (\S+)\)", text, re.M)
    ver, kernel = (seen.group(1), seen.group(2)) if seen else ("?", "?")
    if not ver.startswith(xen):
        sys.exit("e2e_tools: %s reports Xen %s, not %s" % (log, ver, xen))

    def sec(us):
        return "%.2f" % (us / 1e6)

    def cell(xs):
        return "%s (%s-%s)" % (sec(statistics.median(xs)), sec(min(xs)), sec(max(xs)))

    load = open("/proc/loadavg").read().split()[0]
    deb = {"4.17": "Debian 12", "4.20": "Debian 13"}.get(xen, "Debian")
    out = ["<!-- e2e-latency xen=%s begin -->" % xen,
           "### Xen %s (%s), dom0 kernel %s, %s" % (
               ver, deb, kernel, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())),
           "",
           "Host: %d CPUs shared with other jobs, 1-minute load average %s when the table was written; "
           "qemu TCG, 2 vCPUs, dom0 512 MiB." % (os.cpu_count(), load),
           "",
           "| N | rounds | ours attach s | ours detach s | ours attach+detach s | Debian attach s "
           "| Debian detach s | Debian attach+detach s | Debian/ours |",
           "|---|---|---|---|---|---|---|---|---|"]
    def cells(xs):
        if not xs:
            return ["-", "-", "-"]
        return [cell([a for a, _ in xs]), cell([b for _, b in xs]), cell([a + b for a, b in xs])]

    notes = []
    for n in sorted(set(samples) | set(failed)):
        o = samples.get(n, {}).get("ours", [])
        d = samples.get(n, {}).get("debian", [])
        fo = failed.get(n, {}).get("ours", [])
        fd = failed.get(n, {}).get("debian", [])
        if o and d:
            ratio = "**%.1fx**" % (statistics.median([a + b for a, b in d]) /
                                   statistics.median([a + b for a, b in o]))
        else:
            ratio = "-"
        out.append("| %d | %s / %s | %s | %s | %s |" % (
            n, len(o) if not fo else "%d (+%d failed)" % (len(o), len(fo)),
            len(d) if not fd else "%d (+%d failed)" % (len(d), len(fd)),
            " | ".join(cells(o)), " | ".join(cells(d)), ratio))
        for who, fs in (("ours", fo), ("Debian's", fd)):
            if fs:
                key = (n, "ours" if who == "ours" else "debian")
                held = orphans.get(key, [])
                notes.append("N=%d: %d attach(es) through %s `block` failed, after %s s (libxl's message in the "
                             "serial log: its 40 s hotplug timeout, or the script's own error); "
                             "not in the medians%s.%s" % (
                                 n, len(fs), who, ", ".join(sec(x) for x in fs),
                                 "" if who == "ours" else
                                 " (they are its slowest, so Debian/ours understates the ratio)",
                                 (" After each kill the block lock stayed held for another %s s "
                                  "(the killed script's orphaned subshell; * = still held after "
                                  "60 s, so the harness killed it); the next sample waited for "
                                  "it, untimed." % ", ".join(sec(x) + ("*" if k else "")
                                                             for x, k in held))
                                 if held else ""))
    if note:
        notes.append(note)
    if notes:
        out.append("")
        out.extend("* " + x for x in notes)
    out.append("<!-- e2e-latency xen=%s end -->" % xen)
    block = "\n".join(out)

    body = open(md).read() if os.path.exists(md) else ""
    head, _, section = body.partition(LAT_HEADING)
    blocks = {}
    for m in re.finditer(r"<!-- e2e-latency xen=(\S+) begin -->.*?<!-- e2e-latency xen=\1 end -->",
                         section, re.S):
        blocks[m.group(1)] = m.group(0)
    blocks[xen] = block
    new = head.rstrip("\n") + "\n\n" + LAT_HEADING + "\n\n" + LAT_METHOD + "\n\n" + \
        "\n\n".join(blocks[k] for k in sorted(blocks)) + "\n"
    with open(md + ".tmp", "w") as f:
        f.write(new)
    os.rename(md + ".tmp", md)
    print(block)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "vmlinux":
        vmlinux(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (5, 6) and sys.argv[1] == "latency-md":
        latency_md(*sys.argv[2:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "modcopy":
        modcopy(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "moddeps":
        moddeps(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
