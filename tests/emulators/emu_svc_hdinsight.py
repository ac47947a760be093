"""HDInsight's Livy endpoint for the emulator (azure_emulator.py loads emu_svc_*.py).

Data plane "livy" (its own HTTPS port, DIR/livy_port): Apache Livy's batch API as documented in
/work/shared/specs/livy/docs/rest-api.md -- POST /batches, GET /batches, GET /batches/{id},
GET /batches/{id}/state, GET /batches/{id}/log?from=&size=, DELETE /batches/{id} -- behind
HTTP basic authentication (user "admin", the password written to DIR/livy_password; a wrong
one is 401) and Livy's CSRF check (a POST or DELETE without X-Requested-By is 400, as with
livy.server.csrf-protection.enabled, HDInsight's setting).

POST /batches bodies are held to the request fields of the document's own table (parsed from
the bundled rest-api.md at start: names, types, "required"; an unknown field is refused with
400 "Unrecognized field", as Livy's Jackson mapper does), and a Batch answer carries exactly
the fields of its "Batch" table.  A batch runs as a local process: the spark-submit *emulator*
(tests/servers/spark/spark-submit) with --master yarn --deploy-mode cluster, --name, --conf
(conf, driverMemory..., and spark.yarn.appMasterEnv.* which the emulator exports to the
driver as YARN would), --py-files and the file, in a scratch directory; its combined output
is the batch's log.  `file` must be a local path that exists (Livy's local-dir-whitelist
case: the tests ship it over SSH to this machine first).  States: starting -> running ->
success | dead; DELETE kills the process group and forgets the batch (Livy then answers 404).
At most 16 batches run at once (more: 400 "too many running batches").

Faults ("target": "livy"): status faults (429 with retry_after, 500) through the emulator's
generic machinery; action "kill_batch" (optional "batch": id) kills a running batch's process
with SIGKILL on the next GET of that batch: it goes dead with "YARN application ... killed"
in its log.

ARM: GET .../providers/Microsoft.HDInsight/clusters/NAME?api-version=2021-06-01 answers the
official example's body (GetLinuxSparkCluster.json from specs/hdinsight.json, the bundle of
../shared/specs/hdinsight and ../shared/specs/livy; the swagger itself is not in shared/specs)
with its id, name and connectivityEndpoints made true: SSH at the address a test registered
with POST /_emulator/config {"hdinsight_clusters": {"NAME": {"ssh": "127.0.0.1:PORT",
"kind": "SPARK", "state": "Running"}}}, HTTPS at 127.0.0.1 and the Livy plane's port (which
also answers under /livy, the gateway's path).  Unknown clusters are ARM's 404
ResourceNotFound, another api-version is 400 InvalidApiVersionParameter, any other method 405.

state(emu)["hdinsight"] = {"batches": [{"id", "state", "pid", "alive"}]}: a test checks that
nothing it canceled is left running."""
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time

NAME = "hdinsight"
NAMESPACES = ("microsoft.hdinsight",)

HERE = os.path.dirname(os.path.abspath(__file__))
SPARK_SUBMIT = os.path.join(HERE, "..", "servers", "spark", "spark-submit")
MAX_RUNNING = 16

LIVY_DOC = "docs/rest-api.md"
TYPES = {"path (required)": str, "string": str, "int": int, "list of strings": list,
         "list of string": list, "map of key=val": dict}


def doc_table(section, nth=0):
    """(name, type) rows of the nth table after `section` in Livy's rest-api.md (bundled)."""
    with open(os.path.join(HERE, "specs", "hdinsight.json"), encoding="utf-8") as f:
        md = json.load(f)["files"][LIVY_DOC]
    i = md.index(section + "\n")
    for _ in range(nth):
        i = md.index("</table>", i) + 8
    j = md.index("</table>", i)
    return re.findall(r"<tr>\s*<td>([^<]+)</td>\s*<td>.*?</td>\s*<td>([^<]+)</td>\s*</tr>",
                      md[i:j], re.S)


