"""Azure Batch for the emulator (loaded by azure_emulator.py, README "Further services").

ARM: GET .../providers/Microsoft.Batch/batchAccounts/{name} (api-version 2025-06-01), shaped as
the official example BatchAccountGet.json; accountEndpoint names this service's data plane.

Data plane (its own HTTPS port, DIR/batch_port), api-version 2025-06-01, AAD bearer tokens for
https://batch.core.windows.net only (else 401 AuthenticationFailed in Batch's OData error form):
  pools    GET /pools, POST /pools, GET|DELETE /pools/{id}  (allocationState resizing -> steady
           after batch_pool_alloc_ms; state deleting -> gone)
  jobs     GET /jobs, POST /jobs, GET|DELETE /jobs/{id}, POST /jobs/{id}/terminate
           (DELETE and terminate end its tasks; a terminated job is completed)
  tasks    POST /jobs/{j}/tasks, POST /jobs/{j}/addtaskcollection, GET /jobs/{j}/tasks,
           GET /jobs/{j}/tasks/{t}, POST /jobs/{j}/tasks/{t}/terminate
  files    GET /jobs/{j}/tasks/{t}/files[?recursive=true&$filter=startswith(name,'P')],
           GET|HEAD /jobs/{j}/tasks/{t}/files/{path} (ocp-range / Range: bytes=N-[M])
A task really runs: its resource files are downloaded from their httpUrl (the SAS URLs point at
Azurite) into DIR/batch/{job}/{task}/wd, then its commandLine (split like a shell word list, no
shell, as Batch on Linux does) runs there as a local process group with environmentSettings and
AZ_BATCH_*; stdout.txt/stderr.txt beside wd.  Terminate: TERM to the group, KILL after 2 s.
Request bodies are checked against the shapes of Microsoft's examples and the documented
properties (SHAPES below): unknown property, wrong type, missing required -> 400 InvalidRequestBody.

Faults (POST /_emulator/faults, "target": "batch"): any status (429 + retry_after, 500) as for
every service; "action": "fail_task" (next task whose path matches fails on the service side:
failureInfo {category ServerError, code, message}); "action": "pool_resize_error" (next pool
created whose path matches ends steady with resizeErrors and no nodes); "action":
"node_preempted" (a running task whose path matches: its node goes away, the process is killed,
the task completes with failureInfo code NodePreempted)."""
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid

from azure_emulator import HttpError, now_iso

NAME = "batch"
# Microsoft.Storage: only POST storageAccounts/{seed account}/listKeys, the Batch account's
# auto-storage (Azurite's account)
NAMESPACES = ("microsoft.batch", "microsoft.storage")
STORAGE_API = "2023-05-01"
API = "2025-06-01"
AUD = "https://batch.core.windows.net"
MAX_RUNNING = 16

S = {}  # the service's state (init)


def init(emu):
    S.clear()
    S.update(lock=threading.RLock(), pools={}, jobs={}, port=None, emu=emu)
    emu.cfg.setdefault("batch_pool_alloc_ms", 300)
    emu.cfg.setdefault("batch_page_size", 1000)  # list pages: min(maxresults, this)
    S["accounts"] = {"ctbatch": {"location": emu.seed.get("location", "westeurope")}}
    seed_pools()
    S["port"] = emu.data_plane(NAME, plane)


SEED_POOL = {"id": "ctpool", "vmSize": "STANDARD_D2_V2", "targetDedicatedNodes": 1,
             "virtualMachineConfiguration": {"imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts",
                                                                "sku": "server", "version": "latest"},
                                             "nodeAgentSKUId": "batch.node.ubuntu 24.04"}}


def seed_pools():
    """The seed's existing pool (an attached account has pools already): ctpool, 1 node, steady."""
    S["pools"]["ctpool"] = {"id": "ctpool", "doc": dict(SEED_POOL), "created": time.time() - 3600,
                            "state": "active", "alloc_s": 0, "etag": "0x8D45765A6A2DC04", "resize_error": None}


def state(emu):
    with S["lock"]:
        return {"accounts": sorted(S["accounts"]),
                "pools": {k: pool_view(p) for k, p in S["pools"].items()},
                "jobs": {k: {"state": j["state"], "poolId": j["poolId"],
                             "tasks": {tk: t.admin() for tk, t in j["tasks"].items()}}
                         for k, j in S["jobs"].items()},
                "running": sum(1 for j in S["jobs"].values() for t in j["tasks"].values()
                               if t.proc is not None and t.proc.poll() is None)}


def reset(emu, st):
    if st:
        stop(emu)
        with S["lock"]:
            S["pools"].clear()
            S["jobs"].clear()
            seed_pools()


def stop(emu):
    with S["lock"]:
        tasks = [t for j in S["jobs"].values() for t in j["tasks"].values()]
    for t in tasks:
        t.kill(0)


# ---- ARM -------------------------------------------------------------------------------------
ACC_RX = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Batch/"
                    r"batchAccounts/([^/]+)(/[^/]+)?/?$", re.I)


