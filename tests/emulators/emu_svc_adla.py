"""Azure Data Lake Analytics for the emulator (README "Further services"): the ARM account
(GET Microsoft.DataLakeAnalytics/accounts/NAME, api 2016-11-01), the job data plane (its own
HTTPS port, data plane "adla": PUT/GET /Jobs/{id}, GET /Jobs, POST /Jobs/{id}/CancelJob,
api-version 2016-11-01, every request body validated against the official job.json) and the
account's default Data Lake Store as WebHDFS over a local directory (data plane "adls":
/webhdfs/v1/PATH?op=MKDIRS|CREATE|APPEND|OPEN|LISTSTATUS|GETFILESTATUS|DELETE).

A job is U-SQL run by adla_usql.py, one local process per phase (compile, then run), with real
results: compile errors end the job Failed with the service's errorMessage (errorId, message,
lineNumber), runtime errors likewise, outputs land in the store.  The interpreter's output is
written to the store under the job's logFolder and named in properties.debugData.paths (the
service's debug data; the plugin shows it in the run's log).

Faults ({"target": "adla"|"adls", ...}): the emulator's status faults (429 + Retry-After, 500)
on either plane, and {"target": "adla", "action": "fail_job", "errorId": ..., "message": ...,
"count": N}: the next N jobs fail on the service side once Running (their process is killed,
result Failed with that error), as when a vertex fails for the service's own reasons;
{"target": "adla", "action": "slow_job", "seconds": S}: the next job's vertex runs S seconds
(a long job, to cancel while its process lives).

Tokens: both planes take an AAD bearer for https://datalake.azure.net (what the service and
ADLS Gen1 accept); another audience is 401.
"""
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

from azure_emulator import HttpError, now_iso

NAME = "adla"
NAMESPACES = ("microsoft.datalakeanalytics",)
API = "2016-11-01"
HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLE = os.path.join(HERE, "specs", "adla.json")
SPEC_REL = "specification/datalake-analytics/data-plane/Microsoft.DataLakeAnalytics/stable/2016-11-01"
AUDIENCE = "https://datalake.azure.net"
ACCOUNT_RX = re.compile(r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.DataLakeAnalytics"
                        r"/accounts/([^/]+)/?$", re.I)
GUID_RX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
MAX_JOBS = 200
MAX_DOP = 30
TERMINAL = "Ended"


class State:
    def __init__(self, emu):
        self.emu = emu
        self.account = emu.seed.get("adla_account", "ctargetadla")
        self.store_name = emu.seed.get("adls_account", "ctargetadls")
        self.root = os.path.join(emu.dir, "adls")
        self.jobdir = os.path.join(emu.dir, "adla-jobs")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.jobdir, exist_ok=True)
        self.jobs = {}   # lower job id -> Job
        self.invalid = []  # request bodies the spec refused (for tests)
        import swagger_validate
        spec_dir = unpack(os.path.join(emu.dir, "specs"))
        self.spec = swagger_validate.Spec([os.path.join(spec_dir, "job.json")])


def unpack(dest):
    with open(BUNDLE, encoding="utf-8") as f:
        b = json.load(f)
    for rel, text in b["files"].items():
        p = os.path.join(dest, rel)
        if os.path.exists(p):
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p + ".tmp", "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(p + ".tmp", p)
    return os.path.join(dest, SPEC_REL)


def init(emu):
    emu.adla = State(emu)
    emu.data_plane("adla", job_plane)
    emu.data_plane("adls", store_plane)


def state(emu):
    st = emu.adla
    with emu.lock:
        return {"account": st.account, "store": st.store_name, "store_root": st.root,
                "jobs": {k: j.admin_view() for k, j in st.jobs.items()},
                "invalid": list(st.invalid)}


def reset(emu, full):
    if full:
        stop(emu)
        with emu.lock:
            emu.adla.jobs = {}
            emu.adla.invalid = []