# the request fields of POST /batches and the Batch object, from the document itself
FIELDS = {n: TYPES[t.strip().lower()] for n, t in doc_table("### POST /batches")}
REQUIRED = [n for n, t in doc_table("### POST /batches") if "required" in t]
BATCH_FIELDS = [n for n, _ in doc_table("### Batch")]

_emu = None
_lock = threading.Lock()
_batches = {}      # id -> dict
_next = [0]
_user = "admin"
_password = None


def init(emu):
    global _emu, _password
    _emu = emu
    _password = secrets.token_urlsafe(18)
    p = os.path.join(emu.dir, "livy_password")
    with open(p + ".tmp", "w") as f:
        f.write(_password + "\n")
    os.rename(p + ".tmp", p)
    os.makedirs(os.path.join(emu.dir, "livy"), exist_ok=True)
    emu.cfg.setdefault("hdinsight_clusters", {})
    emu.data_plane("livy", plane)


API_VERSION = "2021-06-01"
EXAMPLE = ("specification/hdinsight/resource-manager/Microsoft.HDInsight/HDInsight/stable/"
           "2021-06-01/examples/GetLinuxSparkCluster.json")


def _example():
    with open(os.path.join(HERE, "specs", "hdinsight.json"), encoding="utf-8") as f:
        return json.loads(json.load(f)["files"][EXAMPLE])


def arm(h, path, body):
    from azure_emulator import HttpError
    import copy
    m = re.match(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.HDInsight/"
                 r"clusters/([^/]+)$", path, re.I)
    if not m:
        raise HttpError(404, "NotFound", "No HDInsight route for %s %s." % (h.command, path))
    sub, rg, name = m.groups()
    av = h.q.get("api-version")
    if av != API_VERSION:
        raise HttpError(400, "InvalidApiVersionParameter",
                        "The api-version '%s' is invalid. The supported versions are '%s'."
                        % (av, API_VERSION))
    if h.command != "GET":
        raise HttpError(405, "MethodNotAllowed",
                        "The emulator serves HDInsight clusters GET only (ctarget never creates "
                        "clusters).")
    clusters = _emu.cfg.get("hdinsight_clusters") or {}
    c = clusters.get(name)
    if c is None:
        raise HttpError(404, "ResourceNotFound",
                        "The Resource 'Microsoft.HDInsight/clusters/%s' under resource group '%s' "
                        "was not found. For more details please go to "
                        "https://aka.ms/ARMResourceNotFoundFix" % (name, rg))
    b = copy.deepcopy(_example()["responses"]["200"]["body"])
    b["id"] = "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.HDInsight/clusters/%s" % (
        sub, rg, name)
    b["name"] = name
    pr = b["properties"]
    pr["clusterDefinition"]["kind"] = c.get("kind", "SPARK")
    pr["clusterState"] = c.get("state", "Running")
    host, _, port = c.get("ssh", "127.0.0.1:22").rpartition(":")
    livy = _emu.planes["livy"].server_address[1]
    for e in pr["connectivityEndpoints"]:
        if e["name"] == "SSH":
            e["location"], e["port"] = host, int(port)
        elif e["name"] == "HTTPS":
            e["location"], e["port"] = "127.0.0.1", livy
    return h.send(200, b)


def _alive(b):
    p = b.get("proc")
    return p is not None and p.poll() is None


def _refresh(b):
    p = b.get("proc")
    if p is None or b["state"] not in ("starting", "running"):
        return
    rc = p.poll()
    if rc is None:
        b["state"] = "running"
    else:
        b["state"] = "success" if rc == 0 else "dead"
        b["exit"] = rc
        if b.get("log_f"):
            b["log_f"].close()
            b["log_f"] = None


def state(emu):
    with _lock:
        out = []
        for i, b in sorted(_batches.items()):
            _refresh(b)
            out.append({"id": i, "state": b["state"], "pid": b["proc"].pid if b.get("proc") else None,
                        "alive": _alive(b), "name": b.get("name")})
        gone = [{"id": i, "pid": pid, "alive": _pid_alive(pid)} for i, pid in _deleted]
        return {"batches": out, "deleted": gone}