def account_view(emu, name):
    a = S["accounts"][name]
    sub, rg = emu.seed["subscription_id"], emu.seed["resource_group"]
    return {"name": name, "type": "Microsoft.Batch/batchAccounts",
            "id": "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Batch/batchAccounts/%s" % (sub, rg, name),
            "identity": {"type": "None"}, "location": a["location"],
            "properties": {
                "accountEndpoint": "127.0.0.1:%d" % S["port"],
                "activeJobAndJobScheduleQuota": 100,
                "autoStorage": {"lastKeySync": now_iso(),
                                "storageAccountId": "/subscriptions/%s/resourceGroups/%s/providers/"
                                "Microsoft.Storage/storageAccounts/%s" % (sub, rg, emu.seed["storage_account"])},
                "dedicatedCoreQuota": 20, "lowPriorityCoreQuota": 20, "poolAllocationMode": "BatchService",
                "poolQuota": 20, "provisioningState": "Succeeded", "publicNetworkAccess": "Enabled"}}


STO_RX = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Storage/"
                    r"storageAccounts/([^/]+)/listKeys$", re.I)


def storage_arm(h, path):
    av = h.q.get("api-version")
    if av != STORAGE_API:
        raise HttpError(400, "InvalidApiVersionParameter",
                        "The api-version '%s' is invalid. The supported versions are '%s'." % (av, STORAGE_API))
    m = STO_RX.match(path)
    if not m or h.command != "POST":
        raise HttpError(400, "InvalidResourceType", "The emulator serves only POST storageAccounts/{name}/listKeys "
                        "of Microsoft.Storage")
    if m.group(3) != h.emu.seed["storage_account"]:
        raise HttpError(404, "ResourceNotFound", "The Resource 'Microsoft.Storage/storageAccounts/%s' under resource "
                        "group '%s' was not found." % (m.group(3), m.group(2)))
    return h.send(200, {"keys": [{"creationTime": now_iso(), "keyName": "key1", "permissions": "FULL",
                                  "value": h.emu.seed["storage_key"]}]})


def arm(h, path, body):
    if "/providers/microsoft.storage/" in path.lower():
        return storage_arm(h, path)
    av = h.q.get("api-version")
    if av != API:
        raise HttpError(400, "InvalidApiVersionParameter",
                        "The api-version '%s' is invalid. The supported versions are '%s'." % (av, API))
    m = ACC_RX.match(path)
    if not m:
        raise HttpError(400, "InvalidResourceType", "The resource type of '%s' could not be found in the "
                        "namespace 'Microsoft.Batch' for api version '%s'." % (path, av))
    name, action = m.group(3), (m.group(4) or "")[1:]
    key = next((k for k in S["accounts"] if k.lower() == name.lower()), None)
    if key is None:
        raise HttpError(404, "ResourceNotFound", "The Resource 'Microsoft.Batch/batchAccounts/%s' under resource "
                        "group '%s' was not found. For more details please go to "
                        "https://aka.ms/ARMResourceNotFoundFix" % (name, m.group(2)))
    if action or h.command != "GET":
        raise HttpError(405, "MethodNotAllowed", "%s %s is not supported by the emulator" % (h.command, path))
    return h.send(200, account_view(h.emu, key))


# ---- data plane: errors, auth ----------------------------------------------------------------
class BatchError(Exception):
    def __init__(self, status, code, message, values=None, headers=None):
        Exception.__init__(self, message)
        self.status, self.code, self.msg, self.values, self.headers = status, code, message, values, headers


def batch_error_body(code, message, values=None):
    o = {"odata.metadata": "https://127.0.0.1:%d/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
         % S["port"], "code": code,
         "message": {"lang": "en-US", "value": "%s\nRequestId:%s\nTime:%s" % (message, uuid.uuid4(), now_iso())}}
    if values:
        o["values"] = [{"key": k, "value": v} for k, v in values]
    return o


def check_auth(emu, h):
    auth = h.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        raise BatchError(401, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the "
                         "value of Authorization header is formed correctly including the signature.",
                         [("AuthenticationErrorDetail", "The Authorization header is missing or not a Bearer token.")])
    t = emu.tokens.get(auth[7:].strip())
    if t is None or t["exp"] <= time.time():
        raise BatchError(401, "AuthenticationFailed", "Server failed to authenticate the request.",
                         [("AuthenticationErrorDetail", "The access token is invalid or has expired.")])
    if t["aud"].rstrip("/") != AUD:
        raise BatchError(401, "AuthenticationFailed", "Server failed to authenticate the request.",
                         [("AuthenticationErrorDetail", "The audience of the token ('%s') is not %s." % (t["aud"], AUD))])


