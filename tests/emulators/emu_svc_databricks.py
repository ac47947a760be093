"""Azure Databricks for the emulator (README "Further services"): the ARM resource
Microsoft.Databricks/workspaces (GET, api-version 2024-05-01, shaped like Microsoft's example
WorkspaceGetParameters.json, workspaceUrl = this service's data plane) and a data plane on its
own HTTPS port: Bearer auth (the seed's personal access token, or an emulator AAD token for the
AzureDatabricks application), clusters/list, DBFS 2.0 in a local directory, Workspace
import/mkdirs/delete, Jobs 2.1 one-time runs (runs/submit, get, get-output, cancel, list) that
execute as local processes with states over time.

Request bodies of the Jobs API are validated against Databricks' OpenAPI 3 spec
(original-jobs-2.1-azure.yaml, converted to JSON once, bundled in specs/databricks.json;
swagger_validate handles its $ref/allOf/required/type/enum; oneOf is not checked), and the
service's own runs/get, runs/get-output and runs/submit answers against their response
schemas (a mismatch is marked "response_invalid" in the request log).

A python task's file (dbfs:/...) runs as `python3 FILE PARAMS...` with CTARGET_DBFS_FUSE=<the
local DBFS root>, standing in for the /dbfs FUSE mount of a real driver; a notebook (a .py
source notebook imported through the Workspace API) runs as python; a jar task runs
`java -cp JAR MAIN PARAMS...` when java is installed, else fails saying so.

Faults (POST /_emulator/faults with "target": "databricks"): status faults (429 + retry_after,
500) on any data-plane path; {"action": "fail_run", "message": ...} makes the next submitted
run fail on the service side; {"action": "terminate_cluster", "path": RUN_ID regex?} ends a
running run with INTERNAL_ERROR "Cluster ... was terminated".
"""
import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time

import swagger_validate
from azure_emulator import HttpError

NAME = "databricks"
NAMESPACES = ("microsoft.databricks",)
API_VERSION = "2024-05-01"
AAD_APP = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"
HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLE = os.path.join(HERE, "specs", "databricks.json")
EXAMPLE = ("specification/databricks/resource-manager/Microsoft.Databricks/Databricks/stable/"
           "2024-05-01/examples/WorkspaceGetParameters.json")
JOBS_SPEC = "databricks-jobs/schema/original-jobs-2.1-azure.yaml"
MAX_RUNS = 200
MAX_RUN_S = 600
DEFAULTS = {
    "workspace_name": "dbx-ctarget",
    "workspace_id": "5555555555555555",
    "token": "dapi-ctarget-test-pat-7f3K9q",
    "clusters": [{"cluster_id": "0101-000000-ctarget1", "cluster_name": "ctarget-main",
                  "spark_version": "13.3.x-scala2.12", "node_type_id": "Standard_DS3_v2",
                  "num_workers": 2, "state": "RUNNING"}],
}

S = {}  # the service's state (one emulator per process)


class DbxError(HttpError):
    """Databricks' error shape: {"error_code": ..., "message": ...}."""

    def body(self):
        return {"error_code": self.code, "message": self.message}


def seed(emu):
    d = dict(DEFAULTS)
    d.update(emu.seed.get("databricks", {}))
    return d


