"""ctarget's materializer for Azure ML jobs (uploaded with every code version).

    python3 ctarget_boot.py BLOB_DIR --run-id ID -- PYTHON SCRIPT [ARGS...]

The code folder holds only this file and manifest.jsonl (the snapshot's manifest, see
ctarget-plugin(7)); the file contents are content-addressed blobs in BLOB_DIR (the datastore
folder ctarget-blobs/, mounted read-only as the job's input).  This script rebuilds the tree in
the working directory, safely: no entry may create or write anything outside it (no absolute
paths, no '..', no writing through a symbolic link; links are made last and may only point
inside the tree), and every blob is checked against its sha256.  Then it replaces itself with
the script, with CTARGET_RUN_ID, CTARGET_OUTPUTS_DIR (./outputs, which Azure ML uploads) and
CTARGET_METRICS_FILE (outputs/.ctarget_metrics.jsonl) set.  Standard library only.
"""
import hashlib
import json
import os
import stat
import sys


def fail(msg):
    sys.stderr.write("ctarget_boot: %s\n" % msg)
    sys.exit(97)


def safe_rel(path):
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        fail("unsafe path in the manifest: %r" % (path,))
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        fail("unsafe path in the manifest: %r" % (path,))
    return parts


def no_link_parents(root, parts):
    """Every parent of the entry must be a real directory below root (never a link)."""
    cur = root
    for p in parts[:-1]:
        cur = os.path.join(cur, p)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            fail("%s: its directory %s is not in the manifest" % ("/".join(parts), p))
        if not stat.S_ISDIR(st.st_mode):
            fail("%s is not a directory" % cur)
    return os.path.join(root, *parts)


def copy_blob(blob_dir, digest, size, dest, mode):
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        fail("bad blob name %r in the manifest" % (digest,))
    src = os.path.join(blob_dir, digest)
    h = hashlib.sha256()
    n = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    if os.path.lexists(dest):
        if os.path.islink(dest) or os.path.isdir(dest):
            fail("%s exists and is not a file" % dest)
    fd = os.open(dest, flags, 0o600)
    try:
        with open(src, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
                os.write(fd, chunk)
    except FileNotFoundError:
        fail("blob %s is missing from %s" % (digest, blob_dir))
    finally:
        os.close(fd)
    if n != size or h.hexdigest() != digest:
        fail("blob %s does not match its hash or size" % digest)
    os.chmod(dest, mode & 0o777)


def rebuild(root, blob_dir):
    with open(os.path.join(root, "manifest.jsonl"), "r", encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n") if l.strip()]
    if not lines:
        fail("manifest.jsonl is empty")
    head = json.loads(lines[0])
    entries = [json.loads(l) for l in lines[1:]]
    if head.get("format") != 1 or len(entries) != head.get("entries"):
        fail("manifest.jsonl is not a format-1 manifest of %s entries" % head.get("entries"))
    root = os.path.realpath(root)
    links = []
    dirs = []
    for e in sorted(entries, key=lambda e: e.get("path", "")):
        parts = safe_rel(e.get("path"))
        kind = e.get("type")
        if kind == "dir":
            dest = no_link_parents(root, parts)
            if os.path.islink(dest):
                fail("%s is a link" % dest)
            if not os.path.isdir(dest):
                os.mkdir(dest, 0o700)
            dirs.append((dest, int(e.get("mode", 0o755))))
        elif kind == "file":
            dest = no_link_parents(root, parts)
            copy_blob(blob_dir, e.get("sha256", ""), int(e.get("size", -1)), dest,
                      int(e.get("mode", 0o644)))
        elif kind == "symlink":
            links.append((parts, e.get("target", "")))
        else:
            fail("unknown entry type %r" % (kind,))
    for parts, target in links:
        if not isinstance(target, str) or not target or target.startswith("/"):
            fail("link %s points outside the tree" % "/".join(parts))
        depth = len(parts) - 1
        for p in target.split("/"):
            depth = depth - 1 if p == ".." else depth + (0 if p in ("", ".") else 1)
            if depth < 0:
                fail("link %s points outside the tree" % "/".join(parts))
        dest = no_link_parents(root, parts)
        if os.path.lexists(dest):
            fail("%s already exists" % dest)
        os.symlink(target, dest)
    for dest, mode in reversed(dirs):
        os.chmod(dest, (mode & 0o777) | 0o700)


def main(argv):
    if "--" not in argv:
        fail("usage: ctarget_boot.py BLOB_DIR --run-id ID -- PYTHON SCRIPT [ARGS...]")
    cut = argv.index("--")
    ours, cmd = argv[:cut], argv[cut + 1:]
    if len(ours) != 3 or ours[1] != "--run-id" or len(cmd) < 2:
        fail("usage: ctarget_boot.py BLOB_DIR --run-id ID -- PYTHON SCRIPT [ARGS...]")
    blob_dir, run_id = ours[0], ours[2]
    root = os.getcwd()
    try:
        rebuild(root, blob_dir)
    except (OSError, ValueError) as e:
        fail("cannot rebuild the tree: %s" % e)
    outputs = os.path.join(root, "outputs")
    os.makedirs(outputs, exist_ok=True)
    env = dict(os.environ)
    env["CTARGET_RUN_ID"] = run_id
    env["CTARGET_OUTPUTS_DIR"] = outputs
    env["CTARGET_METRICS_FILE"] = os.path.join(outputs, ".ctarget_metrics.jsonl")
    env["PYTHONUNBUFFERED"] = "1"
    sys.stdout.flush()
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        fail("cannot start %s: %s" % (cmd[0], e.strerror))


if __name__ == "__main__":
    main(sys.argv[1:])