# ---- request shapes (Microsoft's examples + the documented properties of 2025-06-01) ---------
STR, INT, BOOL, OBJ, LIST = "string", "integer", "boolean", "object", "array"
NV = {"name": STR, "value": STR}
IMAGE = {"publisher": STR, "offer": STR, "sku": STR, "version": STR, "virtualMachineImageId": STR}
SHAPES = {
    "pool": ({"id", "vmSize"}, {
        "id": STR, "displayName": STR, "vmSize": STR, "resizeTimeout": STR, "targetDedicatedNodes": INT,
        "targetLowPriorityNodes": INT, "taskSlotsPerNode": INT, "enableAutoScale": BOOL, "autoScaleFormula": STR,
        "enableInterNodeCommunication": BOOL, "taskSchedulingPolicy": ({"nodeFillType"}, {"nodeFillType": STR}),
        "virtualMachineConfiguration": ({"imageReference", "nodeAgentSKUId"}, {
            "imageReference": (set(), IMAGE), "nodeAgentSKUId": STR}),
        "metadata": [({"name", "value"}, NV)], "startTask": OBJ, "targetNodeCommunicationMode": STR}),
    "job": ({"id", "poolInfo"}, {
        "id": STR, "displayName": STR, "priority": INT, "maxParallelTasks": INT, "allowTaskPreemption": BOOL,
        "usesTaskDependencies": BOOL, "onAllTasksComplete": STR, "onTaskFailure": STR,
        "constraints": (set(), {"maxWallClockTime": STR, "maxTaskRetryCount": INT}),
        "poolInfo": (set(), {"poolId": STR, "autoPoolSpecification": OBJ}),
        "metadata": [({"name", "value"}, NV)], "commonEnvironmentSettings": [({"name"}, NV)]}),
    "task": ({"id", "commandLine"}, {
        "id": STR, "displayName": STR, "commandLine": STR, "requiredSlots": INT,
        "resourceFiles": [(set(), {"httpUrl": STR, "storageContainerUrl": STR, "autoStorageContainerName": STR,
                                   "blobPrefix": STR, "filePath": STR, "fileMode": STR, "identityReference": OBJ})],
        "outputFiles": [OBJ], "environmentSettings": [({"name"}, NV)],
        "constraints": (set(), {"maxWallClockTime": STR, "retentionTime": STR, "maxTaskRetryCount": INT}),
        "userIdentity": (set(), {"username": STR, "autoUser": (set(), {"scope": STR, "elevationLevel": STR})}),
        "containerSettings": OBJ, "exitConditions": OBJ, "affinityInfo": OBJ, "multiInstanceSettings": OBJ,
        "dependsOn": OBJ, "applicationPackageReferences": [OBJ], "authenticationTokenSettings": OBJ}),
}
PYTYPES = {STR: str, INT: int, BOOL: bool, OBJ: dict, LIST: list}


def check_shape(doc, shape, where, errs):
    if isinstance(shape, str):
        ok = isinstance(doc, PYTYPES[shape]) and not (shape == INT and isinstance(doc, bool))
        if not ok:
            errs.append("%s must be of type %s" % (where, shape))
        return
    if isinstance(shape, list):
        if not isinstance(doc, list):
            errs.append("%s must be an array" % where)
            return
        for i, x in enumerate(doc):
            check_shape(x, shape[0], "%s[%d]" % (where, i), errs)
        return
    req, props = shape
    if not isinstance(doc, dict):
        errs.append("%s must be an object" % where)
        return
    for k in sorted(req):
        if k not in doc:
            errs.append("%s.%s is required" % (where, k))
    for k, v in doc.items():
        if k not in props:
            errs.append("%s.%s is not a property of this type" % (where, k))
        elif v is not None:
            check_shape(v, props[k], "%s.%s" % (where, k), errs)


def parse_body(h, body, kind):
    try:
        doc = json.loads(body) if body.strip() else None
    except ValueError as e:
        raise BatchError(400, "InvalidRequestBody", "The specified request body is not syntactically valid.",
                         [("Reason", str(e))])
    errs = []
    check_shape(doc, SHAPES[kind], kind, errs)
    if kind == "task":
        for i, rf in enumerate(doc.get("resourceFiles") or [] if isinstance(doc, dict) else []):
            if isinstance(rf, dict) and sum(1 for k in ("httpUrl", "storageContainerUrl", "autoStorageContainerName")
                                            if k in rf) != 1:
                errs.append("task.resourceFiles[%d] needs exactly one of httpUrl, storageContainerUrl, "
                            "autoStorageContainerName" % i)
    if errs:
        h.rec["invalid"] = "; ".join(errs[:5])
        raise BatchError(400, "InvalidRequestBody", "The specified request body is not valid.",
                         [("Reason", "; ".join(errs[:5]))])
    return doc


