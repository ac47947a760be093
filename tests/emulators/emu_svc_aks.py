"""Kubernetes API server emulator (the aks target's data plane): namespaces, batch/v1 Jobs, Pods
and their logs, on its own HTTPS port (the emulator's certificate), bearer-token auth.

Every Pod really runs: its init containers one after the other, then its first container, each
`command + args` as a local process (its own process group) whose cwd is the emptyDir volume
mounted at the container's workingDir (DIR/aks/pods/<pod>/<volume>), with the container's env.
Phases Pending -> Running -> Succeeded/Failed; the Job follows its pods (backoffLimit 0:
one failed pod fails the Job and stops the others; completionMode Indexed, parallelism =
completions = node_count).  Logs are kept per container with RFC3339Nano timestamps, served
by GET .../pods/{name}/log (container, timestamps, sinceTime, tailLines, limitBytes).
DELETE of a Job with propagationPolicy Foreground/Background kills and removes its pods.

Request bodies are validated against the Kubernetes OpenAPI v2 subset in specs/aks.json
(aks_specs.py): 422 Invalid naming the field; the emulator's own 2xx answers are validated against
the operation's response schema too (errors in the request log's "invalid").  DIR/aks_kubeconfig.yaml holds contexts
  emu        the good token           emu-bad    a wrong token
  emu-down   a closed port            emu-ca     a CA that did not sign the server
  emu-cert   a client certificate (CN ctarget-k8s-user) signed by the CA, no token
Faults (POST /_emulator/faults, "target": "aks"; "path" is a regex on the Job name or, for
image_pull_failure, on the image):
  {"action": "image_pull_failure"}  the pod stays Pending: ErrImagePull, ImagePullBackOff
  {"action": "evict"}     a running pod is evicted (phase Failed, reason Evicted)
  {"action": "oom"}       a running container is killed: terminated reason OOMKilled, 137
  {"action": "drop_log_stream"}  the next pod log answer is cut mid-body (the connection drops)
  {"action": "drop_after_create"}  a Job is created, then the connection drops unanswered
and the emulator's own status/drop faults (429 + Retry-After, 500) on any path.
"""
import base64
import json
import os
import random
import re
import secrets
import signal
import ssl
import string
import subprocess
import threading
import time

import swagger_validate

NAME = "aks"
NAMESPACES = ("microsoft.containerservice",)
CS_API = "2025-10-01"
CLUSTERS = ("aks-emu",)  # the managed clusters that exist (their API server is this emulator)
MAX_PODS = 16
MAX_LOG = 8 << 20
S = None  # the state


def now_iso(t=None):
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class State:
    def __init__(self, emu):
        self.emu = emu
        self.lock = threading.RLock()
        self.token = "k8s-emu-" + secrets.token_urlsafe(24)
        self.namespaces = {"default": now_iso(), "ml": now_iso()}
        self.jobs = {}       # (ns, name) -> job object
        self.pods = {}       # (ns, name) -> pod record
        self.created = {"jobs": 0, "pods": 0}
        self.deleted = {"jobs": 0, "pods": 0}
        self.gpus = int(os.environ.get("AKS_EMU_GPUS", "4"))
        self.uid = 0
        self.last_ts = 0
        self.stopping = False
        self.bodies = []     # validated create bodies (the Job specs), for tests
        self.dir = os.path.join(emu.dir, "aks")
        os.makedirs(os.path.join(self.dir, "pods"), exist_ok=True)
        root = os.path.dirname(os.path.abspath(__file__))
        self.spec = swagger_validate.Spec([os.path.join(root, "specs", "aks.json")])

    def ts(self):
        """A strictly increasing RFC3339Nano timestamp (a real kubelet's are per line too)."""
        with self.lock:
            t = max(time.time_ns(), self.last_ts + 1000)
            self.last_ts = t
        return "%s.%09dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 10**9)), t % 10**9)

    def new_uid(self):
        self.uid += 1
        return "00000000-0000-4000-8000-%012d" % self.uid