_deleted = []      # (id, pid) of deleted batches


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie of ours is dead
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def stop(emu):
    with _lock:
        for b in _batches.values():
            if _alive(b):
                try:
                    os.killpg(b["proc"].pid, signal.SIGKILL)
                except OSError:
                    pass


def _check_auth(h):
    from azure_emulator import HttpError
    import base64
    a = h.headers.get("Authorization", "")
    ok = False
    if a.startswith("Basic "):
        try:
            u, _, p = base64.b64decode(a[6:].strip()).decode().partition(":")
            ok = secrets.compare_digest(u, _user) and secrets.compare_digest(p, _password)
        except (ValueError, UnicodeDecodeError):
            ok = False
    if not ok:
        # HDInsight's gateway answers 401 with a challenge
        raise HttpError(401, "Unauthorized", "Unauthorized",
                        headers={"WWW-Authenticate": 'Basic realm="Livy"'})


def _msg(h, status, msg):
    h.send(status, {"msg": msg})


def _view(i, b):
    v = {"id": i, "name": b.get("name"), "owner": _user, "proxyUser": b.get("proxyUser"),
         "state": b["state"], "appId": b.get("appId"),
         "appInfo": {"driverLogUrl": None, "sparkUiUrl": None}, "ttl": None,
         "log": _lines(b)[-100:]}
    assert set(v) == set(BATCH_FIELDS), sorted(set(v) ^ set(BATCH_FIELDS))
    return v


