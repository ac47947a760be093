#!/usr/bin/env python3
"""The remotevm agent (plugins/remotevm/agent.py) on its own: the machine-side half of the
protocol, with the safety rules that matter when a manifest is hostile.  No SSH here:
tests/test_ssh.c drives the same agent through the plugin and a real sshd."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

SRC = os.environ.get("CTARGET_TEST_SRCDIR",
                     os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
AGENT = os.path.join(SRC, "plugins", "remotevm", "agent.py")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def read(p):
    with open(p, "rb") as f:
        return f.read()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def jstr(p):
    """A JSON string the way the core writes manifest paths (raw bytes >= 0x20)."""
    out = b'"'
    for c in p:
        if c == 0x22:
            out += b'\\"'
        elif c == 0x5c:
            out += b'\\\\'
        elif c == 0x0a:
            out += b'\\n'
        elif c < 0x20:
            out += b'\\u%04x' % c
        else:
            out += bytes([c])
    return out + b'"'


def entry(path, kind, data=None, mode=None, target=None):
    p = path.encode() if isinstance(path, str) else path
    line = b'{"path": ' + jstr(p) + b', "type": "' + kind.encode() + b'"'
    if kind == "symlink":
        line += b', "target": ' + jstr(target.encode())
    else:
        line += b', "mode": %d' % (mode if mode is not None else (0o644 if kind == "file"
                                                                   else 0o755))
    if kind == "file":
        line += b', "size": %d, "sha256": "%s"' % (len(data), sha(data).encode())
    return line + b"}\n"


def manifest(entries):
    lines = sorted(entries, key=lambda l: json.loads(l.decode("utf-8", "surrogateescape"))
                   ["path"].encode("utf-8", "surrogateescape"))
    body = b"".join(lines)
    sid = sha(body)
    return sid, b'{"ctarget_snapshot": "%s", "format": 1, "entries": %d}\n' % (
        sid.encode(), len(lines)) + body, body


def tar_of(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Agent(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ctarget-agent-")
        self.root = os.path.join(self.tmp, "root")
        self.kids = []

    def tearDown(self):
        for pid in self.kids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["rm", "-rf", self.tmp])

    def agent(self, *args, stdin=b"", code=0):
        r = subprocess.run([PY, AGENT, self.root, "selftest"] + list(args), input=stdin,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if code is not None:
            self.assertEqual(r.returncode, code, r.stderr.decode())
        return r

    def ship(self, entries, blobs):
        sid, full, body = manifest(entries)
        t = tar_of([("manifest.jsonl", full)] + [("blobs/" + sha(b), b) for b in blobs])
        self.agent("receive", sid, stdin=t)
        return sid

    def tree(self, d):
        out = {}
        for dp, dns, fns in os.walk(d):
            for n in dns + fns:
                p = os.path.join(dp, n)
                rel = os.path.relpath(p, d)
                if os.path.islink(p):
                    out[rel] = ("link", os.readlink(p))
                elif os.path.isdir(p):
                    out[rel] = ("dir", os.stat(p).st_mode & 0o777)
                else:
                    out[rel] = ("file", read(p), os.stat(p).st_mode & 0o777)
        return out

    def test_receive_and_materialize(self):
        a, b = b"print('hi')\n", b"\x00\xff binary"
        sid = self.ship([entry("src", "dir"), entry("src/a.py", "file", a, 0o755),
                         entry("b.bin", "file", b, 0o600), entry("src/same.py", "file", a),
                         entry("ln", "symlink", target="src/a.py")], [a, b])
        for blob in (a, b):  # every cached blob hashes to its name
            p = os.path.join(self.root, "blobs", sha(blob)[:2], sha(blob))
            self.assertEqual(sha(read(p)), sha(blob))
        self.agent("materialize", "run1", sid)
        t = self.tree(os.path.join(self.root, "runs", "run1", "src"))
        self.assertEqual(t["src/a.py"], ("file", a, 0o755))
        self.assertEqual(t["b.bin"], ("file", b, 0o600))
        self.assertEqual(t["src/same.py"], ("file", a, 0o644))
        self.assertEqual(t["ln"], ("link", "src/a.py"))
        # idempotent, and the run cannot change the cache through its copy
        self.agent("materialize", "run1", sid)
        with open(os.path.join(self.root, "runs", "run1", "src", "src", "a.py"), "wb") as f:
            f.write(b"changed")
        p = os.path.join(self.root, "blobs", sha(a)[:2], sha(a))
        self.assertEqual(read(p), a)

    def test_straight_into_a_run(self):
        a, b = b"alpha\n", b"beta\n"
        ents = [entry("d", "dir"), entry("d/a", "file", a), entry("d/a2", "file", a),
                entry("b", "file", b, 0o700), entry("l", "symlink", target="d/a")]
        sid, full, _ = manifest(ents)
        t = tar_of([("manifest.jsonl", full), ("blobs/" + sha(a), a), ("blobs/" + sha(b), b)])
        j = json.loads(self.agent("receive", sid, "r1", stdin=t).stdout)
        self.assertTrue(j["direct"])
        src = os.path.join(self.root, "runs", "r1", "src")
        tr = self.tree(src)
        self.assertEqual((tr["d/a"], tr["d/a2"], tr["b"], tr["l"]),
                         (("file", a, 0o644), ("file", a, 0o644), ("file", b, 0o700),
                          ("link", "d/a")))
        # the run's tree holds the upload until cleanup; a `begin` before that copies it
        # into the cache
        self.assertEqual(os.listdir(os.path.join(self.root, "adopting")), ["r1"])
        self.assertFalse(os.path.exists(os.path.join(self.root, "blobs", sha(a)[:2], sha(a))))
        self.assertTrue(json.loads(self.agent("begin", sid).stdout)["have"])
        for blob in (a, b):
            self.assertEqual(read(os.path.join(self.root, "blobs", sha(blob)[:2], sha(blob))),
                             blob)
        self.assertFalse(os.listdir(os.path.join(self.root, "adopting")))
        self.agent("materialize", "r1", sid)  # already there: nothing to do
        # the run changes its files: the cache holds copies, not the run's inodes
        with open(os.path.join(src, "b"), "wb") as f:
            f.write(b"changed by the run")
        self.agent("cleanup", "r1")
        self.assertFalse(os.path.exists(src))
        self.agent("materialize", "r3", sid)
        self.assertEqual(read(os.path.join(self.root, "runs", "r3", "src", "b")), b)
        # nothing is missing for the next upload of the same snapshot
        self.assertEqual(self.agent("missing", stdin=("%s %d\n%s %d\n" % (
            sha(a), len(a), sha(b), len(b))).encode()).stdout, b"")

    def test_cleanup_moves_the_upload(self):
        """No `begin` came before the run ended: cleanup moves the run's files into the
        cache (the same inodes: nothing copied), except one the run changed."""
        a, b = b"alpha\n", b"beta\n"
        sid, full, _ = manifest([entry("a", "file", a), entry("b", "file", b)])
        t = tar_of([("manifest.jsonl", full), ("blobs/" + sha(a), a), ("blobs/" + sha(b), b)])
        self.agent("receive", sid, "m1", stdin=t)
        src = os.path.join(self.root, "runs", "m1", "src")
        ino = os.stat(os.path.join(src, "a")).st_ino
        with open(os.path.join(src, "b"), "ab") as f:
            f.write(b"appended by the run")
        self.agent("cleanup", "m1")
        pa = os.path.join(self.root, "blobs", sha(a)[:2], sha(a))
        self.assertEqual((read(pa), os.stat(pa).st_ino), (a, ino))
        self.assertFalse(os.path.exists(os.path.join(self.root, "blobs", sha(b)[:2], sha(b))))
        self.assertFalse(os.path.exists(src))
        self.assertFalse(os.listdir(os.path.join(self.root, "adopting")))
        # the snapshot is not complete here (b was changed): the next upload ships b
        j = json.loads(self.agent("begin", sid).stdout)
        self.assertFalse(j["have"])
        self.assertEqual(self.agent("missing", stdin=("%s %d\n%s %d\n" % (
            sha(a), len(a), sha(b), len(b))).encode()).stdout, (sha(b) + "\n").encode())

    def test_cleanup_adopts_what_is_left(self):
        """An adoption that never ran (killed): cleanup moves the unchanged files into the
        cache, and a file the run changed is not taken."""
        a, b = b"alpha\n", b"beta\n"
        sid, full, body = manifest([entry("a", "file", a), entry("b", "file", b)])
        rd = os.path.join(self.root, "runs", "k1")
        os.makedirs(os.path.join(rd, "src"))
        for n, c in (("a", a), ("b", b"changed")):
            with open(os.path.join(rd, "src", n), "wb") as f:
                f.write(c)
        with open(os.path.join(rd, "manifest.jsonl"), "wb") as f:
            f.write(body)
        with open(os.path.join(rd, "src.snapshot"), "w") as f:
            f.write(sid)
        self.agent("cleanup", "k1")
        self.assertEqual(read(os.path.join(self.root, "blobs", sha(a)[:2], sha(a))), a)
        self.assertFalse(os.path.exists(os.path.join(self.root, "blobs", sha(b)[:2], sha(b))))
        self.assertFalse(json.loads(self.agent("begin", sid).stdout)["have"])

    def test_big_blob_and_big_manifest(self):
        # more than one read buffer (1 MiB) for a blob and for the manifest, both ways
        big = os.urandom(3 << 20) + b"end"
        small = b"same content\n"
        ents = [entry("big.bin", "file", big), entry("many", "dir")] + [
            entry("many/f%05d.txt" % i, "file", small) for i in range(9000)]
        sid, full, _ = manifest(ents)
        self.assertGreater(len(full), 1 << 20)
        t = tar_of([("manifest.jsonl", full), ("blobs/" + sha(big), big),
                    ("blobs/" + sha(small), small)])
        self.agent("receive", sid, "direct", stdin=t)
        src = os.path.join(self.root, "runs", "direct", "src")
        self.assertEqual(read(os.path.join(src, "big.bin")), big)
        self.assertEqual(read(os.path.join(src, "many", "f08999.txt")), small)
        self.agent("receive", sid, stdin=t)  # into the cache
        self.assertEqual(read(os.path.join(self.root, "blobs", sha(big)[:2], sha(big))), big)

    def test_missing_and_begin(self):
        a = b"x" * 100
        sid = self.ship([entry("a", "file", a)], [a])
        r = self.agent("missing", stdin=("%s %d\n%s %d\n%s %d\n" % (
            sha(a), 100, sha(a), 99, sha(b"other"), 5)).encode())
        self.assertEqual(r.stdout.decode().split(), [sha(a), sha(b"other")])
        j = json.loads(self.agent("begin", sid).stdout)
        self.assertTrue(j["have"])
        j = json.loads(self.agent("begin", sha(b"nothing")).stdout)
        self.assertEqual((j["have"], j["recent"]), (False, [sid]))

    def test_delta(self):
        a, b, c = b"one\n", b"two\n", b"three\n"
        base = [entry("a", "file", a), entry("b", "file", b), entry("d", "dir")]
        bid = self.ship(base, [a, b])
        now = [entry("a", "file", a), entry("c", "file", c), entry("d", "dir"),
               entry("d/e", "file", b)]
        sid, _, _ = manifest(now)
        delta = (b'{"ctarget_delta": 1, "snapshot": "%s", "base": "%s"}\n' % (
            sid.encode(), bid.encode()) + b"+ " + entry("c", "file", c) + b"+ " +
            entry("d/e", "file", b) + b'- "b"\n')
        self.agent("receive", sid, stdin=tar_of([("manifest.delta", delta),
                                                 ("blobs/" + sha(c), c)]))
        self.agent("materialize", "r2", sid)
        t = self.tree(os.path.join(self.root, "runs", "r2", "src"))
        self.assertEqual(sorted(t), ["a", "c", "d", "d/e"])
        # a delta that does not rebuild the snapshot is refused, nothing recorded
        bad = delta.replace(b'- "b"\n', b"")
        r = self.agent("receive", sha(b"x"), stdin=tar_of([("manifest.delta", bad)]), code=3)
        self.assertIn(b"delta is for snapshot", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.root, "snapshots",
                                                     sha(b"x") + ".jsonl")))

    def test_damaged_blob_refused(self):
        a = b"good content"
        sid, full, _ = manifest([entry("a", "file", a)])
        r = self.agent("receive", sid, stdin=tar_of([("manifest.jsonl", full),
                                                     ("blobs/" + sha(a), b"evil content")]),
                       code=3)
        self.assertIn(b"damaged", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.root, "blobs", sha(a)[:2], sha(a))))
        self.assertFalse(os.path.exists(os.path.join(self.root, "snapshots", sid + ".jsonl")))
        # a manifest whose blob never came: exit 4 and the missing blob named
        r = self.agent("receive", sid, stdin=tar_of([("manifest.jsonl", full)]), code=4)
        self.assertEqual(json.loads(r.stdout)["missing"], [sha(a)])
        # an upload cut off in the middle of a blob: refused, no blob, no snapshot
        big = os.urandom(50000)
        sid, full, _ = manifest([entry("big", "file", big)])
        t = tar_of([("manifest.jsonl", full), ("blobs/" + sha(big), big)])
        r = self.agent("receive", sid, stdin=t[:len(full) + 30000], code=3)
        self.assertIn(b"ended early", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.root, "blobs", sha(big)[:2],
                                                     sha(big))))
        self.assertFalse(os.path.exists(os.path.join(self.root, "snapshots", sid + ".jsonl")))

    def hostile(self, entries, blobs, what):
        """Refused at every door: the upload (into the cache, and straight into a run), and
        materialize from a manifest planted in the cache behind the agent's back."""
        sid, full, body = manifest(entries)
        outside = os.path.join(self.tmp, "outside")
        os.makedirs(outside, exist_ok=True)
        t = tar_of([("manifest.jsonl", full)] + [("blobs/" + sha(b), b) for b in blobs])
        for args in ((sid,), (sid, "h0")):
            r = self.agent("receive", *args, stdin=t, code=3)
            self.assertIn(what.encode(), r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.root, "snapshots", sid + ".jsonl")))
        os.makedirs(os.path.join(self.root, "snapshots"), exist_ok=True)
        with open(os.path.join(self.root, "snapshots", sid + ".jsonl"), "wb") as f:
            f.write(body)
        for b in blobs:
            d = os.path.join(self.root, "blobs", sha(b)[:2])
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, sha(b)), "wb") as f:
                f.write(b)
        r = self.agent("materialize", "h", sid, code=3)
        self.assertIn(what.encode(), r.stderr)
        self.assertEqual(os.listdir(outside), [])
        self.assertFalse(os.path.exists(os.path.join(self.root, "runs", "h", "src.snapshot")))

    def test_hostile_manifests(self):
        x = b"payload"
        out = os.path.join(self.tmp, "outside")
        self.hostile([entry(out + "/abs", "file", x)], [x], "absolute")
        self.hostile([entry("../outside/up", "file", x)], [x], '".."')
        self.hostile([entry("a", "dir"), entry("a/../../outside/f", "file", x)], [x], '".."')
        # a symlink to outside, then a file through it
        self.hostile([entry("l", "symlink", target=out), entry("l/f", "file", x)], [x],
                     "parent is not a directory")
        self.hostile([entry("f", "file", x), entry("f/g", "file", x)], [x],
                     "parent is not a directory")

    def run_script(self, code, args=(), env=(), rid="s1", grace=10):
        sid = self.ship([entry("s.py", "file", code)], [code])
        self.agent("materialize", rid, sid)
        h = lambda b: (b if isinstance(b, bytes) else b.encode()).hex()
        spec = {"argv": [h(PY), h("s.py")] + [h(a) for a in args],
                "env": [h(e) for e in env], "grace": grace, "docker": None}
        pid = json.loads(self.agent("start", rid, stdin=json.dumps(spec).encode()).stdout)
        self.kids.append(pid["pid"])
        return pid

    def poll_until(self, rid, states, limit=120, log_has=b""):
        # limit: a guard against a hang, far above what any run here needs
        end = time.time() + limit
        while time.time() < end:
            r = self.agent("poll", rid, "0", "0", "200")
            head, _, rest = r.stdout.partition(b"\n")
            j = json.loads(head)
            log = rest[:j["log_len"]]
            if j["state"] in states and log_has in log:
                return j, log, rest[j["log_len"]:]
        self.fail("run %s never reached %s" % (rid, states))

    def test_bytes_arrive_exactly(self):
        nasty = ["a b", "it's", 'say "hi"', "$(id)", "`id`", ";", "&&", "new\nline",
                 "é日本", b"\xff\xfe raw"]
        code = (b"import os, sys\nout = sys.stdout.buffer\n"
                b"out.write(repr([os.fsencode(a) for a in sys.argv[1:]]).encode())\n"
                b"out.write(b'|' + repr(os.environb[b'NASTY']).encode())\n"
                b"open(os.environ['CTARGET_METRICS_FILE'], 'a').write('{\"name\": \"m\", "
                b"\"value\": 1}\\n')\nsys.exit(3)\n")
        self.run_script(code, nasty, [b"NASTY=" + b"$(id) 'q' \"d\" \n\xff"])
        j, log, met = self.poll_until("s1", ("exited",))
        self.assertEqual(j["exit_code"], 3)
        want = repr([a if isinstance(a, bytes) else a.encode() for a in nasty]).encode()
        self.assertEqual(log, want + b"|" + repr(b"$(id) 'q' \"d\" \n\xff").encode())
        self.assertEqual(json.loads(met)["name"], "m")

    def test_cancel_kills_the_group(self):
        code = (b"import signal, subprocess, time\nsignal.signal(signal.SIGTERM, "
                b"signal.SIG_IGN)\nsubprocess.Popen(['sleep', '60'])\nprint('up', flush=True)\n"
                b"time.sleep(60)\n")
        pid = self.run_script(code, rid="c1", grace=1)
        # 'up' comes after SIGTERM is ignored: a cancel before it would be honoured at once
        self.poll_until("c1", ("running",), log_has=b"up\n")
        self.agent("cancel", "c1")
        j, _, _ = self.poll_until("c1", ("exited",))
        self.assertTrue(j["canceled"])
        self.assertEqual(j["signal"], signal.SIGKILL)
        left = b"?"
        for _ in range(600):  # a guard: 30 s for the group to be reaped
            left = subprocess.run(["pgrep", "-g", str(pid["pgid"])],
                                  stdout=subprocess.PIPE).stdout
            if not left:
                break
            time.sleep(0.05)
        self.assertEqual(left, b"")

    def test_vanished(self):
        pid = self.run_script(b"import time\ntime.sleep(60)\n", rid="v1")
        self.poll_until("v1", ("running",))
        os.kill(pid["wrapper_pid"], signal.SIGKILL)
        os.killpg(pid["pgid"], signal.SIGKILL)
        j, _, _ = self.poll_until("v1", ("vanished",))
        self.assertIn("no exit status", j["reason"])

    def test_pack(self):
        pid = self.run_script(b"import os\nos.makedirs('outputs/sub', exist_ok=True)\n"
                              b"open('outputs/sub/m.bin', 'wb').write(b'\\x00' * 70000)\n"
                              b"open('logs/l.txt', 'w').write('log')\n"
                              b"os.symlink('/etc/passwd', 'outputs/leak')\n", rid="p1")
        self.assertTrue(pid["pid"] > 0)
        self.poll_until("p1", ("exited",))
        out = self.agent("pack", "p1").stdout
        names, i = [], 0
        while out[i:i + 1] != b"E":
            nl = out.index(b"\n", i)
            head = out[i:nl].split()
            if head[0] == b"D":
                plen = int(head[2])
                names.append(out[nl + 1:nl + 1 + plen].decode())
                i = nl + 1 + plen
            else:
                size, plen = int(head[2]), int(head[3])
                names.append(out[nl + 1:nl + 1 + plen].decode())
                i = nl + 1 + plen + size
        self.assertEqual(names, ["outputs", "outputs/sub", "outputs/sub/m.bin", "logs",
                                 "logs/l.txt"])  # the symlink is not followed or sent

    def test_facts_and_gpus(self):
        # a fake nvidia-smi and docker first on PATH: what attach records about the machine
        bind = os.path.join(self.tmp, "bin")
        os.makedirs(bind)
        with open(os.path.join(bind, "nvidia-smi"), "w") as f:
            f.write("#!/bin/sh\necho 'Tesla V100-SXM2-16GB, 16160, 535.104.05'\n"
                    "echo 'Tesla V100-SXM2-16GB, 16160, 535.104.05'\n")
        with open(os.path.join(bind, "docker"), "w") as f:
            f.write("#!/bin/sh\n[ \"$1\" = info ] && exit 0\nexit 1\n")
        for n in ("nvidia-smi", "docker"):
            os.chmod(os.path.join(bind, n), 0o755)
        r = subprocess.run([PY, AGENT, self.root, "x", "facts", "docker"], stdout=subprocess.PIPE,
                           env=dict(os.environ, PATH=bind + ":" + os.environ["PATH"]), timeout=30)
        j = json.loads(r.stdout)
        self.assertEqual(j["system"], "Linux")
        self.assertEqual(j["gpu_count"], 2)
        self.assertEqual(j["gpus"][0], {"name": "Tesla V100-SXM2-16GB", "memory_mib": 16160,
                                        "driver": "535.104.05"})
        self.assertTrue(j["docker"] and j["docker_running"])
        self.assertTrue(j["python3_version"].startswith("3."))

    def test_docker_command(self):
        # built as an argument list (no shell): values travel in the environment, by name
        os.makedirs(os.path.join(self.root, "runs", "d1"))
        h = lambda b: b.encode().hex()
        spec = {"argv": [h("python"), h("train.py"), h("a b"), h("$(id)")],
                "env": [h("SECRET=s3cr3t value")], "grace": 5,
                "docker": {"engine": "podman", "image": "pytorch/pytorch:2.1", "gpu": True}}
        r = self.agent("start", "--dry-run", "d1", stdin=json.dumps(spec).encode())
        argv = json.loads(r.stdout)
        rd = os.path.join(self.root, "runs", "d1")
        self.assertEqual(argv, ["podman", "run", "--rm", "--name", "ctarget-d1", "-v",
                                rd + "/src:/ctarget/src", "-v",
                                rd + "/metrics.jsonl:/ctarget/metrics.jsonl", "-w",
                                "/ctarget/src", "-e", "CTARGET_RUN_ID", "-e",
                                "CTARGET_OUTPUTS_DIR", "-e", "CTARGET_METRICS_FILE", "-e",
                                "SECRET", "--gpus", "all", "pytorch/pytorch:2.1", "python",
                                "train.py", "a b", "$(id)"])
        self.assertNotIn("s3cr3t", r.stdout.decode())

    def test_serve(self):
        a = b"served"
        sid, full, _ = manifest([entry("a", "file", a)])
        t = tar_of([("manifest.jsonl", full), ("blobs/" + sha(a), a)])
        framed = b"".join(b"%x\n" % len(t[i:i + 1000]) + t[i:i + 1000]
                          for i in range(0, len(t), 1000)) + b"0\n"
        req = lambda verb, args, n: json.dumps({"verb": verb, "args": args,
                                                "len": n}).encode() + b"\n"
        stdin = (req("begin", [sid], 0) + req("receive", [sid], -1) + framed +
                 req("missing", [], 67) + ("%s %d\n" % (sha(a), len(a))).encode() +
                 req("nosuchverb", [], 0))
        r = self.agent("serve", stdin=stdin)
        answers, out = [], r.stdout
        while out:
            head, _, out = out.partition(b"\n")
            j = json.loads(head)
            answers.append((j["exit"], out[:j["len"]]))
            out = out[j["len"]:]
        self.assertEqual(len(answers), 4)
        self.assertFalse(json.loads(answers[0][1])["have"])
        self.assertEqual((answers[1][0], json.loads(answers[1][1])["blobs"]), (0, 1))
        self.assertEqual(answers[2], (0, b""))  # nothing missing any more
        self.assertEqual(answers[3][0], 2)


if __name__ == "__main__":
    r = unittest.main(exit=False, verbosity=1).result
    failed = len(r.failures) + len(r.errors)
    line = "agent_selftest: %d passed, %d failed (%d skipped)\n" % (
        r.testsRun - failed - len(r.skipped), failed, len(r.skipped))
    sys.stdout.write(line)
    try:
        os.write(9, line.encode())
    except OSError:
        pass
    sys.exit(1 if failed else 0)