def status_obj(code, reason, message, details=None):
    o = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details:
        o["details"] = details
    return o


class K8sError(Exception):
    def __init__(self, code, reason, message, details=None):
        Exception.__init__(self, message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


# ---- pods ----------------------------------------------------------------------------------------
def cstatus(c, state, ready=False, restart=0):
    return {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready,
            "restartCount": restart, "state": state}


def pod_run(key):
    """The pod's life, on its own thread."""
    with S.lock:
        p = S.pods.get(key)
        if p is None:
            return
        spec = p["obj"]["spec"]
    emu = S.emu
    phase_ms = max(emu.cfg.get("job_phase_ms") or 100, 20) / 1000.0
    time.sleep(phase_ms)
    # image pulls
    for c in spec.get("initContainers", []) + spec["containers"][:1]:
        f = emu.take_fault("GET", c.get("image", ""), ("image_pull_failure",), target=NAME)
        if f:
            msg = 'Failed to pull image "%s": rpc error: code = NotFound desc = failed to pull and unpack image ' \
                  '"%s": not found' % (c.get("image", ""), c.get("image", ""))
            with S.lock:
                st = p["obj"]["status"]
                lst = "initContainerStatuses" if c in spec.get("initContainers", []) else "containerStatuses"
                st.setdefault(lst, []).append(cstatus(c, {"waiting": {"reason": "ErrImagePull", "message": msg}}))
            time.sleep(phase_ms)
            with S.lock:
                st[lst][-1]["state"] = {"waiting": {"reason": "ImagePullBackOff",
                                                    "message": 'Back-off pulling image "%s"' % c.get("image", "")}}
            return  # stays Pending, as a real pod does
    vols = {}
    for v in spec.get("volumes", []):
        d = os.path.join(S.dir, "pods", key[1], v["name"])
        os.makedirs(d, exist_ok=True)
        vols[v["name"]] = d
    with S.lock:
        p["obj"]["status"]["initContainerStatuses"] = [
            cstatus(c, {"waiting": {"reason": "PodInitializing"}}) for c in spec.get("initContainers", [])]
    for i, c in enumerate(spec.get("initContainers", [])):
        code = container_run(key, c, vols, init_index=i)
        if code is None:
            return
        if code != 0:
            finish(key, "Failed", None)
            return
    with S.lock:
        p["obj"]["status"]["phase"] = "Running"
        p["obj"]["status"]["startTime"] = p["obj"]["status"].get("startTime") or now_iso()
    code = container_run(key, spec["containers"][0], vols, init_index=None)
    if code is None:
        return
    finish(key, "Succeeded" if code == 0 else "Failed", None)


def container_run(key, c, vols, init_index):
    """Runs one container; its exit code, or None when the pod was stopped/evicted meanwhile."""
    with S.lock:
        p = S.pods.get(key)
        if p is None or p["obj"]["status"]["phase"] in ("Succeeded", "Failed"):
            return None
        cwd = S.dir
        for m in c.get("volumeMounts", []):
            if c.get("workingDir") and (c["workingDir"] == m["mountPath"]
                                        or c["workingDir"].startswith(m["mountPath"].rstrip("/") + "/")):
                cwd = os.path.join(vols[m["name"]], os.path.relpath(c["workingDir"], m["mountPath"]))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd, "LANG": "C.UTF-8",
               "HOSTNAME": key[1], "KUBERNETES_SERVICE_HOST": "127.0.0.1"}
        for e in c.get("env", []):
            env[e["name"]] = e.get("value", "")
        ann = p["obj"]["metadata"].get("annotations", {})
        if "batch.kubernetes.io/job-completion-index" in ann:
            env["JOB_COMPLETION_INDEX"] = ann["batch.kubernetes.io/job-completion-index"]
        argv = list(c.get("command", [])) + list(c.get("args", []))
        log = p["logs"].setdefault(c["name"], [])
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            proc = None
            err = str(e)
        st = p["obj"]["status"]
        lst = st["initContainerStatuses"] if init_index is not None else st.setdefault("containerStatuses", [])
        if init_index is None:
            lst[:] = [cstatus(c, {"running": {"startedAt": now_iso()}}, ready=True)]
        else:
            lst[init_index] = cstatus(c, {"running": {"startedAt": now_iso()}})
        if proc is None:
            lst[-1 if init_index is None else init_index]["state"] = {"terminated": {
                "exitCode": 128, "reason": "StartError", "message": err}}
            return 128
        p["procs"].append(proc)
        p["current"] = (lst, init_index, c["name"])
    size = 0
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode("utf-8", "replace")
        if not line.endswith("\n"):
            line += "\n"
        with S.lock:
            if size < MAX_LOG:
                log.append((S.ts(), line))
                size += len(line)
    code = proc.wait()
    with S.lock:
        p = S.pods.get(key)
        if p is None or p["obj"]["status"]["phase"] in ("Succeeded", "Failed"):
            return None
        reason = p.pop("kill_reason", None)
        term = {"exitCode": 137 if reason else (code if code >= 0 else 128 - code),
                "reason": reason or ("Completed" if code == 0 else "Error"),
                "startedAt": now_iso(), "finishedAt": now_iso()}
        lst[-1 if init_index is None else init_index] = cstatus(c, {"terminated": term})
        return term["exitCode"]


