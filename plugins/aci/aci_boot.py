"""ctarget's bootstrap inside an ACI container (compiled into the aci plugin; run as python3 -c).

Environment (set by the plugin in the container group):
  CTARGET_ACI_SNAPSHOT_URL  read SAS URL of the snapshot tar (secure value)
  CTARGET_ACI_OUTPUT_URL    write SAS URL of runs/<run id> in the container (secure value)
  CTARGET_ACI_SCRIPT, CTARGET_ACI_ARGS (JSON list), CTARGET_RUN_ID
Rebuilds the snapshot (manifest.jsonl + blobs/<sha256>, safe extraction: nothing outside the
tree, no path through a symlink), runs the script there with CTARGET_OUTPUTS_DIR and
CTARGET_METRICS_FILE, uploads the metrics once a second while it runs, then ./outputs, ./logs
and result.json {"exit_code": N}; exits with the script's code."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request

E = dict(os.environ)
SNAP = E.pop("CTARGET_ACI_SNAPSHOT_URL")
OUT = E.pop("CTARGET_ACI_OUTPUT_URL")
SCRIPT = E.pop("CTARGET_ACI_SCRIPT")
ARGS = json.loads(E.pop("CTARGET_ACI_ARGS", "[]"))
ROOT = os.path.abspath(E.get("CTARGET_ACI_ROOT", "ctarget-run"))
SRC = os.path.join(ROOT, "src")
META = os.path.join(ROOT, "meta")


def say(msg):
    sys.stderr.write("ctarget-aci: %s\n" % msg)
    sys.stderr.flush()


def put(rel, data):
    base, q = OUT.split("?", 1)
    url = "%s/%s?%s" % (base, urllib.parse.quote(rel), q)
    for attempt in range(5):
        try:
            rq = urllib.request.Request(url, data=data, method="PUT", headers={
                "x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06",
                "Content-Type": "application/octet-stream"})
            urllib.request.urlopen(rq, timeout=60).close()
            return True
        except Exception as e:  # the SAS is in the URL: say only what failed
            err = getattr(e, "code", None) or type(e).__name__
            time.sleep(0.5 * (attempt + 1))
    say("could not upload %s (%s)" % (rel, err))
    return False


def inside(path):
    p = os.path.realpath(path)
    return p == SRC or p.startswith(SRC + os.sep)


def rebuild():
    os.makedirs(META, exist_ok=True)
    tar = os.path.join(META, "snapshot.tar")
    for attempt in range(5):
        try:
            with urllib.request.urlopen(SNAP, timeout=120) as r, open(tar, "wb") as f:
                while True:
                    b = r.read(1 << 20)
                    if not b:
                        break
                    f.write(b)
            break
        except Exception as e:
            if attempt == 4:
                say("cannot download the snapshot (%s)" % (getattr(e, "code", None) or type(e).__name__))
                sys.exit(70)
            time.sleep(1 + attempt)
    os.makedirs(SRC, exist_ok=True)
    with tarfile.open(tar) as tf:
        lines = tf.extractfile("manifest.jsonl").read().decode("utf-8").splitlines()
        head = json.loads(lines[0])
        if head.get("format") != 1:
            say("unknown snapshot format %r" % head.get("format"))
            sys.exit(70)
        links = []
        for ln in lines[1:]:
            e = json.loads(ln)
            rel = e["path"]
            parts = rel.split("/")
            if rel.startswith("/") or any(x in ("", ".", "..") for x in parts):
                say("refused path %r in the snapshot" % rel)
                sys.exit(70)
            dest = os.path.join(SRC, *parts)
            if not inside(os.path.dirname(dest)):
                say("refused path %r (outside the tree)" % rel)
                sys.exit(70)
            if e["type"] == "dir":
                os.makedirs(dest, exist_ok=True)
                os.chmod(dest, (e.get("mode", 0o755) & 0o777) | 0o700)
            elif e["type"] == "file":
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                data = tf.extractfile("blobs/" + e["sha256"]).read()
                if hashlib.sha256(data).hexdigest() != e["sha256"]:
                    say("blob of %r is damaged" % rel)
                    sys.exit(70)
                if os.path.islink(dest):
                    os.unlink(dest)
                with open(dest, "wb") as f:
                    f.write(data)
                os.chmod(dest, e.get("mode", 0o644) & 0o777)
            elif e["type"] == "symlink":
                links.append((dest, e["target"]))
        for dest, target in links:
            if os.path.isabs(target) or not inside(os.path.join(os.path.dirname(dest), target)):
                say("refused symlink %s -> %s" % (dest, target))
                continue
            os.symlink(target, dest)
    os.unlink(tar)


def upload_tree(sub):
    top = os.path.join(SRC, sub)
    if not os.path.isdir(top) or os.path.islink(top):
        return
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
        for n in files:
            p = os.path.join(d, n)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as f:
                put(sub + "/" + os.path.relpath(p, top).replace(os.sep, "/"), f.read())


def main():
    rebuild()
    metrics = os.path.join(META, "metrics.jsonl")
    env = dict(E, CTARGET_OUTPUTS_DIR=os.path.join(SRC, "outputs"), CTARGET_METRICS_FILE=metrics,
               PYTHONUNBUFFERED="1")
    os.makedirs(os.path.join(SRC, "outputs"), exist_ok=True)
    script = os.path.join(SRC, SCRIPT)
    if SCRIPT.endswith(".py"):
        argv = [sys.executable, script] + ARGS
    else:
        argv = [script] + ARGS
    proc = subprocess.Popen(argv, cwd=SRC, env=env)

    def forward(sig, frame):
        try:
            proc.send_signal(sig)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    state = {"size": 0}
    done = threading.Event()

    def push_metrics():
        try:
            n = os.path.getsize(metrics)
        except OSError:
            return
        if n != state["size"]:
            with open(metrics, "rb") as f:
                data = f.read()
            if put("metrics.jsonl", data):
                state["size"] = len(data)

    def pump():
        while not done.wait(1.0):
            push_metrics()
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    rc = proc.wait()
    done.set()
    t.join(5)
    push_metrics()
    upload_tree("outputs")
    upload_tree("logs")
    code = rc if rc >= 0 else 128 - rc
    put("result.json", json.dumps({"exit_code": code}).encode())
    sys.stdout.flush()
    os._exit(code)


main()
