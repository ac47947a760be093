# ctarget aks pod bootstrap (compiled into the aks plugin; runs as `python3 -c SRC MODE`).
#  extract  (init container): rebuild the snapshot carried inline in CTARGET_SNAPSHOT_0..N
#           (base64 of ctarget's snapshot tar: manifest.jsonl + blobs/<sha256>) into ./src,
#           refusing every path that would leave it; each blob's sha256 is checked.
#  run      (main container): run the script in ./src with THE RUN CONTRACT's environment,
#           passing its output through line by line; metrics lines and, on node 0, the files
#           of ./outputs and ./logs are written to stdout as lines starting with \x1ectarget:
#           (the plugin reads them back from the pod log and strips them from the run's log).
import base64, hashlib, io, json, os, subprocess, sys, tarfile, threading, time

M = "\x1ectarget:"


def fail(msg):
    sys.stdout.write("ctarget-boot: %s\n" % msg)
    sys.exit(2)


def safe(rel):
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rel:
        fail("unsafe path in the snapshot manifest: %r" % rel)
    return parts


def extract():
    chunks, i = [], 0
    while "CTARGET_SNAPSHOT_%d" % i in os.environ:
        chunks.append(os.environ["CTARGET_SNAPSHOT_%d" % i])
        i += 1
    if not chunks:
        fail("no snapshot in the environment (CTARGET_SNAPSHOT_0)")
    tar = tarfile.open(fileobj=io.BytesIO(base64.b64decode("".join(chunks))), mode="r:")
    members = {m.name: m for m in tar.getmembers()}
    man = tar.extractfile(members["manifest.jsonl"]).read().decode("utf-8").splitlines()
    root = os.path.abspath("src")
    os.makedirs(root, exist_ok=True)
    n = 0
    for line in man[1:]:
        e = json.loads(line)
        parts = safe(e["path"])
        dest = os.path.join(root, *parts)
        parent = os.path.dirname(dest)
        if os.path.realpath(parent) != parent and not os.path.realpath(parent).startswith(root + os.sep):
            fail("snapshot path %r leaves the source tree" % e["path"])
        if e["type"] == "dir":
            os.makedirs(dest, exist_ok=True)
            os.chmod(dest, 0o700 | (e.get("mode", 0o755) & 0o777))
        elif e["type"] == "file":
            os.makedirs(parent, exist_ok=True)
            data = tar.extractfile(members["blobs/" + e["sha256"]]).read()
            if hashlib.sha256(data).hexdigest() != e["sha256"]:
                fail("blob %s of %r is damaged" % (e["sha256"], e["path"]))
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(dest, e.get("mode", 0o644) & 0o777)
            n += 1
        elif e["type"] == "symlink":
            t = e["target"]
            if t.startswith("/") or os.path.normpath(os.path.join(os.path.dirname(e["path"]), t)).startswith(".."):
                fail("symlink %r points outside the source tree" % e["path"])
            os.makedirs(parent, exist_ok=True)
            os.symlink(t, dest)
    sys.stdout.write("ctarget-boot: snapshot %s: %d files\n" % (json.loads(man[0]).get("ctarget_snapshot", "?"), n))


def run():
    os.chdir("src")
    top = os.path.abspath(".")
    rank = os.environ.get("JOB_COMPLETION_INDEX", "0")
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("CTARGET_SNAPSHOT_"):
            del env[k]
    mfile = os.path.join(os.path.dirname(top), "metrics-%s.jsonl" % rank)
    env.update(CTARGET_OUTPUTS_DIR=os.path.join(top, "outputs"), CTARGET_METRICS_FILE=mfile,
               CTARGET_NODE_RANK=rank, PYTHONUNBUFFERED="1")
    os.makedirs("outputs", exist_ok=True)
    os.makedirs("logs", exist_ok=True)
    open(mfile, "a").close()
    script = env["CTARGET_SCRIPT"]
    args = json.loads(env.get("CTARGET_ARGS", "[]"))
    if script.endswith(".py"):
        argv = [env.get("CTARGET_PYTHON") or "python3", script] + args
    else:
        argv = [os.path.join(top, script)] + args
    lock = threading.Lock()
    out = sys.stdout.buffer

    def emit(b):
        with lock:
            out.write(b)
            out.flush()

    stop = threading.Event()

    def metrics():
        pos, buf = 0, b""
        while True:
            last = stop.is_set()
            with open(mfile, "rb") as f:
                f.seek(pos)
                data = f.read()
            pos += len(data)
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    emit(M.encode() + b"metric " + line + b"\n")
            if last:
                return
            stop.wait(0.2)

    th = threading.Thread(target=metrics, daemon=True)
    th.start()
    try:
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        emit(("ctarget-boot: cannot start %s: %s\n" % (script, e)).encode())
        sys.exit(127)
    for line in iter(p.stdout.readline, b""):
        if line.startswith(b"\x1e"):
            line = line[1:]
        emit(line if line.endswith(b"\n") else line + b"\n")
    code = p.wait()
    stop.set()
    th.join()
    nfiles = 0
    if rank == "0":
        for base in ("outputs", "logs"):
            for d, dirs, files in os.walk(base):
                dirs.sort()
                for fn in sorted(files):
                    path = os.path.join(d, fn)
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    with open(path, "rb") as f:
                        off = 0
                        while True:
                            chunk = f.read(6144)
                            if not chunk and off:
                                break
                            emit(M.encode() + b"file " + json.dumps(
                                {"p": path, "o": off, "d": base64.b64encode(chunk).decode()}).encode() + b"\n")
                            off += len(chunk)
                            if not chunk:
                                break
                    nfiles += 1
    emit(M.encode() + b"end " + json.dumps({"exit": code, "files": nfiles}).encode() + b"\n")
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    {"extract": extract, "run": run}[sys.argv[1]]()
