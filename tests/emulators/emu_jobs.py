"""Command jobs that really run: code and uri_folder inputs from Azurite into DIR/jobs/NAME/,
the command through /bin/sh -c as local processes (one per instance), stdout+stderr appended
to the artifact store's std_log.txt as it comes, ./outputs uploaded after exit."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse

TERMINAL = ("Completed", "Failed", "Canceled")
PHASES = ("Starting", "Preparing", "Queued")


def iso_duration_s(s):
    m = re.match(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", s or "")
    if not m:
        return None
    d, h, mi, sec = m.groups()
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)


class Job:
    def __init__(self, emu, name, doc, compute, code, principal):
        self.emu = emu
        self.name = name
        self.doc = doc
        self.props = dict(doc.get("properties") or {})
        self.compute_key = compute["name"].lower()
        self.compute_type = compute["type"]
        self.low_priority = (compute.get("props") or {}).get("vmPriority") == "LowPriority"
        self.code = code
        self.principal = principal
        self.instance_count = int((self.props.get("resources") or {}).get("instanceCount") or 1)
        self.status = "NotStarted"
        self.created = time.time()
        self.started = self.ended = None
        self.error = None
        self.exit_codes = []
        self.procs = []
        self.cancel_ev = threading.Event()
        self.preempt_ev = threading.Event()
        self.preempt_after = None
        self.thread = None
        self.workdir = os.path.join(emu.dir, "jobs", name)
        self.log_blob = "ExperimentRun/dcid.%s/user_logs/std_log.txt" % name
        self.history = [("NotStarted", self.created)]

    def set(self, st):
        with self.emu.lock:
            if self.status in TERMINAL:
                return False
            self.status = st
            self.history.append((st, time.time()))
            return True

    def view(self):
        emu = self.emu
        p = json.loads(json.dumps(self.props))
        p["status"] = self.status
        p.setdefault("experimentName", "Default")
        p.setdefault("displayName", self.name)
        p.setdefault("isArchived", False)
        p.setdefault("properties", {})
        p.setdefault("tags", {})
        p.setdefault("inputs", {})
        p.setdefault("outputs", {"default": {"jobOutputType": "uri_folder", "mode": "ReadWriteMount",
                                             "uri": "azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.%s"
                                             % self.name}})
        p["services"] = {
            "Studio": {"jobServiceType": "Studio",
                       "endpoint": "https://ml.azure.com/runs/%s?wsid=%s&tid=%s" % (self.name, emu.ws_id(),
                                                                                    emu.seed["tenant_id"])},
            "Tracking": {"jobServiceType": "Tracking",
                         "endpoint": "azureml://%s.api.azureml.ms/mlflow/v1.0%s?" % (emu.seed["location"], emu.ws_id())}}
        if self.error:
            # the job resource has no error field; the service puts the reason in the job's
            # properties dictionary and its logs: so does the emulator
            p["properties"] = dict(p["properties"], **{"azureml.runErrorCode": self.error["code"],
                                                      "azureml.runErrorMessage": self.error["message"]})
        return {"id": "%s/jobs/%s" % (emu.ws_id(), self.name), "name": self.name,
                "type": "Microsoft.MachineLearningServices/workspaces/jobs", "properties": p,
                "systemData": {"createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
                               "createdBy": self.principal, "createdByType": "Application"}}

    def admin_view(self):
        return {"name": self.name, "status": self.status, "error": self.error, "exit_codes": self.exit_codes,
                "pids": [pr.pid for pr in self.procs], "workdir": self.workdir, "compute": self.compute_key,
                "instance_count": self.instance_count, "history": self.history}


class Runner:
    def __init__(self, emu):
        self.emu = emu
        self.blobcache = os.path.join(emu.dir, "blobcache")

    def start(self, jb):
        jb.thread = threading.Thread(target=self.run, args=(jb,), daemon=True)
        jb.thread.start()

    def cancel(self, jb):
        """Before Running the job's thread sees the event at its next phase; once running, its
        processes get TERM, then KILL after 2 s."""
        jb.cancel_ev.set()
        self.kill(jb, grace=2.0)

    def cancel_all(self, wait=False):
        """Stop every job's processes; with wait, KILL what is left after 1 s before returning
        (the emulator is exiting: no process of a job may outlive it)."""
        jobs = list(self.emu.jobs.values())
        for jb in jobs:
            jb.cancel_ev.set()
            self.kill(jb, grace=0 if wait else 0.5)
        if not wait:
            return
        deadline = time.time() + 1.0
        while time.time() < deadline and any(pr.poll() is None for jb in jobs for pr in jb.procs):
            time.sleep(0.02)
        for jb in jobs:
            for pr in jb.procs:
                if pr.poll() is None:
                    try:
                        os.killpg(pr.pid, signal.SIGKILL)
                    except OSError:
                        pass

    def kill(self, jb, grace):
        for pr in list(jb.procs):
            if pr.poll() is None:
                try:
                    os.killpg(pr.pid, signal.SIGTERM)
                except OSError:
                    pass
        if grace and jb.procs:
            def later():
                deadline = time.time() + grace
                while time.time() < deadline and any(pr.poll() is None for pr in jb.procs):
                    time.sleep(0.05)
                for pr in jb.procs:
                    if pr.poll() is None:
                        try:
                            os.killpg(pr.pid, signal.SIGKILL)
                        except OSError:
                            pass
            threading.Thread(target=later, daemon=True).start()

    def preempt(self, f):
        jb = self.emu.jobs.get((f.get("job") or "").lower())
        if jb is None:
            # armed: the next job of that name is preempted once it runs
            self.emu.faults.append(dict(f, armed=True))
            return
        jb.preempt_after = f.get("after_ms", 0) / 1000.0
        jb.preempt_ev.set()
        if jb.status == "Running" and not jb.preempt_after:
            self.do_preempt(jb)

    def do_preempt(self, jb):
        jb.preempted = True
        for pr in list(jb.procs):
            if pr.poll() is None:
                try:
                    os.killpg(pr.pid, signal.SIGKILL)
                except OSError:
                    pass

    # ---- the job's life --------------------------------------------------------------------
    def wait_phase(self, jb):
        ms = self.emu.cfg["job_phase_ms"]
        return jb.cancel_ev.wait(ms / 1000.0)

    def finish(self, jb, status, error=None):
        with self.emu.lock:
            if jb.status in TERMINAL:
                return
            jb.error = error
            jb.ended = time.time()
            jb.status = status
            jb.history.append((status, jb.ended))

    def run(self, jb):
        try:
            self._run(jb)
        except Exception as e:  # the emulator's own failure: the job fails with it
            import traceback
            traceback.print_exc()
            self.finish(jb, "Failed", {"code": "ServiceError", "message": "emulator: %s: %s" % (type(e).__name__, e)})

    def _run(self, jb):
        emu = self.emu
        for ph in PHASES:
            if self.wait_phase(jb):
                return self.finish(jb, "Canceled")
            jb.set(ph)
            if ph == "Preparing":
                err = self.prepare(jb)
                if err:
                    return self.finish(jb, "Failed", {"code": "UserError", "message": err})
        # armed preemption faults for this job
        with emu.lock:
            for f in emu.faults:
                if f.get("armed") and f.get("count", 1) != 0 and (f.get("job") or "").lower() == jb.name.lower():
                    f["count"] = f.get("count", 1) - 1 if f.get("count", 1) > 0 else -1
                    jb.preempt_after = f.get("after_ms", 0) / 1000.0
                    jb.preempt_ev.set()
        if jb.cancel_ev.is_set():
            return self.finish(jb, "Canceled")
        jb.set("Running")
        jb.started = time.time()
        blob = emu.blob
        if blob:
            blob.create_container(emu.artifact_container)
            blob.create_append(emu.artifact_container, jb.log_blob)
        cmd = self.substitute(jb, jb.props["command"])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", jb.workdir),
               "LANG": os.environ.get("LANG", "C.UTF-8"), "TMPDIR": os.path.join(jb.workdir, "tmp")}
        os.makedirs(env["TMPDIR"], exist_ok=True)
        for k, v in (jb.props.get("environmentVariables") or {}).items():
            env[k] = str(v)
        env.update({"AZUREML_RUN_ID": jb.name, "AZUREML_ARM_SUBSCRIPTION": emu.sub,
                    "AZUREML_ARM_RESOURCEGROUP": emu.seed["resource_group"],
                    "AZUREML_ARM_WORKSPACE_NAME": emu.seed["workspace_name"],
                    "AZUREML_EXPERIMENT_NAME": jb.props.get("experimentName") or "Default",
                    "AZUREML_NODE_COUNT": str(jb.instance_count), "WORLD_SIZE": str(jb.instance_count)})
        code_dir = os.path.join(jb.workdir, "code")
        readers = []
        for rank in range(jb.instance_count):
            e = dict(env, AZUREML_CR_NODE_RANK=str(rank), RANK=str(rank), NODE_RANK=str(rank))
            pr = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=code_dir, env=e, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            jb.procs.append(pr)
            name = jb.log_blob if rank == 0 else jb.log_blob.replace("std_log.txt", "std_log_process_%d.txt" % rank)
            if blob and rank > 0:
                blob.create_append(emu.artifact_container, name)
            t = threading.Thread(target=self.pump, args=(jb, pr, name), daemon=True)
            t.start()
            readers.append(t)
        timeout = iso_duration_s((jb.props.get("limits") or {}).get("timeout"))
        timed_out = killed = False
        while any(pr.poll() is None for pr in jb.procs):
            if jb.cancel_ev.is_set() and not killed:  # a cancel that came while they started
                killed = True
                self.kill(jb, grace=2.0)
            if jb.preempt_ev.is_set() and time.time() - jb.started >= (jb.preempt_after or 0) \
                    and not getattr(jb, "preempted", False):
                self.do_preempt(jb)
            if timeout and time.time() - jb.started > timeout and not timed_out:
                timed_out = True
                self.kill(jb, grace=2.0)
            time.sleep(0.02)
        for t in readers:
            t.join(10)
        jb.exit_codes = [pr.returncode for pr in jb.procs]
        if getattr(jb, "preempted", False):
            with emu.lock:
                c = emu.computes.get(jb.compute_key)
                if c is not None:
                    c["preempted"] = c.get("preempted", 0) + jb.instance_count
            return self.finish(jb, "Failed", {
                "code": "JobPreempted",
                "message": "The job was preempted: its low-priority node was reclaimed by Azure. "
                           "Low priority VMs can be preempted at any time; resubmit the job."})
        if jb.cancel_ev.is_set():
            jb.set("Finalizing")
            self.upload_outputs(jb)
            return self.finish(jb, "Canceled")
        jb.set("Finalizing")
        self.upload_outputs(jb)
        if timed_out:
            return self.finish(jb, "Failed", {"code": "JobTimeout", "message": "The job exceeded its time limit "
                                              "of %s and was stopped." % jb.props["limits"]["timeout"]})
        bad = [(i, rc) for i, rc in enumerate(jb.exit_codes) if rc != 0]
        if bad:
            i, rc = bad[0]
            desc = "exited with code %d" % rc if rc >= 0 else "was killed by signal %d" % -rc
            return self.finish(jb, "Failed", {"code": "UserError", "message": "Execution failed: the user process "
                                              "'%s' (rank %d) %s." % (jb.props["command"][:200], i, desc)})
        self.finish(jb, "Completed")

    def pump(self, jb, pr, blob_name):
        fd = pr.stdout.fileno()
        blob = self.emu.blob
        with open(os.path.join(jb.workdir, os.path.basename(blob_name)), "ab") as local:
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:
                    break
                if not data:
                    break
                local.write(data)
                local.flush()
                if blob:
                    try:
                        blob.append(self.emu.artifact_container, blob_name, data)
                    except Exception as e:  # keep draining the pipe; the log says what was lost
                        sys_err("job %s: log append failed: %s" % (jb.name, e))
        pr.stdout.close()

    def substitute(self, jb, cmd):
        def rep(m):
            kind, name = m.group(1), m.group(2)
            if kind == "inputs":
                i = (jb.props.get("inputs") or {}).get(name)
                if i is None:
                    return m.group(0)
                if i.get("jobInputType") == "literal":
                    return str(i.get("value", ""))
                return jb.input_paths.get(name, "")
            o = os.path.join(jb.workdir, "outputs_" + name)
            os.makedirs(o, exist_ok=True)
            return o
        return re.sub(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}", rep, cmd)

    # ---- storage ---------------------------------------------------------------------------
    def container_of(self, uri):
        """(container, prefix) of an azureml:// datastore URI or an https URL into our account."""
        emu = self.emu
        m = re.match(r"^azureml://(?:subscriptions/[^/]+/resourcegroups/[^/]+/workspaces/[^/]+/)?datastores/"
                     r"([^/]+)/paths/(.*)$", uri, re.I)
        if m:
            import emu_arm
            ds = emu_arm.datastore_defs(emu)
            cont = ds.get(m.group(1)) or getattr(emu, "extra_datastores", {}).get(m.group(1), {}).get("containerName")
            if not cont:
                raise ValueError("datastore '%s' does not exist" % m.group(1))
            return cont, urllib.parse.unquote(m.group(2))
        for base in (emu.blob.endpoint + "/", (emu.public_blob or emu.blob.endpoint) + "/"):
            if uri.startswith(base):
                rest = urllib.parse.unquote(urllib.parse.urlsplit(uri).path[len(emu.blob.base_path) + 1:])
                cont, _, prefix = rest.partition("/")
                return cont, prefix
        raise ValueError("unsupported URI '%s'" % uri)

    def fetch(self, container, name, dest):
        """Blob -> dest; content blobs are immutable here, so they are cached and hard-linked."""
        cache = os.path.join(self.blobcache, container, name)
        if name.startswith("ctarget-blobs/") and os.path.exists(cache):
            src = cache
        else:
            data = self.emu.blob.get(container, name)
            if data is None:
                raise ValueError("blob %s/%s vanished" % (container, name))
            if name.startswith("ctarget-blobs/"):
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                with open(cache + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(cache + ".tmp", cache)
                src = cache
            else:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(data)
                return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def download_folder(self, uri, dest):
        cont, prefix = self.container_of(uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        n = 0
        for name, size in self.emu.blob.list(cont, prefix):
            rel = name[len(prefix):]
            if not rel or rel.startswith("/") or ".." in rel.split("/"):
                continue
            self.fetch(cont, name, os.path.join(dest, rel))
            n += 1
        return n

    def prepare(self, jb):
        """Code and inputs into the job dir; an error message or None."""
        emu = self.emu
        if os.path.exists(jb.workdir):
            shutil.rmtree(jb.workdir)
        code_dir = os.path.join(jb.workdir, "code")
        os.makedirs(code_dir)
        jb.input_paths = {}
        if emu.blob is None:
            return "the emulator has no blob storage (--blob-endpoint)" if jb.code else None
        try:
            if jb.code:
                uri = jb.code["properties"]["codeUri"]
                if self.download_folder(uri, code_dir) == 0:
                    return "The code folder %s is empty." % uri
            for iname, inp in (jb.props.get("inputs") or {}).items():
                t = inp.get("jobInputType")
                if t == "uri_folder":
                    d = os.path.join(jb.workdir, "inputs", iname)
                    os.makedirs(d, exist_ok=True)
                    self.download_folder(inp["uri"], d)
                    jb.input_paths[iname] = d
                elif t == "uri_file":
                    cont, name = self.container_of(inp["uri"])
                    d = os.path.join(jb.workdir, "inputs", iname, os.path.basename(name))
                    self.fetch(cont, name, d)
                    jb.input_paths[iname] = d
        except ValueError as e:
            return "Preparing the job's data failed: %s" % e
        return None

    def upload_outputs(self, jb):
        emu = self.emu
        if emu.blob is None:
            return
        out = os.path.join(jb.workdir, "code", "outputs")
        if not os.path.isdir(out):
            return
        for root, dirs, files in os.walk(out):
            for f in sorted(files):
                p = os.path.join(root, f)
                rel = os.path.relpath(p, out)
                with open(p, "rb") as fh:
                    emu.blob.put(emu.artifact_container, "ExperimentRun/dcid.%s/outputs/%s" % (jb.name, rel), fh.read())


def sys_err(msg):
    import sys
    sys.stderr.write(msg + "\n")