def _clean(node):
    """The YAML has `required: true` on some properties (OpenAPI 2 style) and
    `required: spark_version` (a string) on NewCluster; the validator wants lists: drop the
    booleans, make the string a one-item list (what its author meant)."""
    if isinstance(node, dict):
        if isinstance(node.get("required"), bool):
            node = {k: v for k, v in node.items() if k != "required"}
        elif isinstance(node.get("required"), str):
            node = dict(node, required=[node["required"]])
        return {k: _clean(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def init(emu):
    with open(BUNDLE, encoding="utf-8") as f:
        b = json.load(f)
    root = os.path.join(emu.dir, "specs", "databricks")
    for rel, text in b["files"].items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    jobs = os.path.join(root, JOBS_SPEC + ".json")
    os.makedirs(os.path.dirname(jobs), exist_ok=True)
    with open(jobs, "w", encoding="utf-8") as f:
        json.dump(_clean(b["converted"][JOBS_SPEC]), f)
    spec = swagger_validate.Spec([])
    spec._load(jobs)
    base = os.path.join(emu.dir, "databricks")
    S.clear()
    S.update({"spec": spec, "spec_path": jobs, "doc": spec.docs[os.path.abspath(jobs)],
              "example": json.loads(b["files"][EXAMPLE]),
              "dbfs": os.path.join(base, "dbfs"), "ws": os.path.join(base, "workspace"),
              "scratch": os.path.join(base, "runs"), "runs": {}, "next_run": 1000,
              "handles": {}, "next_handle": 1, "idem": {}, "lock": threading.RLock(),
              "seed": seed(emu), "emu": emu})
    for d in (S["dbfs"], S["ws"], S["scratch"]):
        os.makedirs(d, exist_ok=True)
    S["port"] = emu.data_plane(NAME, plane)


def state(emu):
    with S["lock"]:
        return {"workspace_url": "127.0.0.1:%d" % S["port"], "dbfs_root": S["dbfs"],
                "runs": {str(k): r.view() for k, r in S["runs"].items()},
                "dbfs_files": sum(len(f) for _, _, f in os.walk(S["dbfs"])),
                "workspace_objects": sum(len(f) for _, _, f in os.walk(S["ws"]))}


def reset(emu, st):
    if st:
        stop(emu)
        with S["lock"]:
            S["runs"], S["idem"], S["handles"] = {}, {}, {}
        for d in (S["dbfs"], S["ws"]):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d, exist_ok=True)


def stop(emu):
    with S["lock"]:
        runs = list(S["runs"].values())
    for r in runs:
        r.kill()
    for r in runs:
        r.join(5)


# ---- ARM --------------------------------------------------------------------------------------
def workspace_body(emu, rg, name):
    sd = S["seed"]
    b = json.loads(json.dumps(S["example"]["responses"]["200"]["body"]))
    rid = "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Databricks/workspaces/%s" % (
        emu.sub, rg, name)
    b.update({"id": rid, "name": name, "location": emu.seed.get("location", "westeurope")})
    p = b["properties"]
    p["managedResourceGroupId"] = "/subscriptions/%s/resourceGroups/databricks-rg-%s" % (emu.sub, name)
    p["workspaceId"] = sd["workspace_id"]
    p["workspaceUrl"] = "127.0.0.1:%d" % S["port"]
    p["privateEndpointConnections"] = []
    p["publicNetworkAccess"] = "Enabled"
    p["requiredNsgRules"] = "AllRules"
    return b


def arm(h, path, body):
    emu = h.emu
    m = re.match(r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.Databricks/"
                 r"workspaces/([^/]+)/?$", path, re.I)
    av = h.q.get("api-version")
    if not m:
        raise HttpError(400, "InvalidResourceType", "The resource type could not be found in the "
                        "namespace 'Microsoft.Databricks' for api version '%s'." % av)
    if av != API_VERSION:
        raise HttpError(400, "NoRegisteredProviderFound",
                        "No registered resource provider found for location '%s' and API version "
                        "'%s' for type 'workspaces'. The supported api-versions are '%s'."
                        % (emu.seed.get("location"), av, API_VERSION))
    rg, name = m.group(1), m.group(2)
    if h.command != "GET":
        raise HttpError(405, "MethodNotAllowed", "the emulator's Databricks workspaces are "
                        "read-only (GET): ctarget attaches them, never creates them")
    if name.lower() != S["seed"]["workspace_name"].lower():
        raise HttpError(404, "ResourceNotFound", "The Resource 'Microsoft.Databricks/workspaces/%s' "
                        "under resource group '%s' was not found. For more details please go to "
                        "https://aka.ms/ARMResourceNotFoundFix" % (name, rg))
    h.send(200, workspace_body(emu, emu.seed["resource_group"], S["seed"]["workspace_name"]))


# ---- the data plane ---------------------------------------------------------------------------
def check_token(h):
    auth = h.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        raise DbxError(401, "UNAUTHENTICATED", "Credential was not sent or was of an unsupported type "
                       "for this API.")
    tok = auth[7:].strip()
    if secrets.compare_digest(tok, S["seed"]["token"]):
        return "pat"
    t = h.emu.tokens.get(tok)
    if t and t["exp"] > time.time() and t["aud"].rstrip("/") in (AAD_APP, "https://" + AAD_APP):
        return "aad"
    raise DbxError(403, "PERMISSION_DENIED", "Invalid access token.")


def jbody(body):
    if not body.strip():
        return {}
    try:
        j = json.loads(body)
    except ValueError as e:
        raise DbxError(400, "MALFORMED_REQUEST", "Invalid JSON given in the body of the request - %s" % e)
    if not isinstance(j, dict):
        raise DbxError(400, "MALFORMED_REQUEST", "Invalid JSON given in the body of the request - "
                       "expected a map")
    return j


def jobs_op(api_path, method):
    item = S["doc"]["paths"].get(api_path)
    return item.get(method.lower()) if item else None


def validate_request(api_path, method, j):
    op = jobs_op(api_path, method)
    if op is None:
        return
    sch = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if sch is None:
        return
    errs = S["spec"].validate(S["spec_path"], sch, j, "body", request=True)
    if errs:
        raise DbxError(400, "INVALID_PARAMETER_VALUE", "; ".join(errs[:5]))


def send_checked(h, api_path, method, obj):
    op = jobs_op(api_path, method)
    sch = op and op.get("responses", {}).get("200", {}).get("content", {}).get(
        "application/json", {}).get("schema")
    if sch is not None:
        errs = S["spec"].validate(S["spec_path"], sch, obj, "response", request=False)
        if errs:
            h.rec["response_invalid"] = errs[:5]
    h.send(200, obj)


def local(root, p, what="path"):
    """A DBFS or workspace path as a local path below root (never outside)."""
    if not isinstance(p, str) or not p:
        raise DbxError(400, "INVALID_PARAMETER_VALUE", "%s is required" % what)
    if p.startswith("dbfs:"):
        p = p[5:]
    if not p.startswith("/"):
        raise DbxError(400, "INVALID_PARAMETER_VALUE", "Path must be absolute: %s" % p)
    parts = [x for x in p.split("/") if x]
    if any(x in (".", "..") for x in parts):
        raise DbxError(400, "INVALID_PARAMETER_VALUE", "Invalid path: %s" % p)
    return os.path.join(root, *parts)


def dbfs_path(lp):
    rel = os.path.relpath(lp, S["dbfs"])
    return "/" if rel == "." else "/" + rel


def b64d(s, what):
    try:
        return base64.b64decode(s or "", validate=True)
    except (ValueError, TypeError):
        raise DbxError(400, "INVALID_PARAMETER_VALUE", "%s is not valid base64" % what)


def file_info(lp):
    st = os.stat(lp)
    d = os.path.isdir(lp)
    return {"path": dbfs_path(lp), "is_dir": d, "file_size": 0 if d else st.st_size,
            "modification_time": int(st.st_mtime * 1000)}


def dbfs(h, op, q, j):
    root = S["dbfs"]
    if op == "mkdirs":
        lp = local(root, j.get("path"))
        if os.path.isfile(lp):
            raise DbxError(400, "RESOURCE_ALREADY_EXISTS", "A file or directory already exists at the "
                           "input path %s." % j.get("path"))
        os.makedirs(lp, exist_ok=True)
        return h.send(200, {})
    if op == "put":
        lp = local(root, j.get("path"))
        data = b64d(j.get("contents"), "contents")
        if len(data) > 1 << 20:
            raise DbxError(400, "MAX_BLOCK_SIZE_EXCEEDED", "The contents exceed the 1 MB limit of "
                           "put: use create, add-block and close.")
        if os.path.exists(lp) and not j.get("overwrite"):
            raise DbxError(400, "RESOURCE_ALREADY_EXISTS", "A file or directory already exists at the "
                           "input path %s." % j.get("path"))
        os.makedirs(os.path.dirname(lp), exist_ok=True)
        with open(lp + ".put", "wb") as f:
            f.write(data)
        os.replace(lp + ".put", lp)
        return h.send(200, {})
    if op == "create":
        lp = local(root, j.get("path"))
        if os.path.exists(lp) and not j.get("overwrite"):
            raise DbxError(400, "RESOURCE_ALREADY_EXISTS", "A file or directory already exists at the "
                           "input path %s." % j.get("path"))
        os.makedirs(os.path.dirname(lp), exist_ok=True)
        with S["lock"]:
            if len(S["handles"]) >= 100:
                raise DbxError(429, "MAX_NOTEBOOK_SIZE_EXCEEDED", "too many open handles")
            hd = S["next_handle"]
            S["next_handle"] += 1
            S["handles"][hd] = {"path": lp, "data": bytearray()}
        return h.send(200, {"handle": hd})
    if op in ("add-block", "close"):
        with S["lock"]:
            st = S["handles"].get(j.get("handle"))
            if st is None:
                raise DbxError(404, "RESOURCE_DOES_NOT_EXIST", "The handle %s does not exist."
                               % j.get("handle"))
            if op == "add-block":
                data = b64d(j.get("data"), "data")
                if len(data) > 1 << 20:
                    raise DbxError(400, "MAX_BLOCK_SIZE_EXCEEDED", "The block exceeds 1 MB.")
                st["data"] += data
                return h.send(200, {})
            del S["handles"][j["handle"]]
        with open(st["path"] + ".put", "wb") as f:
            f.write(bytes(st["data"]))
        os.replace(st["path"] + ".put", st["path"])
        return h.send(200, {})
    if op == "read":
        lp = local(root, q.get("path"))
        if not os.path.isfile(lp):
            raise DbxError(404, "RESOURCE_DOES_NOT_EXIST", "No file or directory exists on path %s."
                           % q.get("path"))
        try:
            off, ln = int(q.get("offset", 0)), int(q.get("length", 1 << 20))
        except ValueError:
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "offset and length must be integers")
        if off < 0 or ln < 0 or ln > 1 << 20:
            raise DbxError(400, "INVALID_PARAMETER_VALUE" if ln <= 1 << 20 else "MAX_READ_SIZE_EXCEEDED",
                           "length must be at most 1048576 and offset >= 0")
        with open(lp, "rb") as f:
            f.seek(off)
            data = f.read(ln)
        return h.send(200, {"bytes_read": len(data), "data": base64.b64encode(data).decode()})
    if op == "list":
        lp = local(root, q.get("path"))
        if not os.path.exists(lp):
            raise DbxError(404, "RESOURCE_DOES_NOT_EXIST", "No file or directory exists on path %s."
                           % q.get("path"))
        if os.path.isfile(lp):
            return h.send(200, {"files": [file_info(lp)]})
        names = sorted(n for n in os.listdir(lp) if not n.endswith(".put"))
        return h.send(200, {"files": [file_info(os.path.join(lp, n)) for n in names]})
    if op == "get-status":
        lp = local(root, q.get("path"))
        if not os.path.exists(lp):
            raise DbxError(404, "RESOURCE_DOES_NOT_EXIST", "No file or directory exists on path %s."
                           % q.get("path"))
        return h.send(200, file_info(lp))
    if op == "delete":
        lp = local(root, j.get("path"))
        if lp == root:
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "cannot delete the DBFS root")
        if os.path.isdir(lp):
            if os.listdir(lp) and not j.get("recursive"):
                raise DbxError(400, "IO_ERROR", "Directory %s is not empty: pass recursive."
                               % j.get("path"))
            shutil.rmtree(lp)
        elif os.path.exists(lp):
            os.unlink(lp)
        return h.send(200, {})
    raise DbxError(404, "ENDPOINT_NOT_FOUND", "No API found for 'dbfs/%s'" % op)


