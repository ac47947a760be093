#!/usr/bin/env python3
"""plugins/amlcompute/ctarget_boot.py on its own: a good tree is rebuilt byte for byte and the
script runs with the CTARGET_* variables; every hostile manifest (escaping paths, absolute
paths, writes through links, links out of the tree, wrong hashes, missing blobs) is refused
with exit 97 and nothing is created outside the working directory.

Prints "aml_boot_selftest: N passed, M failed" on fd 9 when it is open (the suite's convention)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BOOT = os.path.join(HERE, "..", "plugins", "amlcompute", "ctarget_boot.py")
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAILED: " + what)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def setup(entries, blobs):
    """A job dir: code/ (manifest.jsonl + ctarget_boot.py) and blobs/; returns (top, code)."""
    top = tempfile.mkdtemp(prefix="ctarget-amlboot-")
    code = os.path.join(top, "code")
    bdir = os.path.join(top, "blobs")
    os.makedirs(code)
    os.makedirs(bdir)
    for name, data in blobs.items():
        with open(os.path.join(bdir, name), "wb") as f:
            f.write(data)
    head = {"ctarget_snapshot": "x" * 64, "format": 1, "entries": len(entries)}
    with open(os.path.join(code, "manifest.jsonl"), "w") as f:
        f.write(json.dumps(head) + "\n")
        for e in entries:
            f.write(json.dumps(e) + "\n")
    shutil.copy(BOOT, os.path.join(code, "ctarget_boot.py"))
    return top, code


def run(code, top, script="main.py", args=()):
    return subprocess.run([sys.executable, "ctarget_boot.py", os.path.join(top, "blobs"),
                           "--run-id", "run-1", "--", sys.executable, script] + list(args),
                          cwd=code, capture_output=True, text=True, timeout=60)


def outside(top):
    """Everything under top that is not in code/ or blobs/ (what an escape would create)."""
    return sorted(n for n in os.listdir(top) if n not in ("code", "blobs"))


def good_tree():
    main = (b"import os, sys\n"
            b"print(open('src/data.txt').read().strip(), sys.argv[1:], os.environ['CTARGET_RUN_ID'])\n"
            b"print(os.environ['CTARGET_OUTPUTS_DIR'] == os.path.abspath('outputs'))\n"
            b"print(os.environ['CTARGET_METRICS_FILE'].endswith('outputs/.ctarget_metrics.jsonl'))\n"
            b"print(os.readlink('link'), oct(os.stat('src/run.sh').st_mode & 0o777))\n")
    data = b"hello blob\n"
    sh = b"#!/bin/sh\necho hi\n"
    entries = [
        {"path": "link", "type": "symlink", "target": "src/data.txt"},
        {"path": "main.py", "type": "file", "mode": 0o644, "size": len(main), "sha256": sha(main)},
        {"path": "src", "type": "dir", "mode": 0o755},
        {"path": "src/data.txt", "type": "file", "mode": 0o644, "size": len(data), "sha256": sha(data)},
        {"path": "src/run.sh", "type": "file", "mode": 0o755, "size": len(sh), "sha256": sha(sh)},
    ]
    return entries, {sha(main): main, sha(data): data, sha(sh): sh}


def t_good():
    entries, blobs = good_tree()
    top, code = setup(entries, blobs)
    r = run(code, top, args=["--x", "it's"])
    check(r.returncode == 0, "good tree: exit %d (%s)" % (r.returncode, r.stderr))
    lines = r.stdout.splitlines()
    check(lines[:1] == ["hello blob ['--x', \"it's\"] run-1"], "good tree: output %r" % lines)
    check(lines[1:3] == ["True", "True"], "good tree: CTARGET_* paths %r" % lines)
    check(lines[3:4] == ["src/data.txt 0o755"], "good tree: link and mode %r" % lines)
    check(os.path.isdir(os.path.join(code, "outputs")), "good tree: outputs/ made")
    check(outside(top) == [], "good tree: nothing outside")
    shutil.rmtree(top)


def refused(name, entries, blobs, pre=None):
    top, code = setup(entries, blobs)
    if pre:
        pre(top, code)
    r = run(code, top)
    check(r.returncode == 97, "%s: exit %d, wanted 97 (%s)" % (name, r.returncode, r.stdout))
    check("ctarget_boot:" in r.stderr, "%s: one line naming the cause (%r)" % (name, r.stderr))
    check(outside(top) == [], "%s: created %r outside the tree" % (name, outside(top)))
    shutil.rmtree(top)


def t_hostile():
    evil = b"pwned\n"
    b = {sha(evil): evil}
    f = lambda p: {"path": p, "type": "file", "mode": 0o644, "size": len(evil), "sha256": sha(evil)}
    refused("dotdot", [f("../escaped")], b)
    refused("dotdot inside", [{"path": "a", "type": "dir", "mode": 0o755}, f("a/../../escaped")], b)
    refused("absolute", [f("/tmp/ctarget-amlboot-absolute-escape")], b)
    check(not os.path.exists("/tmp/ctarget-amlboot-absolute-escape"), "absolute: not written")
    refused("empty component", [f("a//b")], b)
    # a link to the parent, then a file "through" it
    refused("write through link", [{"path": "l", "type": "symlink", "target": ".."},
                                   f("l/escaped")], b)
    refused("link out of the tree", [{"path": "l", "type": "symlink", "target": "../escaped"}], b)
    refused("absolute link", [{"path": "l", "type": "symlink", "target": "/etc/passwd"}], b)
    refused("deep link out", [{"path": "a", "type": "dir", "mode": 0o755},
                              {"path": "a/l", "type": "symlink", "target": "../../x"}], b)
    # a pre-existing link in the working dir (not ours) is never written through
    refused("existing link", [f("pre")], b,
            pre=lambda top, code: os.symlink(os.path.join(top, "escaped"),
                                             os.path.join(code, "pre")))
    refused("wrong hash", [{"path": "x", "type": "file", "mode": 0o644, "size": len(evil),
                            "sha256": sha(b"other")}], {sha(b"other"): evil})
    refused("wrong size", [{"path": "x", "type": "file", "mode": 0o644, "size": 3,
                            "sha256": sha(evil)}], b)
    refused("missing blob", [f("x")], {})
    refused("bad blob name", [{"path": "x", "type": "file", "mode": 0o644, "size": 1,
                               "sha256": "../../etc/passwd"}], b)
    refused("unknown type", [{"path": "x", "type": "fifo"}], b)


def t_count():
    entries, blobs = good_tree()
    top, code = setup(entries[:2], blobs)
    with open(os.path.join(code, "manifest.jsonl")) as f:
        lines = f.read().splitlines()
    head = json.loads(lines[0])
    head["entries"] = 5
    with open(os.path.join(code, "manifest.jsonl"), "w") as f:
        f.write("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    r = run(code, top)
    check(r.returncode == 97, "entry count mismatch refused (exit %d)" % r.returncode)
    shutil.rmtree(top)


def main():
    t_good()
    t_hostile()
    t_count()
    line = "aml_boot_selftest: %d passed, %d failed (%d checks)" % (passed, failed, passed + failed)
    print(line)
    try:
        os.write(9, (line + "\n").encode())
    except OSError:
        pass
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