# ---- pools -----------------------------------------------------------------------------------
def pool_view(p):
    now = time.time()
    alloc_done = now >= p["created"] + p["alloc_s"]
    v = {"id": p["id"], "url": "https://127.0.0.1:%d/pools/%s" % (S["port"], p["id"]), "eTag": p["etag"],
         "lastModified": now_iso(p["created"]), "creationTime": now_iso(p["created"]),
         "state": p["state"], "stateTransitionTime": now_iso(p["created"]),
         "allocationState": "steady" if alloc_done else "resizing",
         "allocationStateTransitionTime": now_iso(p["created"] + (p["alloc_s"] if alloc_done else 0)),
         "vmSize": p["doc"]["vmSize"], "targetDedicatedNodes": p["doc"].get("targetDedicatedNodes", 0),
         "targetLowPriorityNodes": p["doc"].get("targetLowPriorityNodes", 0),
         "currentDedicatedNodes": 0, "currentLowPriorityNodes": 0,
         "taskSlotsPerNode": p["doc"].get("taskSlotsPerNode", 1), "enableAutoScale": False,
         "enableInterNodeCommunication": p["doc"].get("enableInterNodeCommunication", False)}
    if "virtualMachineConfiguration" in p["doc"]:
        v["virtualMachineConfiguration"] = p["doc"]["virtualMachineConfiguration"]
    if alloc_done:
        if p["resize_error"]:
            v["resizeErrors"] = [p["resize_error"]]
        else:
            v["currentDedicatedNodes"] = v["targetDedicatedNodes"]
            v["currentLowPriorityNodes"] = v["targetLowPriorityNodes"]
    return v


def pool_ready(pid):
    """'ready', 'wait' (allocating) or 'broken' (no nodes will come)."""
    p = S["pools"].get(pid.lower())
    if p is None or p["state"] != "active":
        return "wait"
    v = pool_view(p)
    if v["allocationState"] != "steady":
        return "wait"
    if v.get("resizeErrors") or v["currentDedicatedNodes"] + v["currentLowPriorityNodes"] == 0:
        return "wait"
    return "ready"


def settle_pools():
    now = time.time()
    for k, p in list(S["pools"].items()):
        if p["state"] == "deleting" and now >= p["deleted"] + p["alloc_s"]:
            del S["pools"][k]