def workspace(h, op, q, j):
    root = S["ws"]
    if op == "mkdirs":
        os.makedirs(local(root, j.get("path")), exist_ok=True)
        return h.send(200, {})
    if op == "import":
        lp = local(root, j.get("path"))
        if j.get("format", "SOURCE") not in ("SOURCE", "JUPYTER", "AUTO"):
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "the emulator imports SOURCE and JUPYTER")
        if j.get("format", "SOURCE") == "SOURCE" and j.get("language") not in ("PYTHON", None):
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "the emulator runs PYTHON notebooks only")
        if os.path.exists(lp) and not j.get("overwrite"):
            raise DbxError(400, "RESOURCE_ALREADY_EXISTS", "Path (%s) already exists." % j.get("path"))
        if not os.path.isdir(os.path.dirname(lp)):
            raise DbxError(404, "RESOURCE_DOES_NOT_EXIST", "The parent folder (%s) does not exist."
                           % os.path.dirname(j.get("path")))
        with open(lp, "wb") as f:
            f.write(b64d(j.get("content"), "content"))
        return h.send(200, {})
    if op == "delete":
        lp = local(root, j.get("path"))
        if os.path.isdir(lp):
            shutil.rmtree(lp)
        elif os.path.exists(lp):
            os.unlink(lp)
        else:
            raise DbxError(404, "RESOURCE_DOES_NOT_EXIST", "Path (%s) doesn't exist." % j.get("path"))
        return h.send(200, {})
    raise DbxError(404, "ENDPOINT_NOT_FOUND", "No API found for 'workspace/%s'" % op)


