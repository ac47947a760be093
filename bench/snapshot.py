#!/usr/bin/env python3
"""Snapshot benchmark (not a test): figures against baselines measured in the same run.

  cold `ctarget snapshot create`       vs  tar -cf - DIR | sha256sum          budget <= 1.5x
  re-snapshot, nothing changed         vs  git status (same tree, scratch repo) budget <= 1.0x
  bytes after changing one 1 MB file   (new_bytes and the --since archive)  budget <= 1.1 MB
  peak RSS of the cold snapshot                                              budget <  64 MB

usage: bench/snapshot.py CTARGET [--files N] [--mb N] [--keep]
The tree (default 10,000 files / 200 MB, mixed sizes, nested folders, with an .amlignore and
ignored files beside them) is generated under $TMPDIR and removed afterwards.  Every timing
is the best of three runs (of ten, taking turns, for the warm re-snapshot and git status),
with the page cache warm for both sides.  Each cold run uses a new workspace (never one just
deleted: ext4's allocator then scans recently freed inodes and the figure measures that, not
ctarget).
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

def run(argv, env=None, cwd=None, stdout=subprocess.DEVNULL):
    """Run argv; returns (seconds, peak RSS in KB, stdout bytes or None)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE)
    out = p.stdout.read() if stdout == subprocess.PIPE else None
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit("failed (%d): %s\n%s" % (p.returncode, " ".join(argv), err.decode()))
    return dt, ru.ru_maxrss, out

def shell(cmd, cwd=None):
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0