def finish(key, phase, reason, message=None):
    with S.lock:
        p = S.pods.get(key)
        if p is None:
            return
        st = p["obj"]["status"]
        if st["phase"] in ("Succeeded", "Failed"):
            return
        st["phase"] = phase
        if reason:
            st["reason"] = reason
            st["message"] = message or reason
        job_update(p["job"])


def kill_pod(p, reason=None):
    for proc in p["procs"]:
        if proc.poll() is None:
            if reason:
                p["kill_reason"] = reason
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


def job_update(jkey):
    with S.lock:
        j = S.jobs.get(jkey)
        if j is None:
            return
        pods = [p for p in S.pods.values() if p["job"] == jkey]
        st = j["status"]
        st["active"] = sum(1 for p in pods if p["obj"]["status"]["phase"] in ("Pending", "Running"))
        st["succeeded"] = sum(1 for p in pods if p["obj"]["status"]["phase"] == "Succeeded")
        st["failed"] = sum(1 for p in pods if p["obj"]["status"]["phase"] == "Failed")
        st["ready"] = sum(1 for p in pods if p["obj"]["status"]["phase"] == "Running")
        if st.get("conditions"):
            return
        if st["failed"] > j["spec"].get("backoffLimit", 6):
            st["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                 "message": "Job has reached the specified backoff limit",
                                 "lastTransitionTime": now_iso(), "lastProbeTime": now_iso()}]
            for p in pods:
                if p["obj"]["status"]["phase"] in ("Pending", "Running"):
                    p["obj"]["status"]["phase"] = "Failed"
                    p["obj"]["status"]["reason"] = "DeadlineExceeded"
                    kill_pod(p)
            st["active"] = 0
        elif st["succeeded"] >= j["spec"].get("completions", 1):
            st["conditions"] = [{"type": "Complete", "status": "True", "lastTransitionTime": now_iso(),
                                 "lastProbeTime": now_iso()}]
            st["completionTime"] = now_iso()


def watchdog():
    """Applies evict/oom faults to running pods."""
    while not S.stopping:
        time.sleep(0.05)
        with S.lock:
            for key, p in list(S.pods.items()):
                if p["obj"]["status"]["phase"] != "Running" or not p["procs"]:
                    continue
                jname = p["job"][1]
                if S.emu.take_fault("POST", jname, ("evict",), target=NAME) if _has(("evict",), jname) else None:
                    kill_pod(p)
                    finish(key, "Failed", "Evicted", "The node was low on resource: memory. Threshold "
                           "quantity: 100Mi, available: 12Mi.")
                elif S.emu.take_fault("POST", jname, ("oom",), target=NAME) if _has(("oom",), jname) else None:
                    kill_pod(p, "OOMKilled")