# ---- tasks -----------------------------------------------------------------------------------
class Task:
    def __init__(self, emu, job, doc):
        self.emu, self.job, self.doc = emu, job, doc
        self.id = doc["id"]
        self.state = "active"
        self.created = time.time()
        self.transition = self.created
        self.etag = "0x%X" % (int(self.created * 1e7) & 0xFFFFFFFFFFFFFF)
        self.exec = {"retryCount": 0, "requeueCount": 0}
        self.proc = None
        self.pid = None
        self.ended_ev = threading.Event()
        self.term = False
        self.dir = os.path.join(emu.dir, "batch", job["id"], self.id)
        self.fail = None  # a service-side failure waiting (fault fail_task)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def path(self):
        return "/jobs/%s/tasks/%s" % (self.job["id"], self.id)

    def set(self, st):
        with S["lock"]:
            if self.state == "completed":
                return False
            self.state = st
            self.transition = time.time()
            return True

    def view(self):
        with S["lock"]:
            v = {"id": self.id, "url": "https://127.0.0.1:%d%s" % (S["port"], self.path()), "eTag": self.etag,
                 "creationTime": now_iso(self.created), "lastModified": now_iso(self.transition),
                 "state": self.state, "stateTransitionTime": now_iso(self.transition),
                 "commandLine": self.doc["commandLine"],
                 "userIdentity": self.doc.get("userIdentity") or {"autoUser": {"scope": "pool",
                                                                              "elevationLevel": "nonadmin"}},
                 "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S",
                                 "retentionTime": "P7D", "maxTaskRetryCount": 0},
                 "requiredSlots": self.doc.get("requiredSlots", 1),
                 "executionInfo": dict(self.exec)}
            if self.doc.get("environmentSettings"):
                v["environmentSettings"] = self.doc["environmentSettings"]
            if self.doc.get("resourceFiles"):
                # the SAS stays with the task, as in Batch; the emulator's view drops it
                v["resourceFiles"] = [{k: (u.split("?")[0] if k == "httpUrl" else u) for k, u in rf.items()}
                                      for rf in self.doc["resourceFiles"]]
            if self.state in ("running", "completed") and "startTime" in self.exec:
                v["nodeInfo"] = {"affinityId": "TVM:tvm-emu_1", "nodeUrl": "https://127.0.0.1:%d/pools/%s/nodes/tvm-emu_1"
                                 % (S["port"], self.job["poolId"]), "poolId": self.job["poolId"],
                                 "nodeId": "tvm-emu_1", "taskRootDirectory": "workitems/%s/job-1/%s"
                                 % (self.job["id"], self.id),
                                 "taskRootDirectoryUrl": "https://127.0.0.1:%d/pools/%s/nodes/tvm-emu_1/files/"
                                 "workitems/%s/job-1/%s" % (S["port"], self.job["poolId"], self.job["id"], self.id)}
            return v

    def admin(self):
        return {"state": self.state, "pid": self.pid,
                "running": self.proc is not None and self.proc.poll() is None,
                "exitCode": self.exec.get("exitCode"), "dir": self.dir,
                "failureInfo": self.exec.get("failureInfo")}

    def complete(self, exit_code=None, failure=None):
        with S["lock"]:
            if self.state == "completed":
                return
            self.exec["endTime"] = now_iso()
            self.exec.setdefault("startTime", self.exec["endTime"])
            if exit_code is not None:
                self.exec["exitCode"] = exit_code
            if failure:
                self.exec["failureInfo"] = failure
                self.exec["result"] = "failure"
            else:
                self.exec["result"] = "success" if exit_code == 0 else "failure"
                if exit_code != 0:
                    self.exec["failureInfo"] = {
                        "category": "UserError", "code": "FailureExitCode",
                        "message": "The task exited with an exit code representing a failure",
                        "details": [{"name": "Message", "value": "The task process exited with an unexpected exit code"},
                                    {"name": "AdditionalErrorCode", "value": "FailureExitCode"}]}
            self.set("completed")
        self.ended_ev.set()

    def kill(self, grace=2.0):
        with S["lock"]:
            self.term = True
            pr = self.proc
        if pr is not None and pr.poll() is None:
            try:
                os.killpg(pr.pid, signal.SIGTERM if grace else signal.SIGKILL)
            except ProcessLookupError:
                pass
            if grace:
                def later():
                    try:
                        pr.wait(grace)
                    except subprocess.TimeoutExpired:
                        try:
                            os.killpg(pr.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                threading.Thread(target=later, daemon=True).start()

    def fetch(self, url, dest):
        ctx = ssl.create_default_context(cafile=os.path.join(self.emu.dir, "ca.pem"))
        with urllib.request.urlopen(url, context=ctx, timeout=30) as r, open(dest + ".part", "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(dest + ".part", dest)

    def run(self):
        try:
            self._run()
        except Exception as e:  # an emulator bug: fail the task visibly
            self.complete(failure={"category": "ServerError", "code": "EmulatorBug", "message": repr(e)})

    def _run(self):
        emu = self.emu
        deadline = time.time() + 600
        while time.time() < deadline:  # wait for nodes (a pool being allocated)
            if self.term or self.state == "completed":
                return
            with S["lock"]:
                settle_pools()
                ready = pool_ready(self.job["poolId"])
                busy = sum(1 for j in S["jobs"].values() for t in j["tasks"].values() if t.state == "running")
            if ready == "ready" and busy < MAX_RUNNING:
                break
            time.sleep(0.05)
        else:
            return
        phase = emu.cfg["job_phase_ms"] / 1000.0
        self.set("preparing")
        with S["lock"]:
            self.exec["startTime"] = now_iso()
        if self.fail:
            time.sleep(phase)
            return self.complete(failure=self.fail)
        wd = os.path.join(self.dir, "wd")
        os.makedirs(wd, exist_ok=True)
        for rf in self.doc.get("resourceFiles") or []:
            rel = (rf.get("filePath") or "").replace("\\", "/")
            if "httpUrl" not in rf:
                return self.complete(failure={"category": "UserError", "code": "ResourceFileDownloadFailed",
                                              "message": "only httpUrl resource files are emulated"})
            if not rel:
                rel = urllib.parse.urlsplit(rf["httpUrl"]).path.rsplit("/", 1)[-1]
            dest = os.path.normpath(os.path.join(wd, rel))
            if not dest.startswith(wd + os.sep):
                return self.complete(failure={"category": "UserError", "code": "InvalidFilePath",
                                              "message": "resource file path '%s' leaves the task directory" % rel})
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                self.fetch(rf["httpUrl"], dest)
            except Exception as e:
                return self.complete(failure={
                    "category": "UserError", "code": "BlobAccessDenied" if "403" in str(e) else "BlobDownloadMiscError",
                    "message": "Access for one of the specified Azure Blob(s) is denied" if "403" in str(e)
                    else "Miscellaneous error encountered while downloading one of the specified Azure Blob(s)",
                    "details": [{"name": "FilePath", "value": dest}, {"name": "Error", "value": str(e)[:200]}]})
            if rf.get("fileMode"):
                os.chmod(dest, int(rf["fileMode"], 8))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir, "LANG": "C.UTF-8",
               "AZ_BATCH_TASK_WORKING_DIR": wd, "AZ_BATCH_TASK_DIR": self.dir, "AZ_BATCH_JOB_ID": self.job["id"],
               "AZ_BATCH_TASK_ID": self.id, "AZ_BATCH_POOL_ID": self.job["poolId"], "AZ_BATCH_NODE_ID": "tvm-emu_1",
               "AZ_BATCH_ACCOUNT_URL": "https://127.0.0.1:%d/" % S["port"]}
        for s in (self.job["doc"].get("commonEnvironmentSettings") or []) + (self.doc.get("environmentSettings") or []):
            env[s["name"]] = s.get("value") or ""
        try:
            argv = shlex.split(self.doc["commandLine"])
        except ValueError as e:
            return self.complete(failure={"category": "UserError", "code": "CommandLineError", "message": str(e)})
        with open(os.path.join(self.dir, "stdout.txt"), "ab") as out, \
                open(os.path.join(self.dir, "stderr.txt"), "ab") as err:
            with S["lock"]:
                if self.term:
                    return self.complete(exit_code=-1 & 0xFF, failure=terminated())
                try:
                    self.proc = subprocess.Popen(argv, cwd=wd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=err, start_new_session=True)
                except OSError as e:
                    return self.complete(failure={"category": "UserError", "code": "CommandProgramNotFound",
                                                  "message": "The specified command program is not found: %s" % e})
                self.pid = self.proc.pid
            self.set("running")
            preempted = False
            while self.proc.poll() is None:
                if emu.take_fault("POST", self.path(), ("node_preempted",), target=NAME):
                    preempted = True
                    self.kill(0)
                    self.proc.wait()
                    break
                time.sleep(0.05)
        rc = self.proc.returncode
        if preempted:
            return self.complete(failure={"category": "ServerError", "code": "NodePreempted",
                                          "message": "The compute node running the task was preempted (a "
                                          "low-priority node was reclaimed); the task did not finish"})
        if self.term:
            return self.complete(exit_code=rc if rc >= 0 else 128 - rc, failure=terminated())
        self.complete(exit_code=rc if rc >= 0 else 128 - rc)


def terminated():
    return {"category": "UserError", "code": "TaskEnded",
            "message": "The task was terminated by the user (Terminate Task)"}


# ---- the data-plane router -------------------------------------------------------------------
def plane(h, path, body):
    try:
        return route(h, path, body)
    except BatchError as e:
        h.send(e.status, batch_error_body(e.code, e.msg, e.values), e.headers)


def headers_for(loc, etag="0x8D45765A6A2DC04"):
    return {"ETag": etag, "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
            "DataServiceId": loc, "Location": loc, "request-id": str(uuid.uuid4())}


def page(h, kind, items):
    """One page of a list (maxresults, default 1000, at most the config's batch_page_size) with
    odata.nextLink carrying the position, as Batch pages its lists."""
    try:
        size = min(int(h.q.get("maxresults", "1000")), int(h.emu.cfg["batch_page_size"]))
        start = int(h.q.get("$skiptoken", h.q.get("skiptoken", "0")) or 0)
    except ValueError:
        raise BatchError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in "
                         "the request URI is invalid.", [("QueryParameterName", "maxresults")])
    size = max(1, size)
    out = {"odata.metadata": odata(kind), "value": items[start:start + size]}
    if start + size < len(items):
        u = urllib.parse.urlsplit(h.path)
        q = [(k, v) for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True) if k != "$skiptoken"]
        q.append(("$skiptoken", str(start + size)))
        out["odata.nextLink"] = "https://127.0.0.1:%d%s?%s" % (S["port"], u.path, urllib.parse.urlencode(q))
    return out