def _lines(b):
    try:
        with open(b["log"], "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    ls = text.split("\n")
    if ls and ls[-1] == "":
        ls.pop()
    return ls


def _validate(body):
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    for k, v in body.items():
        t = FIELDS.get(k)
        if t is None:
            return ('Unrecognized field "%s" (class org.apache.livy.server.batch.CreateBatchRequest), '
                    'not marked as ignorable' % k)
        if t is int and (isinstance(v, bool) or not isinstance(v, int)):
            return "field %s must be an int" % k
        if t is not int and not isinstance(v, t):
            return "field %s must be a %s" % (k, {str: "string", list: "list", dict: "map"}[t])
        if t is list and not all(isinstance(x, str) for x in v):
            return "field %s must be a list of strings" % k
        if t is dict and not all(isinstance(x, str) for x in v.values()):
            return "conf values must be strings"
    for k in REQUIRED:
        if k not in body:
            return "Missing required field: %s" % k
    return None


def _start(body):
    i = _next[0]
    _next[0] += 1
    d = os.path.join(_emu.dir, "livy", "batch-%d" % i)
    os.makedirs(d, exist_ok=True)
    log = os.path.join(d, "log.txt")
    argv = [SPARK_SUBMIT, "--master", "yarn", "--deploy-mode", "cluster"]
    if body.get("name"):
        argv += ["--name", body["name"]]
    conf = dict(body.get("conf") or {})
    for f, k in (("driverMemory", "spark.driver.memory"), ("executorMemory", "spark.executor.memory"),
                 ("driverCores", "spark.driver.cores"), ("executorCores", "spark.executor.cores"),
                 ("numExecutors", "spark.executor.instances"), ("queue", "spark.yarn.queue")):
        if f in body:
            conf[k] = str(body[f])
    for k, v in sorted(conf.items()):
        argv += ["--conf", "%s=%s" % (k, v)]
    if body.get("pyFiles"):
        argv += ["--py-files", ",".join(body["pyFiles"])]
    argv.append(body["file"])
    argv += body.get("args") or []
    lf = open(log, "ab")
    app = "application_%d_%04d" % (int(time.time()), i + 1)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    b = {"state": "starting", "name": body.get("name"), "proxyUser": body.get("proxyUser"),
         "log": log, "log_f": lf, "appId": app, "argv": argv}
    try:
        b["proc"] = subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=lf,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except OSError as e:
        lf.write(("cannot start spark-submit: %s\n" % e).encode())
        lf.close()
        b["log_f"] = None
        b["state"] = "dead"
        b["proc"] = None
    _batches[i] = b
    return i, b


def plane(h, path, body):
    from azure_emulator import HttpError
    _check_auth(h)
    if path == "/livy" or path.startswith("/livy/"):  # the HDInsight gateway's path
        path = path[5:] or "/"
    m = h.command
    if m in ("POST", "DELETE") and not h.headers.get("X-Requested-By"):
        return _msg(h, 400, "Missing Required Header for CSRF protection.")
    if path == "/batches" and m == "GET":
        fr, size = int(h.q.get("from", 0) or 0), int(h.q.get("size", 100) or 100)
        with _lock:
            ids = sorted(_batches)
            for i in ids:
                _refresh(_batches[i])
            sel = ids[fr:fr + size]
            return h.send(200, {"from": fr, "total": len(ids),
                                "sessions": [_view(i, _batches[i]) for i in sel]})
    if path == "/batches" and m == "POST":
        try:
            req = json.loads(body.decode() or "null")
        except (ValueError, UnicodeDecodeError):
            return _msg(h, 400, "Malformed JSON")
        bad = _validate(req)
        if bad:
            return _msg(h, 400, bad)
        if not os.path.isfile(req["file"]):
            return _msg(h, 400, "Local path %s cannot be accessed: no such file "
                                "(livy.file.local-dir-whitelist)" % req["file"])
        with _lock:
            running = 0
            for x in _batches.values():
                _refresh(x)
                running += x["state"] in ("starting", "running")
            if running >= MAX_RUNNING:
                return _msg(h, 400, "Rejected, too many running batches (%d)." % running)
            i, b = _start(req)
            return h.send(201, _view(i, b), {"Location": "/batches/%d" % i})
    mm = re.match(r"^/batches/(\d+)(/state|/log)?$", path)
    if not mm:
        raise HttpError(404, "NotFound", "No route for %s %s." % (m, path))
    i, what = int(mm.group(1)), mm.group(2)
    with _lock:
        b = _batches.get(i)
        if b is None:
            return _msg(h, 404, "Session '%d' not found." % i)
        if m == "DELETE" and not what:
            if _alive(b):
                try:
                    os.killpg(b["proc"].pid, signal.SIGKILL)
                except OSError:
                    pass
                b["proc"].wait()
                _deleted.append((i, b["proc"].pid))
            if b.get("log_f"):
                b["log_f"].close()
            del _batches[i]
            return _msg(h, 200, "deleted")
        if m != "GET":
            raise HttpError(405, "MethodNotAllowed", "%s %s" % (m, path))
        f = _emu.take_fault(m, path, ("kill_batch",), target="livy")
        if f and f.get("batch", i) != i:
            f["count"] = f.get("count", 1) + 1   # not this batch: keep it for its own
            f = None
        if f and _alive(b):
            try:
                os.killpg(b["proc"].pid, signal.SIGKILL)
            except OSError:
                pass
            b["proc"].wait()
            if b.get("log_f"):
                b["log_f"].write(("YARN Diagnostics: Application %s was killed: the cluster lost "
                                  "its node (emulator fault kill_batch)\n" % b["appId"]).encode())
                b["log_f"].flush()
        _refresh(b)
        if what == "/state":
            return h.send(200, {"id": i, "state": b["state"]})
        if what == "/log":
            ls = _lines(b)
            fr = int(h.q.get("from", 0) or 0)
            size = int(h.q.get("size", 100) or 100)
            sel = ls[fr:fr + size]
            # rest-api.md documents "size" (number of log lines); Livy's server (SessionServlet)
            # names it "total": both, with the same value
            return h.send(200, {"id": i, "from": fr, "size": len(ls), "total": len(ls), "log": sel})
        return h.send(200, _view(i, b))