def _has(kinds, path):
    for f in S.emu.faults:
        if f.get("action") in kinds and f.get("target") == NAME and f["count"] != 0 and \
                (not f.get("path") or re.search(f["path"], path)):
            return True
    return False


# ---- requests ------------------------------------------------------------------------------------
CERT_USER = "ctarget-k8s-user"


def check_auth(h):
    a = h.headers.get("Authorization", "")
    if a == "Bearer " + S.token:
        return
    if not a:  # x509 client certificate auth: a certificate the cluster CA signed, CN = the user
        try:
            cert = h.connection.getpeercert()
        except (AttributeError, ValueError):
            cert = None
        cn = [v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"]
        if cn == [CERT_USER]:
            return
    raise K8sError(401, "Unauthorized", "Unauthorized")


def client_cert(emu):
    """A client certificate and key signed by the emulator's CA (user CERT_USER)."""
    d = emu.dir
    key, csr, crt = (os.path.join(d, "aks_client." + e) for e in ("key", "csr", "pem"))
    run = lambda *a: subprocess.run(["openssl"] + list(a), check=True,  # noqa: E731
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
        "-out", csr, "-subj", "/CN=%s/O=system:masters" % CERT_USER)
    run("x509", "-req", "-in", csr, "-CA", os.path.join(d, "ca.pem"), "-CAkey", os.path.join(d, "ca.key"),
        "-CAcreateserial", "-out", crt, "-days", "3")
    return open(crt, "rb").read(), open(key, "rb").read()


def validate(h, path, body):
    op = S.spec.find_operation(h.command, path)
    if op is None:
        raise K8sError(404, "NotFound", "the server could not find the requested resource")
    if not body:
        return None
    try:
        obj = json.loads(body)
    except ValueError as e:
        raise K8sError(400, "BadRequest", "the body of the request was in an unknown format: %s" % e)
    errs = S.spec.validate_request(op, obj)
    if errs:
        h.rec["invalid"] = errs[:5]
        raise K8sError(422, "Invalid", "request body invalid: %s" % "; ".join(errs[:3]))
    return obj


def selector_match(sel, labels):
    for part in (sel or "").split(","):
        part = part.strip()
        if not part:
            continue
        k, _, v = part.partition("=")
        if labels.get(k.strip()) != v.strip().lstrip("="):
            return False
    return True


def handle(h, path, body):
    try:
        check_auth(h)
        obj = validate(h, path, body)
        op = S.spec.find_operation(h.command, path)
        send = h.send

        def checked(status, o=None, headers=None, raw=None, ctype="application/json; charset=utf-8"):
            # our own answers held to the API server's response schemas too
            if raw is None and isinstance(o, dict) and o.get("kind") != "Status" and status < 300:
                errs = S.spec.validate_response(op, status, o)
                if errs:
                    h.rec["invalid"] = ["response: " + e for e in errs[:5]]
            return send(status, o, headers, raw, ctype)
        h.send = checked
        return route(h, path, obj)
    except K8sError as e:
        h.send(e.code, status_obj(e.code, e.reason, e.message, e.details))


def route(h, path, obj):
    m = re.match(r"^/api/v1/namespaces/([^/]+)$", path)
    if m and h.command == "GET":
        ns = m.group(1)
        if ns not in S.namespaces:
            raise K8sError(404, "NotFound", 'namespaces "%s" not found' % ns,
                           {"name": ns, "kind": "namespaces"})
        return h.send(200, {"kind": "Namespace", "apiVersion": "v1",
                            "metadata": {"name": ns, "creationTimestamp": S.namespaces[ns]},
                            "status": {"phase": "Active"}})
    m = re.match(r"^/(api/v1|apis/batch/v1)/namespaces/([^/]+)/(jobs|pods)(?:/([^/]+))?(/log)?$", path)
    if not m:
        raise K8sError(404, "NotFound", "the server could not find the requested resource")
    ns, kind, name, log = m.group(2), m.group(3), m.group(4), m.group(5)
    if ns not in S.namespaces:
        raise K8sError(404, "NotFound", 'namespaces "%s" not found' % ns, {"name": ns, "kind": "namespaces"})
    if kind == "jobs":
        if name is None and h.command == "POST":
            return job_create(h, ns, obj)
        if name is None and h.command == "GET":
            with S.lock:
                items = [j for (n2, _), j in S.jobs.items() if n2 == ns and
                         selector_match(h.q.get("labelselector"), j["metadata"].get("labels", {}))]
                return h.send(200, {"kind": "JobList", "apiVersion": "batch/v1",
                                    "metadata": {"resourceVersion": str(S.uid)}, "items": items})
        if name and h.command == "GET":
            with S.lock:
                j = S.jobs.get((ns, name))
                if j is None:
                    raise K8sError(404, "NotFound", 'jobs.batch "%s" not found' % name,
                                   {"name": name, "group": "batch", "kind": "jobs"})
                return h.send(200, j)
        if name and h.command == "DELETE":
            return job_delete(h, ns, name, obj)
    else:
        if name is None and h.command == "GET":
            with S.lock:
                items = [p["obj"] for (n2, _), p in sorted(S.pods.items()) if n2 == ns and
                         selector_match(h.q.get("labelselector"), p["obj"]["metadata"].get("labels", {}))]
                return h.send(200, {"kind": "PodList", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": str(S.uid)}, "items": items})
        if name and h.command == "GET":
            with S.lock:
                p = S.pods.get((ns, name))
                if p is None:
                    raise K8sError(404, "NotFound", 'pods "%s" not found' % name, {"name": name, "kind": "pods"})
                if not log:
                    return h.send(200, p["obj"])
            return pod_log(h, p)
    raise K8sError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


def trimmed(j):
    """The body for /_emulator/state: inline snapshots and scripts shortened to their sizes."""
    j = json.loads(json.dumps(j))
    for c in ((j.get("spec") or {}).get("template") or {}).get("spec", {}).get("initContainers", []) + \
            ((j.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", []):
        for e in c.get("env", []):
            if len(e.get("value", "")) > 256:
                e["value"] = "<%d bytes>" % len(e["value"])
        c["command"] = [a if len(a) <= 256 else "<%d bytes>" % len(a) for a in c.get("command", [])]
    return j


def job_create(h, ns, j):
    if not isinstance(j, dict) or j.get("kind") not in (None, "Job"):
        raise K8sError(400, "BadRequest", "a Job body is required")
    name = (j.get("metadata") or {}).get("name")
    if not name or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        raise K8sError(422, "Invalid", 'Job.batch "%s" is invalid: metadata.name: Invalid value: a lowercase '
                       'RFC 1123 label must consist of lower case alphanumeric characters or \'-\'' % name)
    spec = j.get("spec") or {}
    tmpl = (spec.get("template") or {}).get("spec") or {}
    if not tmpl.get("containers"):
        raise K8sError(422, "Invalid", 'Job.batch "%s" is invalid: spec.template.spec.containers: Required value'
                       % name)
    if tmpl.get("restartPolicy") not in ("Never", "OnFailure"):
        raise K8sError(422, "Invalid", 'Job.batch "%s" is invalid: spec.template.spec.restartPolicy: Required '
                       'value: valid values: "OnFailure", "Never"' % name)
    completions = int(spec.get("completions", 1))
    with S.lock:
        if (ns, name) in S.jobs:
            raise K8sError(409, "AlreadyExists", 'jobs.batch "%s" already exists' % name,
                           {"name": name, "group": "batch", "kind": "jobs"})
        if len(S.pods) + completions > MAX_PODS:
            raise K8sError(403, "Forbidden", 'exceeded quota: pods, requested: %d, limited: %d'
                           % (completions, MAX_PODS))
        S.bodies.append(trimmed(j))
        md = dict(j["metadata"], namespace=ns, uid=S.new_uid(), resourceVersion=str(S.uid),
                  creationTimestamp=now_iso(), generation=1)
        spec = dict(spec, completions=completions, parallelism=int(spec.get("parallelism", 1)),
                    backoffLimit=int(spec.get("backoffLimit", 6)),
                    completionMode=spec.get("completionMode", "NonIndexed"))
        job = {"kind": "Job", "apiVersion": "batch/v1", "metadata": md, "spec": spec,
               "status": {"startTime": now_iso(), "active": 0}}
        S.jobs[(ns, name)] = job
        S.created["jobs"] += 1
        gpus = 0
        for c in tmpl["containers"]:
            lim = (c.get("resources") or {}).get("limits") or {}
            gpus += int(lim.get("nvidia.com/gpu", 0) or 0)
        for i in range(completions):
            pname = "%s-%d-%s" % (name, i, "".join(random.choice(string.ascii_lowercase + string.digits)
                                                   for _ in range(5)))
            labels = dict((tmpl and (spec["template"].get("metadata") or {}).get("labels")) or {},
                          **{"job-name": name, "batch.kubernetes.io/job-name": name,
                             "controller-uid": md["uid"]})
            ann = {}
            if spec["completionMode"] == "Indexed":
                ann["batch.kubernetes.io/job-completion-index"] = str(i)
                labels["batch.kubernetes.io/job-completion-index"] = str(i)
            pod = {"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": pname, "namespace": ns, "uid": S.new_uid(), "labels": labels,
                                "annotations": ann, "creationTimestamp": now_iso(),
                                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                     "uid": md["uid"], "controller": True}]},
                   "spec": json.loads(json.dumps(tmpl)),
                   "status": {"phase": "Pending", "qosClass": "BestEffort"}}
            S.pods[(ns, pname)] = {"obj": pod, "job": (ns, name), "logs": {}, "procs": []}
            S.created["pods"] += 1
            if gpus > S.gpus:
                pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]
                continue
            threading.Thread(target=pod_run, args=((ns, pname),), daemon=True).start()
        job_update((ns, name))
    if S.emu.take_fault("POST", name, ("drop_after_create",), target=NAME):
        h.rec["fault"] = "drop_after_create"
        return h.drop()  # created, but the client never hears so: its retry meets a 409
    return h.send(201, job)


def job_delete(h, ns, name, opts):
    policy = (opts or {}).get("propagationPolicy") or h.q.get("propagationpolicy") or "Background"
    with S.lock:
        j = S.jobs.pop((ns, name), None)
        if j is None:
            raise K8sError(404, "NotFound", 'jobs.batch "%s" not found' % name,
                           {"name": name, "group": "batch", "kind": "jobs"})
        S.deleted["jobs"] += 1
        victims = [(k, p) for k, p in S.pods.items() if p["job"] == (ns, name)]
        if policy != "Orphan":
            for k, p in victims:
                p["obj"]["status"]["phase"] = p["obj"]["status"]["phase"] if p["obj"]["status"]["phase"] in (
                    "Succeeded", "Failed") else "Failed"
                kill_pod(p)
                del S.pods[k]
                S.deleted["pods"] += 1
    if policy != "Orphan":
        for _, p in victims:
            for proc in p["procs"]:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
    return h.send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": "batch", "kind": "jobs", "uid": j["metadata"]["uid"]}})


def pod_log(h, p):
    q = h.q
    with S.lock:
        spec = p["obj"]["spec"]
        cname = q.get("container") or spec["containers"][0]["name"]
        names = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]
        if cname not in names:
            raise K8sError(400, "BadRequest", 'container %s is not valid for pod %s' % (cname, p["obj"]["metadata"]["name"]))
        if cname not in p["logs"]:
            raise K8sError(400, "BadRequest", 'container "%s" in pod "%s" is waiting to start: PodInitializing'
                           % (cname, p["obj"]["metadata"]["name"]))
        lines = list(p["logs"][cname])
    since = q.get("sincetime")
    if since:
        # metav1.Time: RFC3339 at second precision; lines at or after it
        s = since.replace("Z", "")[:19]
        lines = [(t, l) for t, l in lines if t[:19] >= s]
    if q.get("taillines"):
        n = int(q["taillines"])
        lines = lines[-n:] if n else []
    ts = q.get("timestamps") in ("true", "1")
    data = "".join(("%s %s" % (t, l)) if ts else l for t, l in lines).encode()
    if q.get("limitbytes"):
        data = data[:int(q["limitbytes"])]
    if S.emu.take_fault("GET", p["job"][1], ("drop_log_stream",), target=NAME) and len(data) > 1:
        cut = len(data) // 2
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:cut])
        h.wfile.flush()
        h.rec["status"] = 200
        h.rec["fault"] = "drop_log_stream"
        return h.drop()
    return h.send(200, raw=data, ctype="text/plain")


