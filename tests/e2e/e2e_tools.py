#!/usr/bin/env python3
"""Host-side helpers for tests/e2e/run.sh (standard library only).

  e2e_tools.py vmlinux BZIMAGE OUT
      Decompress a bzImage (xz/gzip/zstd-less) to the ELF vmlinux it carries,
      so that libxenguest loads the guest kernel without decompressing it
      under TCG.
  e2e_tools.py moddeps MODROOT NAME...
      Print the module files (relative to MODROOT) needed to load NAME...,
      dependencies first, resolved from each module's .modinfo `depends=`
      and `softdep=pre:` fields (the Debian package ships no modules.dep).
      Names that are built in (modules.builtin) are silently skipped.
"""
import gzip
import lzma
import os
import sys


def vmlinux(src, dst):
    data = open(src, "rb").read()
    if data[:4] == b"\x7fELF":
        out = data
    else:
        out = None
        for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gz")):
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
            sys.exit("e2e_tools: no xz/gzip ELF payload found in %s" % src)
    tmp = "%s.tmp.%d" % (dst, os.getpid())
    with open(tmp, "wb") as f:
        f.write(out)
    os.rename(tmp, dst)


def norm(name):
    return name.replace("-", "_")


# softdep targets that are aliases rather than module names
ALIASES = {"crc32c": "crc32c_generic", "crct10dif": "crct10dif_generic"}


def modinfo(path):
    data = open(path, "rb").read()
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
            if fn.endswith(".ko"):
                index[norm(fn[:-3])] = os.path.relpath(os.path.join(dirpath, fn), root)
    builtin = set()
    bpath = os.path.join(root, "modules.builtin")
    if os.path.exists(bpath):
        for line in open(bpath):
            builtin.add(norm(os.path.basename(line.strip())[:-3]))
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


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "vmlinux":
        vmlinux(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "moddeps":
        moddeps(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