def odata(kind):
    return "https://127.0.0.1:%d/$metadata#%s" % (S["port"], kind)


def get_job(jid):
    j = S["jobs"].get(jid.lower())
    if j is None:
        raise BatchError(404, "JobNotFound", "The specified job does not exist.")
    return j


def get_task(j, tid):
    t = j["tasks"].get(tid.lower())
    if t is None:
        raise BatchError(404, "TaskNotFound", "The specified task does not exist.")
    return t


def job_view(j):
    v = {"id": j["id"], "url": "https://127.0.0.1:%d/jobs/%s" % (S["port"], j["id"]), "eTag": j["etag"],
         "lastModified": now_iso(j["created"]), "creationTime": now_iso(j["created"]), "state": j["state"],
         "stateTransitionTime": now_iso(j["created"]), "priority": j["doc"].get("priority", 0),
         "maxParallelTasks": j["doc"].get("maxParallelTasks", -1),
         "allowTaskPreemption": j["doc"].get("allowTaskPreemption", False),
         "usesTaskDependencies": j["doc"].get("usesTaskDependencies", False),
         "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0},
         "poolInfo": {"poolId": j["poolId"]},
         "executionInfo": {"startTime": now_iso(j["created"]), "poolId": j["poolId"]},
         "onAllTasksComplete": j["doc"].get("onAllTasksComplete", "noaction"),
         "onTaskFailure": j["doc"].get("onTaskFailure", "noaction")}
    return v


def add_task(h, j, doc):
    emu = h.emu
    if doc["id"].lower() in j["tasks"]:
        raise BatchError(409, "TaskExists", "The specified task already exists.")
    if j["state"] != "active":
        raise BatchError(409, "JobNotActive", "The specified job is not in an active state.")
    t = Task(emu, j, doc)
    f = emu.take_fault("POST", t.path(), ("fail_task",), target=NAME)
    if f:
        t.fail = {"category": "ServerError", "code": f.get("code", "TaskFailedOnService"),
                  "message": f.get("message", "The Batch service failed the task.")}
    j["tasks"][doc["id"].lower()] = t
    t.thread.start()
    return t