def generate(root, n_files, total_mb):
    """Mixed sizes: most files small, some medium, a few large; one file of exactly 1 MB."""
    rnd = random.Random(42)
    total = total_mb << 20
    n_large, n_medium = max(1, n_files // 1000), max(1, n_files // 10)
    n_small = n_files - n_large - n_medium - 1
    small = [rnd.randint(200, 8192) for _ in range(n_small)]
    medium_total = int(total * 0.5)
    medium = [medium_total // n_medium] * n_medium
    rest = total - sum(small) - sum(medium) - (1 << 20)
    large = [max(1, rest // n_large)] * n_large
    sizes = small + medium + large
    rnd.shuffle(sizes)
    sizes.append(1 << 20)
    dirs = [""]
    for i in range(max(4, n_files // 50)):
        parent = rnd.choice(dirs)
        if parent.count("/") < 4:
            dirs.append(os.path.join(parent, "d%03d" % i) if parent else "d%03d" % i)
    block = os.urandom(1 << 20)
    for i, size in enumerate(sizes):
        d = dirs[i % len(dirs)] if i < len(sizes) - 1 else ""
        path = os.path.join(root, d, "one_mb.bin" if i == len(sizes) - 1 else "f%05d.dat" % i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            left, off = size, i * 7919 % (1 << 19)
            f.write(i.to_bytes(8, "little"))  # every file distinct
            while left > 8:
                chunk = block[off:off + min(left - 8, (1 << 20) - off)]
                f.write(chunk)
                left -= len(chunk)
                off = 0
    with open(os.path.join(root, ".amlignore"), "w") as f:
        f.write("*.tmp\ncache/\n")
    os.makedirs(os.path.join(root, "cache"), exist_ok=True)
    for i in range(100):
        with open(os.path.join(root, "cache", "c%d.bin" % i), "wb") as f:
            f.write(block[:4096])
        with open(os.path.join(root, "scratch%d.tmp" % i), "wb") as f:
            f.write(block[:4096])

def best(fn, n=3):
    return min(fn() for _ in range(n))

def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    ct = os.path.abspath(args[0])
    # a libtool wrapper script costs tens of ms per run: time the real binary
    real = os.path.join(os.path.dirname(ct), ".libs", os.path.basename(ct))
    libs = os.path.join(os.path.dirname(os.path.dirname(ct)), "core", ".libs")
    if os.path.exists(real) and os.path.isdir(libs):
        ct = real
        os.environ["LD_LIBRARY_PATH"] = libs + ":" + os.environ.get("LD_LIBRARY_PATH", "")
    n_files = int(args[args.index("--files") + 1]) if "--files" in args else 10000
    mb = int(args[args.index("--mb") + 1]) if "--mb" in args else 200
    base = tempfile.mkdtemp(prefix="ctarget-bench-snapshot-")
    tree, scratch = os.path.join(base, "tree"), os.path.join(base, "scratch")
    env = dict(os.environ, CTARGET_SNAPSHOT_MAX_FILES=str(n_files * 2),
               CTARGET_SNAPSHOT_MAX_BYTES=str((mb * 2) << 20))
    try:
        print("generating %d files / %d MB under %s ..." % (n_files, mb, base), flush=True)
        generate(tree, n_files, mb)
        os.sync()  # write-back of the generated tree must not be charged to either side

        tar = lambda: shell("tar -cf - . | sha256sum", cwd=tree)
        tar()  # warm the page cache
        t_tar = best(tar)
        colds, rss = [], 0
        for i in range(3):
            ws = os.path.join(base, "ws%d" % i)
            dt, kb, _ = run([ct, "--workspace", ws, "-q", "snapshot", "create", tree], env=env)
            colds.append(dt)
            rss = max(rss, kb)
        t_cold = min(colds)
        shutil.copytree(tree, scratch, symlinks=True)
        git = "git -c user.name=b -c user.email=b@e"
        # no automatic gc: it would pack the 10,000 new objects in the background while
        # both sides are measured
        shell("git init -q && git config gc.auto 0 && git add -A && %s commit -q -m tree" % git,
              cwd=scratch)
        os.sync()
        ws = os.path.join(base, "ws0")
        create = [ct, "--workspace", ws, "-q", "snapshot", "create", tree, "--output", "json"]
        time.sleep(1.1)  # let the files written by the generator leave the racy window
        run(create, env=env, stdout=subprocess.PIPE)
        # tens of milliseconds each: ten rounds, the two sides taking turns so that both
        # see the same load, best of each
        warm, gits = [], []
        for _ in range(10):
            warm.append(run(create, env=env)[0])
            gits.append(run(["git", "status", "--porcelain"], cwd=scratch)[0])
        t_warm, t_git = min(warm), min(gits)
        _, _, before = run(create, env=env, stdout=subprocess.PIPE)
        old = json.loads(before)["id"]

        with open(os.path.join(tree, "one_mb.bin"), "r+b") as f:
            f.write(os.urandom(4096))
        _, _, out = run(create, env=env, stdout=subprocess.PIPE)
        j = json.loads(out)
        delta = os.path.join(base, "delta.tar")
        r = subprocess.run([ct, "--workspace", ws, "-q", "snapshot", "export", j["id"], "-o",
                            delta, "--since", old], env=env, stderr=subprocess.PIPE)
        shipped = os.path.getsize(delta) if r.returncode == 0 else "n/a (export failed: %s)" \
            % r.stderr.decode().strip()

        print("cold snapshot   %7.3f s   tar|sha256sum %7.3f s   ratio %.2fx (budget <= 1.5x)"
              % (t_cold, t_tar, t_cold / t_tar))
        print("warm snapshot   %7.3f s   git status    %7.3f s   ratio %.2fx (budget <= 1.0x)"
              % (t_warm, t_git, t_warm / t_git))
        print("one 1 MB file changed: new_bytes %d, hashed_files %d, --since archive %s bytes"
              " (budget <= 1.1 MB = %d)" % (j["new_bytes"], j["hashed_files"], shipped,
                                           int(1.1 * (1 << 20))))
        print("peak RSS of the cold snapshot: %.1f MB (budget < 64 MB)" % (rss / 1024))
    finally:
        if "--keep" not in args:
            shutil.rmtree(base, ignore_errors=True)

if __name__ == "__main__":
    main()