# ---- module interface ----------------------------------------------------------------------------
def kubeconfig(emu, port):
    ca = open(os.path.join(emu.dir, "ca.pem"), "rb").read()
    other = os.path.join(emu.dir, "aks_other_ca.pem")
    if not os.path.exists(other):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", os.path.join(emu.dir, "aks_other_ca.key"), "-out", other,
                        "-days", "3", "-subj", "/CN=not the emulator's CA"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    try:
        other_ca = open(other, "rb").read()
    except OSError:
        other_ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    clusters = [("emu", port, ca), ("emu-down", 1, ca), ("emu-ca", port, other_ca)]
    lines = ["apiVersion: v1", "kind: Config", "current-context: emu", "preferences: {}", "clusters:"]
    for n, pt, c in clusters:
        lines += ["- name: %s" % n, "  cluster:", "    server: https://127.0.0.1:%d" % pt,
                  "    certificate-authority-data: %s" % b64(c)]
    lines += ["users:", "- name: emu-user", "  user:", "    token: %s" % S.token,
              "- name: bad-user", "  user:", "    token: k8s-emu-wrong-token-0000"]
    ctxs = [("emu", "emu", "emu-user"), ("emu-bad", "emu", "bad-user"),
            ("emu-down", "emu-down", "emu-user"), ("emu-ca", "emu-ca", "emu-user")]
    try:
        crt, key = client_cert(emu)
        lines += ["- name: cert-user", "  user:", "    client-certificate-data: %s" % b64(crt),
                  "    client-key-data: %s" % b64(key)]
        ctxs.append(("emu-cert", "emu", "cert-user"))
    except (OSError, subprocess.CalledProcessError):
        pass
    lines += ["contexts:"]
    for ctx, cl, us in ctxs:
        lines += ["- name: %s" % ctx, "  context:", "    cluster: %s" % cl, "    user: %s" % us,
                  "    namespace: default"]
    path = os.path.join(emu.dir, "aks_kubeconfig.yaml")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path + ".tmp", 0o600)
    os.rename(path + ".tmp", path)
    user = ["apiVersion: v1", "kind: Config", "current-context: aks-emu", "clusters:", "- name: aks-emu",
            "  cluster:", "    server: https://127.0.0.1:%d" % port, "    certificate-authority-data: %s" % b64(ca),
            "users:", "- name: clusterUser_aks-emu", "  user:", "    token: %s" % S.token, "contexts:",
            "- name: aks-emu", "  context:", "    cluster: aks-emu", "    user: clusterUser_aks-emu"]
    with open(os.path.join(emu.dir, "aks_user_kubeconfig.yaml"), "w") as f:
        f.write("\n".join(user) + "\n")
    os.chmod(os.path.join(emu.dir, "aks_user_kubeconfig.yaml"), 0o600)