RANGE_RX = re.compile(r"^bytes=(\d+)-(\d*)$")


def route(h, path, body):
    emu = h.emu
    av = h.q.get("api-version")
    if av is None:
        raise BatchError(400, "MissingRequiredQueryParameter",
                         "A query parameter that's mandatory for this request is not specified.",
                         [("QueryParameterName", "api-version")])
    if av != API:
        raise BatchError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in "
                         "the request URI is invalid.", [("QueryParameterName", "api-version"),
                                                         ("QueryParameterValue", av),
                                                         ("Reason", "The specified api version is not supported (%s)" % API)])
    check_auth(emu, h)
    if len(body) > 1024 * 1024:
        raise BatchError(413, "RequestBodyTooLarge", "The request body is too large and exceeds the maximum "
                         "permissible limit.", [("MaxLimit", "1048576")])
    segs = [urllib.parse.unquote(s) for s in path.split("/") if s]
    m = h.command
    with S["lock"]:
        settle_pools()
        if segs == ["pools"] and m == "GET":
            return h.send(200, page(h, "pools", [pool_view(p) for p in S["pools"].values()]))
        if segs == ["pools"] and m == "POST":
            doc = parse_body(h, body, "pool")
            if doc["id"].lower() in S["pools"]:
                raise BatchError(409, "PoolExists", "The specified pool already exists.")
            f = emu.take_fault("POST", "/pools/" + doc["id"], ("pool_resize_error",), target=NAME)
            S["pools"][doc["id"].lower()] = {
                "id": doc["id"], "doc": doc, "created": time.time(), "state": "active",
                "alloc_s": emu.cfg["batch_pool_alloc_ms"] / 1000.0, "etag": "0x%X" % (uuid.uuid4().int % (1 << 56)),
                "resize_error": {"code": f.get("code", "AllocationFailed"),
                                 "message": f.get("message", "Desired number of dedicated nodes could not be "
                                                  "allocated as the requested VM size is not available")} if f else None}
            loc = "https://127.0.0.1:%d/pools/%s" % (S["port"], doc["id"])
            return h.send(201, None, headers_for(loc))
        if len(segs) == 2 and segs[0] == "pools":
            p = S["pools"].get(segs[1].lower())
            if p is None:
                raise BatchError(404, "PoolNotFound", "The specified pool does not exist.")
            if m == "GET":
                return h.send(200, dict(pool_view(p), **{"odata.metadata": odata("pools/@Element")}))
            if m == "DELETE":
                if p["state"] != "deleting":
                    p["state"], p["deleted"] = "deleting", time.time()
                return h.send(202, None, {"request-id": str(uuid.uuid4())})
        if segs == ["jobs"] and m == "GET":
            return h.send(200, page(h, "jobs", [job_view(j) for j in S["jobs"].values()]))
        if segs == ["jobs"] and m == "POST":
            doc = parse_body(h, body, "job")
            if doc["id"].lower() in S["jobs"]:
                raise BatchError(409, "JobExists", "The specified job already exists.")
            pid = (doc.get("poolInfo") or {}).get("poolId")
            if not pid:
                raise BatchError(400, "InvalidPropertyValue", "The value provided for one of the properties in the "
                                 "request body is invalid.", [("PropertyName", "poolInfo.poolId")])
            S["jobs"][doc["id"].lower()] = {"id": doc["id"], "doc": doc, "poolId": pid, "state": "active",
                                            "created": time.time(), "tasks": {},
                                            "etag": "0x%X" % (uuid.uuid4().int % (1 << 56))}
            loc = "https://127.0.0.1:%d/jobs/job-1" % S["port"]
            return h.send(201, None, headers_for(loc))
        if len(segs) >= 2 and segs[0] == "jobs":
            j = get_job(segs[1])
            if len(segs) == 2 and m == "GET":
                return h.send(200, dict(job_view(j), **{"odata.metadata": odata("jobs/@Element")}))
            if len(segs) == 3 and segs[2] == "terminate" and m == "POST":
                if j["state"] == "completed":
                    raise BatchError(409, "JobCompleted", "The specified job is already in a completed state.")
                for t in j["tasks"].values():
                    t.kill()
                    if t.proc is None:
                        t.complete(failure=terminated())
                j["state"] = "completed"
                return h.send(202, None, {"request-id": str(uuid.uuid4())})
            if len(segs) == 2 and m == "DELETE":
                for t in j["tasks"].values():
                    t.kill(0)
                del S["jobs"][segs[1].lower()]
                return h.send(202, None, {"request-id": str(uuid.uuid4())})
            if len(segs) == 3 and segs[2] == "tasks" and m == "POST":
                doc = parse_body(h, body, "task")
                t = add_task(h, j, doc)
                return h.send(201, None, headers_for("https://127.0.0.1:%d%s" % (S["port"], t.path()), t.etag))
            if len(segs) == 3 and segs[2] == "addtaskcollection" and m == "POST":
                try:
                    coll = json.loads(body)
                except ValueError:
                    coll = None
                if not isinstance(coll, dict) or not isinstance(coll.get("value"), list):
                    raise BatchError(400, "InvalidRequestBody", "The specified request body is not valid.",
                                     [("Reason", "taskCollection.value must be an array")])
                out = []
                for i, d in enumerate(coll["value"]):
                    errs = []
                    check_shape(d, SHAPES["task"], "taskCollection.value[%d]" % i, errs)
                    if errs:
                        raise BatchError(400, "InvalidRequestBody", "The specified request body is not valid.",
                                         [("Reason", "; ".join(errs[:5]))])
                    t = add_task(h, j, d)
                    out.append({"status": "success", "taskId": t.id, "eTag": t.etag, "lastModified": now_iso(),
                                "location": "https://127.0.0.1:%d%s" % (S["port"], t.path())})
                return h.send(200, {"value": out})
            if len(segs) == 3 and segs[2] == "tasks" and m == "GET":
                return h.send(200, page(h, "tasks", [t.view() for t in j["tasks"].values()]))
            if len(segs) >= 4 and segs[2] == "tasks":
                t = get_task(j, segs[3])
                if len(segs) == 4 and m == "GET":
                    return h.send(200, dict(t.view(), **{"odata.metadata": odata("tasks/@Element")}))
                if len(segs) == 5 and segs[4] == "terminate" and m == "POST":
                    if t.state != "completed":
                        t.kill()
                        if t.proc is None:
                            t.complete(failure=terminated())
                    return h.send(204, None, {"request-id": str(uuid.uuid4())})
                if len(segs) == 5 and segs[4] == "files" and m == "GET":
                    return list_files(h, t)
                if len(segs) >= 6 and segs[4] == "files" and m in ("GET", "HEAD"):
                    return get_file(h, t, "/".join(segs[5:]).replace("\\", "/"))
    raise BatchError(400, "InvalidUri", "The requested URI does not represent any resource on the server.",
                     [("UriPath", path)])