def stop(emu):
    for j in list(emu.adla.jobs.values()):
        j.kill()


# ---- ARM: the account -----------------------------------------------------------------------
def account_view(emu, rg, name):
    st = emu.adla
    rid = "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.DataLakeAnalytics/accounts/%s" % (
        emu.sub, rg, st.account)
    return {"id": rid, "name": st.account, "type": "Microsoft.DataLakeAnalytics/accounts",
            "location": emu.seed.get("location", "westeurope"), "tags": {},
            "properties": {"provisioningState": "Succeeded", "state": "Active",
                           "accountId": str(uuid.uuid5(uuid.NAMESPACE_URL, rid)),
                           "endpoint": "%s.azuredatalakeanalytics.net" % st.account,
                           "defaultDataLakeStoreAccount": st.store_name,
                           "dataLakeStoreAccounts": [{"id": rid + "/dataLakeStoreAccounts/" + st.store_name,
                                                      "name": st.store_name,
                                                      "type": "Microsoft.DataLakeAnalytics/accounts/dataLakeStoreAccounts",
                                                      "properties": {"suffix": "azuredatalakestore.net"}}],
                           "maxDegreeOfParallelism": MAX_DOP, "maxJobCount": 3, "queryStoreRetention": 30,
                           "creationTime": "2026-01-01T00:00:00.000Z",
                           "lastModifiedTime": "2026-01-01T00:00:00.000Z"}}


def arm(h, path, body):
    emu = h.emu
    av = h.q.get("api-version")
    if av != API:
        raise HttpError(400, "InvalidApiVersionParameter",
                        "The api-version '%s' is invalid. The supported versions are '%s'." % (av, API))
    m = ACCOUNT_RX.match(path)
    if not m:
        raise HttpError(400, "InvalidResourceType", "The resource type of '%s' could not be found in the "
                        "namespace 'Microsoft.DataLakeAnalytics' for api version '%s'." % (path, av))
    if h.command != "GET":
        raise HttpError(405, "MethodNotAllowed", "The emulator serves GET of Data Lake Analytics accounts only.")
    if m.group(2).lower() != emu.adla.account.lower():
        raise HttpError(404, "ResourceNotFound", "The Resource 'Microsoft.DataLakeAnalytics/accounts/%s' under "
                        "resource group '%s' was not found." % (m.group(2), m.group(1)))
    return h.send(200, account_view(emu, m.group(1), m.group(2)))


# ---- tokens ---------------------------------------------------------------------------------
def check_token(h):
    auth = h.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        raise HttpError(401, "AuthenticationFailed", "The 'Authorization' header is missing or invalid.")
    t = h.emu.tokens.get(auth[7:].strip())
    if t is None:
        raise HttpError(401, "InvalidAuthenticationToken", "The access token is invalid.")
    if t["exp"] <= time.time():
        raise HttpError(401, "ExpiredAuthenticationToken", "The access token has expired.")
    if t["aud"].rstrip("/") != AUDIENCE:
        raise HttpError(401, "InvalidAuthenticationTokenAudience",
                        "The access token has been obtained for wrong audience or resource '%s'; "
                        "Data Lake takes tokens for %s." % (t["aud"], AUDIENCE))