# ---- runs -------------------------------------------------------------------------------------
class Run:
    def __init__(self, run_id, req, fail_msg):
        self.id = run_id
        self.req = req
        self.task = req["tasks"][0]
        self.task_run_id = run_id + 1
        self.life, self.result, self.msg = "PENDING", None, "Waiting for cluster"
        self.fail_msg = fail_msg
        self.proc = None
        self.cancel_req = False
        self.error = self.trace = None
        self.start = int(time.time() * 1000)
        self.end = 0
        self.dir = os.path.join(S["scratch"], str(run_id))
        os.makedirs(self.dir, exist_ok=True)
        self.log = os.path.join(self.dir, "driver.log")
        self.thread = threading.Thread(target=self.main, daemon=True)

    def cluster_id(self):
        return self.task.get("existing_cluster_id") or "%s-%d-job" % (time.strftime("%m%d"), self.id)

    def view(self):
        alive = False
        if self.proc is not None and self.proc.poll() is None:
            alive = True
        return {"life_cycle_state": self.life, "result_state": self.result, "state_message": self.msg,
                "pid": self.proc.pid if self.proc else None, "alive": alive, "cluster": self.cluster_id()}

    def state(self):
        s = {"life_cycle_state": self.life, "state_message": self.msg or "",
             "user_cancelled_or_timedout": self.cancel_req}
        if self.result:
            s["result_state"] = self.result
        return s

    def json(self):
        task = {k: v for k, v in self.task.items() if k != "new_cluster"}
        cl = {"cluster_id": self.cluster_id()}
        t = dict(task, run_id=self.task_run_id, state=self.state(), cluster_instance=cl,
                 start_time=self.start, end_time=self.end, attempt_number=0,
                 setup_duration=0, execution_duration=0, cleanup_duration=0)
        if "new_cluster" in self.task:
            t["new_cluster"] = self.task["new_cluster"]
        return {"job_id": self.id * 7, "run_id": self.id, "number_in_job": 1,
                "creator_user_name": "ctarget@example.com", "original_attempt_run_id": self.id,
                "state": self.state(), "start_time": self.start, "end_time": self.end,
                "setup_duration": 0, "execution_duration": 0, "cleanup_duration": 0,
                "run_name": self.req.get("run_name", "Untitled"), "run_type": "SUBMIT_RUN",
                "run_page_url": "https://127.0.0.1:%d/?o=%s#job/%d/run/1" % (
                    S["port"], S["seed"]["workspace_id"], self.id * 7),
                "cluster_instance": cl, "tasks": [t], "format": "MULTI_TASK"}

    def output(self):
        o = {"metadata": self.json()}
        logs = ""
        try:
            with open(self.log, "rb") as f:
                logs = f.read()[-5 * 1024 * 1024:].decode("utf-8", "replace")
        except OSError:
            pass
        o["logs"] = logs
        o["logs_truncated"] = False
        if self.error:
            o["error"] = self.error
            o["error_trace"] = self.trace or ""
        if "notebook_task" in self.task and self.result == "SUCCESS":
            o["notebook_output"] = {"result": "", "truncated": False}
        return o

    def phase(self):
        ms = S["emu"].cfg.get("job_phase_ms", 100)
        deadline = time.time() + ms / 1000.0
        while time.time() < deadline and not self.cancel_req:
            time.sleep(0.01)

    def command(self):
        t = self.task
        if "spark_python_task" in t:
            f = local(S["dbfs"], t["spark_python_task"].get("python_file"), "python_file")
            return [sys.executable, f] + list(t["spark_python_task"].get("parameters", []))
        if "notebook_task" in t:
            f = local(S["ws"], t["notebook_task"].get("notebook_path"), "notebook_path")
            return [sys.executable, f]
        if "spark_jar_task" in t:
            java = shutil.which("java")
            if not java:
                return "java is not installed on the emulator's machine: jar tasks cannot run here"
            jars = [local(S["dbfs"], lib["jar"]) for lib in t.get("libraries", []) if "jar" in lib]
            return [java, "-cp", ":".join(jars), t["spark_jar_task"].get("main_class_name", "")] + \
                list(t["spark_jar_task"].get("parameters", []))
        return "the emulator runs spark_python_task, notebook_task and spark_jar_task only"

    def finish(self, life, result, msg):
        with S["lock"]:
            self.life, self.result, self.msg = life, result, msg
            self.end = int(time.time() * 1000)

    def main(self):
        emu = S["emu"]
        self.phase()
        if self.cancel_req:
            return self.finish("TERMINATED", "CANCELED", "Run cancelled.")
        if self.fail_msg is not None:
            with S["lock"]:
                self.life, self.msg = "RUNNING", "In run"
            self.phase()
            self.error = self.fail_msg
            self.trace = "com.databricks.WorkflowException: " + self.fail_msg
            return self.finish("TERMINATED", "FAILED", self.fail_msg)
        cmd = self.command()
        if isinstance(cmd, str):
            self.error = cmd
            return self.finish("INTERNAL_ERROR", None, cmd)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir,
               "LANG": os.environ.get("LANG", "C.UTF-8"), "CTARGET_DBFS_FUSE": S["dbfs"],
               "DATABRICKS_RUNTIME_VERSION": "13.3"}
        for k, v in (self.task.get("notebook_task", {}).get("base_parameters") or {}).items():
            env["DATABRICKS_WIDGET_" + k] = str(v)
        with S["lock"]:
            if self.cancel_req:
                return self.finish("TERMINATED", "CANCELED", "Run cancelled.")
            try:
                logf = open(self.log, "ab")
                self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=subprocess.STDOUT,
                                             start_new_session=True)
                logf.close()
            except OSError as e:
                self.error = "cannot start %s: %s" % (cmd[0], e.strerror)
                return self.finish("INTERNAL_ERROR", None, self.error)
            self.life, self.msg = "RUNNING", "In run"
        limit = time.time() + min(int(self.task.get("timeout_seconds") or MAX_RUN_S), MAX_RUN_S)
        while self.proc.poll() is None:
            if self.cancel_req:
                self.kill()
                return self.finish("TERMINATED", "CANCELED", "Run cancelled.")
            f = emu.take_fault("POST", str(self.id), ("terminate_cluster",), target=NAME)
            if f:
                self.kill()
                msg = "Cluster %s was terminated. Reason: %s" % (
                    self.cluster_id(), f.get("message", "CLOUD_PROVIDER_SHUTDOWN (emulator)"))
                self.error = msg
                return self.finish("INTERNAL_ERROR", None, msg)
            if time.time() > limit:
                self.kill()
                self.error = "Run timed out"
                return self.finish("TERMINATED", "TIMEDOUT", "Run timed out.")
            time.sleep(0.02)
        rc = self.proc.returncode
        with S["lock"]:
            self.life, self.msg = "TERMINATING", "Terminating the run"
        self.phase()
        if rc == 0:
            return self.finish("TERMINATED", "SUCCESS", "")
        tail = ""
        try:
            with open(self.log, "rb") as f:
                lines = [ln for ln in f.read()[-65536:].decode("utf-8", "replace").splitlines() if ln.strip()]
            tail = lines[-1] if lines else ""
            self.trace = "\n".join(lines[-20:])
        except OSError:
            pass
        self.error = tail or ("exit code %d" % rc)
        self.finish("TERMINATED", "FAILED", "Workload failed, see run output for details")

    def kill(self):
        self.cancel_req = self.cancel_req or False
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.time() + 2
        while p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()

    def join(self, t):
        if self.thread.is_alive():
            self.thread.join(t)