def task_files(t):
    out = []
    if not os.path.isdir(t.dir):
        return out
    for root, dirs, names in os.walk(t.dir):
        dirs.sort()
        for n in sorted(dirs) + sorted(names):
            p = os.path.join(root, n)
            if os.path.islink(p):
                continue
            rel = os.path.relpath(p, t.dir)
            out.append((rel, os.path.isdir(p), 0 if os.path.isdir(p) else os.path.getsize(p)))
    return out


def list_files(h, t):
    rec = h.q.get("recursive", "false").lower() == "true"
    flt = h.q.get("$filter", "")
    prefix = None
    if flt:
        mm = re.match(r"^startswith\(name,\s*'([^']*)'\)$", flt)
        if not mm:
            raise BatchError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified "
                             "in the request URI is invalid.", [("QueryParameterName", "$filter")])
        prefix = mm.group(1).replace("\\", "/")
    vals = []
    for rel, isdir, size in task_files(t):
        if not rec and "/" in rel:
            continue
        if prefix is not None and not rel.startswith(prefix):
            continue
        v = {"name": rel, "url": "https://127.0.0.1:%d%s/files/%s" % (S["port"], t.path(), urllib.parse.quote(rel)),
             "isDirectory": isdir}
        if not isdir:
            v["properties"] = {"creationTime": now_iso(), "lastModified": now_iso(), "contentLength": size,
                               "contentType": "application/octet-stream"}
        vals.append(v)
    return h.send(200, page(h, "files", vals))


def get_file(h, t, rel):
    p = os.path.normpath(os.path.join(t.dir, rel))
    if not p.startswith(t.dir + os.sep) or not os.path.isfile(p) or os.path.islink(p):
        raise BatchError(404, "FileNotFound", "The specified file does not exist.", [("FilePath", rel)])
    with open(p, "rb") as f:
        data = f.read()
    rng = h.headers.get("ocp-range") or h.headers.get("Range")
    hdr = {"ocp-creation-time": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
           "ocp-batch-file-isdirectory": "false", "ocp-batch-file-url": urllib.parse.quote(rel),
           "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(os.path.getmtime(p)))}
    if h.command == "HEAD":
        hdr["ocp-content-length"] = str(len(data))
        return h.send(200, raw=data, headers=hdr, ctype="application/octet-stream")
    if rng:
        mm = RANGE_RX.match(rng.strip())
        if not mm:
            raise BatchError(400, "InvalidRange", "The range specified is invalid.", [("Range", rng)])
        a = int(mm.group(1))
        b = int(mm.group(2)) + 1 if mm.group(2) else len(data)
        if a >= len(data):
            raise BatchError(416, "InvalidRange", "The range specified is invalid for the current size of the file.",
                             [("Range", rng)])
        data = data[a:b]
    return h.send(200, raw=data, headers=hdr, ctype="application/octet-stream")