# ---- jobs -----------------------------------------------------------------------------------
class Job:
    def __init__(self, emu, jid, req):
        self.emu = emu
        self.id = jid
        self.req = req
        self.state, self.result = "Accepted", "None"
        self.submit = time.time()
        self.start = self.end = None
        self.errors = []
        self.audit = []
        self.proc = None
        self.cancelled = False
        self.fail = None   # fail_job fault
        self.dir = os.path.join(emu.adla.jobdir, jid)
        os.makedirs(self.dir, exist_ok=True)
        d = datetime.datetime.utcfromtimestamp(self.submit)
        self.log_folder = "/system/jobservice/jobs/Usql/%s/%s/logs/" % (d.strftime("%Y/%m/%d/%H/%M"), jid)
        self.record("Accepted")

    def record(self, new, details=None):
        r = {"newState": new, "timeStamp": now_iso(), "requestedByUser": "ctarget-emulator"}
        if details:
            r["details"] = details
        self.audit.append(r)

    def set(self, new, result=None):
        with self.emu.lock:
            if self.state == TERMINAL:
                return False
            self.state = new
            if new == "Running" and self.start is None:
                self.start = time.time()
            if result:
                self.result = result
                self.end = time.time()
            self.record(new, "result:%s" % result if result else None)
            return True

    def kill(self):
        pr = self.proc
        if pr and pr.poll() is None:
            try:
                os.killpg(pr.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                pr.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def alive(self):
        return bool(self.proc and self.proc.poll() is None)

    def admin_view(self):
        return {"state": self.state, "result": self.result, "pid": self.proc.pid if self.proc else None,
                "alive": self.alive(), "errors": self.errors, "name": self.req.get("name")}

    def view(self, full=True):
        emu = self.emu
        acc = emu.adla
        v = {"jobId": self.id, "name": self.req.get("name"), "type": "USql",
             "submitter": "ctarget@emulator", "degreeOfParallelism": self.req.get("degreeOfParallelism", 1),
             "priority": self.req.get("priority", 1000), "submitTime": now_iso(self.submit),
             "state": self.state, "result": self.result,
             "logFolder": "adl://%s.azuredatalakestore.net%s" % (acc.store_name, self.log_folder)}
        if self.start:
            v["startTime"] = now_iso(self.start)
        if self.end:
            v["endTime"] = now_iso(self.end)
        if self.req.get("logFilePatterns"):
            v["logFilePatterns"] = self.req["logFilePatterns"]
        if self.req.get("related"):
            v["related"] = self.req["related"]
        if not full:
            return v
        props = self.req.get("properties", {})
        v["errorMessage"] = self.errors
        v["stateAuditRecords"] = self.audit
        p = {"type": "USql", "script": props.get("script", ""),
             "runtimeVersion": props.get("runtimeVersion") or "release_20260101v00_ctarget_emulator",
             "rootProcessNodeId": str(uuid.uuid5(uuid.NAMESPACE_URL, self.id)),
             "debugData": {"jobId": self.id, "command": "adla_usql.py",
                           "paths": ["adl://%s.azuredatalakestore.net%sinterpreter.log"
                                     % (acc.store_name, self.log_folder)]},
             "diagnostics": [], "resources": [],
             "totalCompilationTime": "PT0S", "totalQueuedTime": "PT0S", "totalRunningTime": "PT0S",
             "totalPauseTime": "PT0S"}
        if props.get("compileMode"):
            p["compileMode"] = props["compileMode"]
        v["properties"] = p
        return v

    # the job's life: a thread per job
    def run(self):
        emu = self.emu
        phase = max(0.02, emu.cfg.get("job_phase_ms", 100) / 1000.0)
        script = os.path.join(self.dir, "script.usql")
        with open(script, "w", encoding="utf-8") as f:
            f.write(self.req.get("properties", {}).get("script", ""))
        log = os.path.join(self.dir, "interpreter.log")
        for st in ("Compiling",):
            time.sleep(phase)
            if not self.set(st):
                return
        rc, res = self.interp(script, log, compile_only=True)
        if self.state == TERMINAL:
            return
        if not res.get("ok"):
            return self.finish("Failed", res.get("errors") or [self.internal(rc)])
        for st in ("Queued", "Scheduling", "Starting"):
            time.sleep(phase)
            if not self.set(st):
                return
        if not self.set("Running"):
            return
        with emu.lock:
            f = emu.take_fault("PUT", "/Jobs/" + self.id, ("fail_job",), target="adla")
        if f:
            self.fail = f
            threading.Timer(phase * 2, self.service_failure).start()
        with emu.lock:
            slow = emu.take_fault("PUT", "/Jobs/" + self.id, ("slow_job",), target="adla")
        rc, res = self.interp(script, log, compile_only=False,
                              delay=float(slow.get("seconds", 30)) if slow else 0)
        if self.state == TERMINAL:
            return
        if res.get("ok"):
            return self.finish("Succeeded", [])
        return self.finish("Failed", res.get("errors") or [self.internal(rc)])

    def internal(self, rc):
        return {"errorId": "E_RUNTIME_SYSTEM_INTERPRETER_CRASHED", "severity": "Error", "source": "SYSTEM",
                "message": "The vertex process exited with status %s without a result." % rc}

    def service_failure(self):
        f = self.fail
        err = {"errorId": f.get("errorId", "E_RUNTIME_SYSTEM_VERTEX_FAILED"), "severity": "Error",
               "source": "SYSTEM", "message": f.get("message", "A vertex failed for a system reason "
                                                               "(injected by the emulator).")}
        if self.finish("Failed", [err]):
            self.kill()

    def interp(self, script, log, compile_only, delay=0):
        res_file = os.path.join(self.dir, "compile.json" if compile_only else "result.json")
        cmd = [sys.executable, os.path.join(HERE, "adla_usql.py"), "--store", self.emu.adla.root,
               "--script", script, "--result", res_file]
        if compile_only:
            cmd.append("--compile-only")
        if delay:
            cmd += ["--delay", str(delay)]
        with open(log, "ab") as lf:
            with self.emu.lock:
                if self.state == TERMINAL:
                    return None, {}
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                             start_new_session=True, cwd=self.dir)
            try:
                rc = self.proc.wait(600)
            except subprocess.TimeoutExpired:
                self.kill()
                rc = -9
        self.publish_log(log)
        try:
            with open(res_file) as f:
                return rc, json.load(f)
        except (OSError, ValueError):
            return rc, {"ok": False}

    def publish_log(self, log):
        """The interpreter's output into the store, under the job's logFolder (debugData)."""
        dst = os.path.join(self.emu.adla.root, self.log_folder.lstrip("/"), "interpreter.log")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            shutil.copyfile(log, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
        except OSError:
            pass

    def finish(self, result, errors):
        with self.emu.lock:
            if self.state == TERMINAL:
                return False
            self.errors = errors
            return self.set(TERMINAL, result)

    def cancel(self):
        if self.finish("Cancelled", []):
            self.kill()


def job_plane(h, path, body):
    emu = h.emu
    st = emu.adla
    check_token(h)
    if h.q.get("api-version") != API:
        raise HttpError(400, "InvalidApiVersion", "The api-version '%s' is not supported; use %s."
                        % (h.q.get("api-version"), API))
    op = st.spec.find_operation(h.command, path)
    if op is None:
        raise HttpError(404, "NotFound", "No job operation %s %s." % (h.command, path))
    m = re.match(r"^/Jobs/([^/]+)(/CancelJob)?$", path, re.I)
    if path.rstrip("/").lower() == "/jobs" and h.command == "GET":
        top = int(h.q.get("$top", "500") or 500)
        with emu.lock:
            jobs = sorted(st.jobs.values(), key=lambda j: -j.submit)
            return h.send(200, {"value": [j.view(full=False) for j in jobs[:max(0, min(top, 500))]]})
    if not m:
        raise HttpError(404, "NotFound", "No job operation %s %s." % (h.command, path))
    jid = m.group(1)
    if not GUID_RX.match(jid):
        raise HttpError(400, "InvalidJobId", "The job identity '%s' is not a GUID." % jid)
    if h.command == "PUT" and not m.group(2):
        try:
            req = json.loads(body) if body.strip() else None
        except ValueError as e:
            raise HttpError(400, "InvalidRequestContent", "The request content could not be deserialized: %s" % e)
        errs = st.spec.validate_request(op, req)
        if errs:
            with emu.lock:
                st.invalid.append({"path": path, "errors": errs})
            h.rec["invalid"] = errs
            raise HttpError(400, "InvalidRequestContent", "The job does not match the JobInformation "
                            "schema: %s" % "; ".join(errs[:5]))
        if req.get("type") != "USql" or req.get("properties", {}).get("type") != "USql":
            raise HttpError(400, "UnsupportedJobType", "The emulator runs U-SQL jobs only (type USql).")
        if int(req.get("degreeOfParallelism") or 1) > MAX_DOP:
            raise HttpError(400, "InvalidDegreeOfParallelism", "The requested degree of parallelism "
                            "%s exceeds the account's maximum of %d." % (req["degreeOfParallelism"], MAX_DOP))
        if len(req["properties"].get("script", "").encode()) > 3 * 1024 * 1024:
            raise HttpError(400, "ScriptTooLarge", "The script exceeds the maximum size of 3 MB.")
        with emu.lock:
            if jid.lower() in st.jobs:
                raise HttpError(409, "JobAlreadyExists", "A job with id '%s' already exists." % jid)
            if len(st.jobs) >= MAX_JOBS:
                raise HttpError(429, "TooManyJobs", "The emulator keeps at most %d jobs." % MAX_JOBS,
                                {"Retry-After": "5"})
            j = Job(emu, jid.lower(), req)
            st.jobs[jid.lower()] = j
        threading.Thread(target=j.run, daemon=True).start()
        with emu.lock:
            return h.send(200, j.view())
    with emu.lock:
        j = st.jobs.get(jid.lower())
    if j is None:
        raise HttpError(404, "JobNotFound", "The job '%s' does not exist in account '%s'." % (jid, st.account))
    if m.group(2) and h.command == "POST":
        j.cancel()
        return h.send(200, None)
    if h.command == "GET" and not m.group(2):
        with emu.lock:
            return h.send(200, j.view())
    raise HttpError(405, "MethodNotAllowed", "%s is not allowed on %s." % (h.command, path))


# ---- the store: WebHDFS over a directory ------------------------------------------------------
def remote(h, status, exc, msg):
    java = {"FileNotFoundException": "java.io.FileNotFoundException",
            "FileAlreadyExistsException": "org.apache.hadoop.fs.FileAlreadyExistsException",
            "IllegalArgumentException": "java.lang.IllegalArgumentException",
            "AccessControlException": "org.apache.hadoop.security.AccessControlException",
            "UnsupportedOperationException": "java.lang.UnsupportedOperationException"}.get(exc, exc)
    return h.send(status, {"RemoteException": {"exception": exc, "javaClassName": java, "message": msg}})


def fstatus(full, suffix):
    s = os.stat(full)
    isdir = os.path.isdir(full)
    return {"pathSuffix": suffix, "type": "DIRECTORY" if isdir else "FILE",
            "length": 0 if isdir else s.st_size, "blockSize": 0 if isdir else 268435456,
            "replication": 0 if isdir else 1, "accessTime": int(s.st_atime * 1000),
            "modificationTime": int(s.st_mtime * 1000), "permission": "770" if isdir else "660",
            "owner": "ctarget", "group": "ctarget"}


def store_plane(h, path, body):
    emu = h.emu
    root = os.path.realpath(emu.adla.root)
    try:
        check_token(h)
    except HttpError as e:
        return remote(h, 401, "AccessControlException", e.message)
    if not path.startswith("/webhdfs/v1"):
        return remote(h, 404, "FileNotFoundException", "No WebHDFS path: %s" % path)
    rel = urllib.parse.unquote(path[len("/webhdfs/v1"):]) or "/"
    if any(seg == ".." for seg in rel.split("/")):
        return remote(h, 400, "IllegalArgumentException", "Invalid path name %s" % rel)
    full = os.path.realpath(os.path.join(root, rel.lstrip("/")))
    if full != root and not full.startswith(root + os.sep):
        return remote(h, 400, "IllegalArgumentException", "Invalid path name %s" % rel)
    op = (h.q.get("op") or "").upper()
    m = h.command
    if op == "MKDIRS" and m == "PUT":
        if os.path.isfile(full):
            return remote(h, 403, "FileAlreadyExistsException", "%s is a file" % rel)
        os.makedirs(full, exist_ok=True)
        return h.send(200, {"boolean": True})
    if op == "CREATE" and m == "PUT":
        if h.q.get("write", "").lower() != "true":
            # the WebHDFS two-step: no data here; the Location takes it
            q = dict(h.q, write="true")
            loc = "https://127.0.0.1:%d%s?%s" % (h.server.server_address[1], path, urllib.parse.urlencode(q))
            return h.send(307, None, {"Location": loc})
        if os.path.isdir(full):
            return remote(h, 403, "FileAlreadyExistsException", "%s is a directory" % rel)
        if os.path.exists(full) and h.q.get("overwrite", "false").lower() != "true":
            return remote(h, 403, "FileAlreadyExistsException", "%s already exists" % rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full + ".emu-tmp", "wb") as f:
            f.write(body)
        os.replace(full + ".emu-tmp", full)
        return h.send(201, None)
    if op == "APPEND" and m == "POST":
        if not os.path.isfile(full):
            return remote(h, 404, "FileNotFoundException", "File/Folder does not exist: %s" % rel)
        size = os.path.getsize(full)
        if "offset" in h.q and int(h.q["offset"] or -1) != size:
            return remote(h, 400, "BadOffsetException", "APPEND failed with error 0x83090aa2 "
                          "(Bad offset). The offset %s is not the file's length %d." % (h.q["offset"], size))
        with open(full, "ab") as f:
            f.write(body)
        return h.send(200, None)
    if op == "OPEN" and m == "GET":
        if not os.path.isfile(full):
            return remote(h, 404, "FileNotFoundException", "File/Folder does not exist: %s" % rel)
        if h.q.get("read", "").lower() != "true":
            q = dict(h.q, read="true")
            loc = "https://127.0.0.1:%d%s?%s" % (h.server.server_address[1], path, urllib.parse.urlencode(q))
            return h.send(307, None, {"Location": loc})
        with open(full, "rb") as f:
            f.seek(int(h.q.get("offset", 0) or 0))
            n = h.q.get("length")
            data = f.read(int(n)) if n else f.read()
        return h.send(200, raw=data, ctype="application/octet-stream")
    if op == "GETFILESTATUS" and m == "GET":
        if not os.path.exists(full):
            return remote(h, 404, "FileNotFoundException", "File/Folder does not exist: %s" % rel)
        return h.send(200, {"FileStatus": fstatus(full, "")})
    if op == "LISTSTATUS" and m == "GET":
        if not os.path.exists(full):
            return remote(h, 404, "FileNotFoundException", "File/Folder does not exist: %s" % rel)
        if os.path.isfile(full):
            return h.send(200, {"FileStatuses": {"FileStatus": [fstatus(full, "")]}})
        names = sorted(n for n in os.listdir(full) if not n.endswith(".emu-tmp") and not n.startswith(".usql-"))
        return h.send(200, {"FileStatuses": {"FileStatus": [fstatus(os.path.join(full, n), n) for n in names]}})
    if op == "DELETE" and m == "DELETE":
        if not os.path.exists(full) or full == root:
            return h.send(200, {"boolean": False})
        if os.path.isdir(full):
            if os.listdir(full) and h.q.get("recursive", "false").lower() != "true":
                return remote(h, 403, "IOException", "%s is non empty: use recursive=true" % rel)
            shutil.rmtree(full)
        else:
            os.unlink(full)
        return h.send(200, {"boolean": True})
    return remote(h, 400, "UnsupportedOperationException", "Operation %s %s is not supported." % (m, op or "(none)"))