def init(emu):
    global S
    S = State(emu)
    emu.aks = S
    th = threading.Thread(target=watchdog, daemon=True)
    th.start()
    port = emu.data_plane(NAME, handle)
    # ask for (never require) a client certificate, verified against the cluster CA
    try:
        sctx = emu.planes[NAME].socket.context
        sctx.load_verify_locations(os.path.join(emu.dir, "ca.pem"))
        sctx.verify_mode = ssl.CERT_OPTIONAL
    except (AttributeError, OSError, ssl.SSLError):
        pass
    # written during init, so before the emulator's DIR/port that the fixture waits for
    kubeconfig(emu, port)


def arm(h, path, body):
    """Microsoft.ContainerService/managedClusters/{name}: GET, and POST listClusterUserCredentials
    (ManagedClustersListClusterUserCredentials.json): a base64 kubeconfig for this emulator."""
    from azure_emulator import HttpError
    m = re.match(r"(?i)^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.ContainerService/"
                 r"managedClusters/([^/]+)(/listClusterUserCredentials)?$", path)
    if not m:
        raise HttpError(404, "InvalidResourceType", "The resource type could not be found in the namespace "
                        "'Microsoft.ContainerService' for api version '%s'." % h.q.get("api-version"))
    if h.q.get("api-version") != CS_API:
        raise HttpError(400, "InvalidApiVersionParameter", "The api-version '%s' is invalid. The supported "
                        "versions are '%s'." % (h.q.get("api-version"), CS_API))
    rg, name, creds = m.group(1), m.group(2), m.group(3)
    created = any(c.get("type") == "AKS" and c.get("name", "").lower() == name.lower()
                  for c in getattr(S.emu, "computes", {}).values())
    if name not in CLUSTERS and not created:
        raise HttpError(404, "ResourceNotFound", "The Resource 'Microsoft.ContainerService/managedClusters/%s' "
                        "under resource group '%s' was not found." % (name, rg))
    if creds:
        if h.command != "POST":
            raise HttpError(405, "MethodNotAllowed", "listClusterUserCredentials takes POST")
        text = open(os.path.join(S.emu.dir, "aks_user_kubeconfig.yaml"), "rb").read()
        return h.send(200, {"kubeconfigs": [{"name": "clusterUser",
                                             "value": base64.b64encode(text).decode()}]})
    if h.command != "GET":
        raise HttpError(405, "MethodNotAllowed", "%s on a managed cluster" % h.command)
    return h.send(200, {"id": path, "name": name, "type": "Microsoft.ContainerService/ManagedClusters",
                        "location": S.emu.seed.get("location", "eastus"),
                        "properties": {"provisioningState": "Succeeded", "powerState": {"code": "Running"},
                                       "kubernetesVersion": "1.33.0", "dnsPrefix": name,
                                       "fqdn": "127.0.0.1", "agentPoolProfiles": [
                                           {"name": "nodepool1", "count": 3, "vmSize": "Standard_DS2_v2",
                                            "mode": "System", "osType": "Linux"}]}})


def state(emu):
    with S.lock:
        return {"jobs": sorted("%s/%s" % k for k in S.jobs),
                "pods": sorted("%s/%s:%s" % (k[0], k[1], p["obj"]["status"]["phase"]) for k, p in S.pods.items()),
                "processes": sum(1 for p in S.pods.values() for pr in p["procs"] if pr.poll() is None),
                "created": dict(S.created), "deleted": dict(S.deleted),
                "job_bodies": S.bodies[-8:]}


def stop(emu):
    S.stopping = True
    with S.lock:
        for p in S.pods.values():
            kill_pod(p)