def get_run(q):
    try:
        rid = int(q.get("run_id", ""))
    except ValueError:
        raise DbxError(400, "INVALID_PARAMETER_VALUE", "run_id must be an integer")
    with S["lock"]:
        r = S["runs"].get(rid)
        if r is None:  # get-output takes the task's run id
            r = next((x for x in S["runs"].values() if x.task_run_id == rid), None)
    if r is None:
        raise DbxError(400, "INVALID_PARAMETER_VALUE", "Run %s does not exist." % rid)
    return r


def jobs(h, op, q, j, api_path):
    emu = h.emu
    if op == "runs/submit":
        validate_request(api_path, "POST", j)
        tasks = j.get("tasks") or []
        if len(tasks) != 1:
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "the emulator runs one-task submits only")
        t = tasks[0]
        if bool(t.get("existing_cluster_id")) == bool(t.get("new_cluster")):
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "Exactly one of existing_cluster_id or "
                           "new_cluster must be specified for task %s." % t.get("task_key"))
        ids = [c["cluster_id"] for c in S["seed"]["clusters"]]
        if t.get("existing_cluster_id") and t["existing_cluster_id"] not in ids:
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "Cluster %s does not exist"
                           % t["existing_cluster_id"])
        kinds = [k for k in ("spark_python_task", "notebook_task", "spark_jar_task",
                             "python_wheel_task", "spark_submit_task") if k in t]
        if len(kinds) != 1:
            raise DbxError(400, "INVALID_PARAMETER_VALUE", "Task %s must have exactly one task type."
                           % t.get("task_key"))
        tok = j.get("idempotency_token")
        with S["lock"]:
            if tok and tok in S["idem"]:
                return send_checked(h, api_path, "POST", {"run_id": S["idem"][tok]})
            if len(S["runs"]) >= MAX_RUNS:
                raise DbxError(429, "RESOURCE_EXHAUSTED", "Too many runs (the emulator keeps %d)" % MAX_RUNS)
            f = emu.take_fault("POST", api_path, ("fail_run",), target=NAME)
            rid = S["next_run"]
            S["next_run"] += 10
            r = Run(rid, j, f.get("message", "Run failed on the service (emulator fault)") if f else None)
            S["runs"][rid] = r
            if tok:
                S["idem"][tok] = rid
        r.thread.start()
        return send_checked(h, api_path, "POST", {"run_id": rid})
    if op == "runs/get" and h.command == "GET":
        r = get_run(q)
        with S["lock"]:
            out = r.json()
        return send_checked(h, api_path, "GET", out)
    if op == "runs/get-output" and h.command == "GET":
        r = get_run(q)
        with S["lock"]:
            out = r.output()
        return send_checked(h, api_path, "GET", out)
    if op == "runs/cancel" and h.command == "POST":
        validate_request(api_path, "POST", j)
        r = get_run({"run_id": str(j.get("run_id", ""))})
        r.cancel_req = True
        return send_checked(h, api_path, "POST", {})
    if op == "runs/list" and h.command == "GET":
        with S["lock"]:
            runs = [r.json() for r in sorted(S["runs"].values(), key=lambda x: -x.id)]
        lim = int(q.get("limit", 25) or 25)
        return send_checked(h, api_path, "GET", {"runs": runs[:lim], "has_more": len(runs) > lim})
    raise DbxError(404, "ENDPOINT_NOT_FOUND", "No API found for '%s %s'" % (h.command, api_path))


def plane(h, path, body):
    m = re.match(r"^/api/(2\.[01])/(.+)$", path)
    if not m:
        raise DbxError(404, "ENDPOINT_NOT_FOUND", "No API found for '%s %s'" % (h.command, path))
    ver, rest = m.group(1), m.group(2)
    h.rec["auth"] = check_token(h)
    j = jbody(body) if h.command in ("POST", "PATCH", "PUT") else {}
    q = h.q
    if ver == "2.0" and rest == "clusters/list" and h.command == "GET":
        return h.send(200, {"clusters": [dict(c, state=c.get("state", "RUNNING"))
                                         for c in S["seed"]["clusters"]]})
    if ver == "2.0" and rest.startswith("dbfs/"):
        return dbfs(h, rest[5:], q, j)
    if ver == "2.0" and rest.startswith("workspace/"):
        return workspace(h, rest[10:], q, j)
    if ver == "2.1" and rest.startswith("jobs/"):
        return jobs(h, rest[5:], q, j, "/2.1/" + rest)
    raise DbxError(404, "ENDPOINT_NOT_FOUND", "No API found for '%s %s'" % (h.command, path))
