"""Azure Container Instances for the emulator (loaded by azure_emulator.py, README "Further services").

ARM, api-version 2025-09-01, below /subscriptions/S/resourceGroups/RG/providers/Microsoft.ContainerInstance:
  containerGroups                          GET (list)
  containerGroups/{name}                   PUT (create; 201, provisioningState Creating, then
                                           Succeeded after aci_create_ms), GET, DELETE (200 with
                                           the group; 204 when there is none)
  containerGroups/{name}/containers/{c}/logs   GET [?tail=N] -> {"content": "..."}
  containerGroups/{name}/stop              POST (the container's process is killed; Terminated)
A group's first container really runs: its `command` (an exec list, as ACI runs it) is started
as a local process group in DIR/aci/{name}/ with its environmentVariables (value or secureValue)
and, unlike a real container, SSL_CERT_FILE = the emulator's CA (the container reaches Azurite
as a real one reaches Azure Storage through the public CAs).  The image is not pulled: only
the fault below makes a pull fail.  stdout+stderr are the container's log.  Its state: Waiting
(pulling) -> Running -> Terminated {exitCode, detailStatus Completed|Error|OOMKilled}; the
group's instanceView.state Pending -> Running -> Succeeded|Failed.  Secure values are never
returned.  DELETE kills the process (TERM, KILL after 1 s) and forgets the group.

Request bodies are checked against the shapes of Microsoft's examples (SHAPES below; the
examples are bundled in specs/aci.json): unknown property, wrong type, missing required,
unknown enum value -> 400 InvalidRequestContent naming the field.  Regions: REGIONS (others
-> 400 LocationNotAvailableForResourceType naming the offered ones).

Faults (POST /_emulator/faults): any status on ARM paths ("path": "containerGroups/", 409
Conflict, 429 with retry_after) as for every service; "action": "image_pull_failure" (the next
group PUT whose path matches: its image pull fails, container Waiting/ErrImagePull,
provisioningState Failed, a Warning event); "action": "oom_kill" (the running group whose name
matches "path", or the next one to run: killed as by the OOM killer, exit code 137,
detailStatus OOMKilled)."""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from azure_emulator import HttpError, now_iso

NAME = "aci"
NAMESPACES = ("microsoft.containerinstance",)
API = "2025-09-01"
TYPE = "Microsoft.ContainerInstance/containerGroups"
REGIONS = ("eastus", "westus", "westus2", "westeurope", "northeurope", "southeastasia")
MAX_GROUPS = 32
MAX_LOG = 4 << 20
NAME_RX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

S = {}

# ---- request shapes (from the examples in specs/aci.json and the documented properties) -------
# A shape: "str", "int", "num", "bool", "any", ("enum", values), [shape], {"req": [...], "props": {...}}
OBJ = "obj"
ENV = {"req": ["name"], "props": {"name": "str", "value": "str", "secureValue": "str"}}
PORT = {"req": ["port"], "props": {"port": "int", "protocol": ("enum", ("TCP", "UDP"))}}
RESOURCES = {"req": ["requests"], "props": {
    "requests": {"req": ["cpu", "memoryInGB"], "props": {"cpu": "num", "memoryInGB": "num", "gpu": OBJ}},
    "limits": {"req": [], "props": {"cpu": "num", "memoryInGB": "num", "gpu": OBJ}}}}
CONTAINER = {"req": ["name", "properties"], "props": {
    "name": "str",
    "properties": {"req": ["image", "resources"], "props": {
        "image": "str", "command": ["str"], "ports": [PORT], "environmentVariables": [ENV],
        "resources": RESOURCES, "volumeMounts": [OBJ], "livenessProbe": OBJ, "readinessProbe": OBJ,
        "securityContext": OBJ, "configMap": OBJ, "instanceView": OBJ}}}}
GROUP = {"req": ["properties"], "props": {
    "location": "str", "tags": OBJ, "zones": ["str"], "identity": OBJ, "id": "str", "name": "str",
    "type": "str",
    "properties": {"req": ["containers"], "props": {
        "containers": [CONTAINER], "imageRegistryCredentials": [OBJ],
        "restartPolicy": ("enum", ("Always", "OnFailure", "Never")), "ipAddress": OBJ,
        "osType": ("enum", ("Windows", "Linux")), "volumes": [OBJ], "diagnostics": OBJ,
        "subnetIds": [OBJ], "dnsConfig": OBJ, "sku": ("enum", ("NotSpecified", "Standard", "Dedicated", "Confidential")),
        "encryptionProperties": OBJ, "initContainers": [OBJ], "extensions": [OBJ],
        "confidentialComputeProperties": OBJ, "priority": ("enum", ("Regular", "Spot")),
        "containerGroupProfile": OBJ, "standbyPoolProfile": OBJ, "provisioningState": "str",
        "instanceView": OBJ, "isCreatedFromStandbyPool": "bool"}}}}


def check(shape, v, where, errs):
    if shape == "any":
        return
    if shape == OBJ:
        if not isinstance(v, dict):
            errs.append("%s: expected an object" % where)
        return
    if isinstance(shape, tuple):
        if v not in shape[1]:
            errs.append("%s: '%s' is not one of %s" % (where, v, ", ".join(shape[1])))
        return
    if isinstance(shape, list):
        if not isinstance(v, list):
            errs.append("%s: expected an array" % where)
            return
        for i, x in enumerate(v):
            check(shape[0], x, "%s[%d]" % (where, i), errs)
        return
    if isinstance(shape, dict):
        if not isinstance(v, dict):
            errs.append("%s: expected an object" % where)
            return
        for k in shape["req"]:
            if k not in v:
                errs.append("%s.%s: required" % (where, k))
        for k, x in v.items():
            if k not in shape["props"]:
                errs.append("%s.%s: unknown property" % (where, k))
            else:
                check(shape["props"][k], x, "%s.%s" % (where, k), errs)
        return
    ok = {"str": isinstance(v, str), "bool": isinstance(v, bool),
          "int": isinstance(v, int) and not isinstance(v, bool),
          "num": isinstance(v, (int, float)) and not isinstance(v, bool)}[shape]
    if not ok:
        errs.append("%s: expected %s" % (where, {"str": "a string", "bool": "a boolean", "int": "an integer",
                                                 "num": "a number"}[shape]))


def validate_group(doc):
    errs = []
    check(GROUP, doc, "containerGroup", errs)
    if not errs:
        env_names = set()
        for c in doc["properties"]["containers"]:
            for e in c["properties"].get("environmentVariables", []):
                if ("value" in e) == ("secureValue" in e) and "value" in e:
                    errs.append("environmentVariables %s: value and secureValue both set" % e["name"])
                env_names.add(e["name"])
    return errs


# ---- service hooks --------------------------------------------------------------------------
def init(emu):
    S.clear()
    S.update(lock=threading.RLock(), groups={}, emu=emu, dir=os.path.join(emu.dir, "aci"))
    emu.cfg.setdefault("aci_create_ms", 150)   # provisioningState Creating this long
    emu.cfg.setdefault("aci_pull_ms", 100)     # then the container Waiting (pulling) this long


def state(emu):
    with S["lock"]:
        return {"groups": {k: {"provisioningState": g["prov"], "state": g["cstate"], "exit_code": g["exit"],
                               "detail": g["detail"], "pid": g["proc"].pid if g["proc"] else None,
                               "running": bool(g["proc"] and g["proc"].poll() is None),
                               "location": g["location"], "tags": g["tags"], "image": g["image"]}
                           for k, g in S["groups"].items()}}


def reset(emu, st):
    if st:
        with S["lock"]:
            gs = list(S["groups"].values())
            S["groups"].clear()
        for g in gs:
            kill(g, 0.2)


def stop(emu):
    with S["lock"]:
        gs = list(S["groups"].values())
    for g in gs:
        kill(g, 0)
    deadline = time.time() + 1.0
    while time.time() < deadline and any(g["proc"] and g["proc"].poll() is None for g in gs):
        time.sleep(0.02)
    for g in gs:
        if g["proc"] and g["proc"].poll() is None:
            try:
                os.killpg(g["proc"].pid, signal.SIGKILL)
            except OSError:
                pass


def kill(g, grace, sig=signal.SIGTERM):
    g["stop"].set()
    pr = g["proc"]
    if pr is None or pr.poll() is not None:
        return
    try:
        os.killpg(pr.pid, sig)
    except OSError:
        return
    if sig == signal.SIGKILL:
        return

    def later():
        deadline = time.time() + grace
        while time.time() < deadline and pr.poll() is None:
            time.sleep(0.02)
        if pr.poll() is None:
            try:
                os.killpg(pr.pid, signal.SIGKILL)
            except OSError:
                pass
    threading.Thread(target=later, daemon=True).start()


# ---- ARM ------------------------------------------------------------------------------------
RX = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.ContainerInstance"
                r"/containerGroups(?:/([^/]+)(?:/(containers)/([^/]+)/logs|/(start|stop|restart))?)?/?$", re.I)


def arm(h, path, body):
    emu = S["emu"]
    av = h.q.get("api-version")
    if av != API:
        raise HttpError(400, "InvalidApiVersionParameter",
                        "The api-version '%s' is invalid. The supported versions are '%s'." % (av, API))
    m = RX.match(path)
    if not m:
        raise HttpError(404, "InvalidResourceType", "The resource type could not be found in the namespace "
                        "'Microsoft.ContainerInstance' for api version '%s'." % API)
    sub, rg, name, logs_c, action = m.group(1), m.group(2), m.group(3), m.group(5), m.group(6)
    gid = "/subscriptions/%s/resourceGroups/%s/providers/%s/%s" % (sub, rg, TYPE, name)
    if name is None:
        if h.command != "GET":
            raise HttpError(405, "MethodNotAllowed", "only GET lists container groups")
        with S["lock"]:
            out = [view(g) for g in S["groups"].values()]
        return h.send(200, {"value": out})
    with S["lock"]:
        g = S["groups"].get(name.lower())
    if logs_c is not None:
        if h.command != "GET":
            raise HttpError(405, "MethodNotAllowed", "GET only")
        if g is None:
            raise not_found(name, rg)
        if logs_c != g["cname"]:
            raise HttpError(404, "ContainerNotFound", "The container '%s' in container group '%s' is not found."
                            % (logs_c, name))
        with S["lock"]:
            text = bytes(g["log"]).decode("utf-8", "replace")
        tail = h.q.get("tail")
        if tail:
            try:
                n = int(tail)
            except ValueError:
                raise HttpError(400, "InvalidRequestParameter", "tail must be an integer")
            text = "".join(text.splitlines(True)[-n:]) if n > 0 else ""
        return h.send(200, {"content": text})
    if action is not None:
        if h.command != "POST":
            raise HttpError(405, "MethodNotAllowed", "POST only")
        if g is None:
            raise not_found(name, rg)
        if action == "stop":
            kill(g, 1.0)
            return h.send(204)
        raise HttpError(409, "ContainerGroupRestartNotSupported",
                        "The emulator does not restart container groups with restartPolicy Never.")
    if h.command == "GET":
        if g is None:
            raise not_found(name, rg)
        with S["lock"]:
            return h.send(200, view(g))
    if h.command == "DELETE":
        if g is None:
            return h.send(204)
        with S["lock"]:
            S["groups"].pop(name.lower(), None)
            g["prov"] = "Deleting"
            v = view(g)
        kill(g, 1.0)
        threading.Thread(target=forget, args=(g,), daemon=True).start()
        return h.send(200, v)
    if h.command == "PUT":
        return put(h, emu, gid, name, rg, body, g)
    raise HttpError(405, "MethodNotAllowed", "%s is not supported" % h.command)


def forget(g):
    """A deleted group's files go once its process is gone (bounded wait)."""
    deadline = time.time() + 10
    while time.time() < deadline and g["proc"] is not None and g["proc"].poll() is None:
        time.sleep(0.05)
    shutil.rmtree(g["workdir"], ignore_errors=True)


def not_found(name, rg):
    return HttpError(404, "ResourceNotFound", "The Resource '%s/%s' under resource group '%s' was not found. "
                     "For more details please go to https://aka.ms/ARMResourceNotFoundFix" % (TYPE, name, rg))


def put(h, emu, gid, name, rg, body, cur):
    import emu_arm
    doc = emu_arm.json_body(body)
    if doc is None:
        raise HttpError(400, "InvalidRequestContent", "The request content was invalid: no body.")
    errs = validate_group(doc)
    if errs:
        h.rec["invalid"] = "; ".join(errs[:5])
        raise HttpError(400, "InvalidRequestContent", "The request content was invalid: %s" % "; ".join(errs[:5]))
    if not NAME_RX.match(name):
        raise HttpError(400, "ContainerGroupNameInvalid", "The container group name '%s' is invalid. The name can "
                        "only contain lowercase letters, numbers and dashes, between 1 and 63 characters, and "
                        "cannot start or end with a dash." % name)
    loc = (doc.get("location") or "").replace(" ", "").lower()
    if loc not in REGIONS:
        raise HttpError(400, "LocationNotAvailableForResourceType",
                        "The provided location '%s' is not available for resource type '%s'. List of available "
                        "regions for the resource type is '%s'." % (doc.get("location"), TYPE, ",".join(REGIONS)))
    props = doc["properties"]
    c0 = props["containers"][0]
    req = c0["properties"]["resources"]["requests"]
    if req["cpu"] > 4 or req["memoryInGB"] > 16 or req["cpu"] <= 0 or req["memoryInGB"] <= 0:
        raise HttpError(400, "ResourceRequestsExceedsLimit" if req["cpu"] > 0 else "InvalidRequestContent",
                        "The container group resource requests (cpu %s, memoryInGB %s) exceed the limits of "
                        "region '%s': 4 cores, 16 GB." % (req["cpu"], req["memoryInGB"], loc))
    if req.get("gpu"):
        raise HttpError(400, "GpuNotSupported", "GPU resources are not available in region '%s'." % loc)
    if cur is not None:
        if cur["prov"] in ("Creating", "Pending"):
            raise HttpError(409, "Conflict", "The container group '%s' is still being created: wait before "
                            "updating it." % name)
        with S["lock"]:
            return h.send(200, view(cur))
    with S["lock"]:
        if len(S["groups"]) >= MAX_GROUPS:
            raise HttpError(409, "ContainerGroupQuotaReached", "Resource type '%s' container group quota 'MaxGroups' "
                            "exceeded: limit %d." % (TYPE, MAX_GROUPS))
    pull_fail = emu.take_fault("PUT", h.rec["path"], ("image_pull_failure",)) is not None
    g = {"id": gid, "name": name, "location": doc["location"], "tags": doc.get("tags") or {},
         "zones": doc.get("zones"), "props": copy.deepcopy(props), "cname": c0["name"],
         "image": c0["properties"]["image"], "prov": "Creating", "gstate": None, "cstate": None,
         "exit": None, "detail": "", "start": None, "finish": None, "events": [], "gevents": [],
         "proc": None, "log": bytearray(), "stop": threading.Event(), "pull_fail": pull_fail,
         "workdir": os.path.join(S["dir"], name), "created": time.time()}
    with S["lock"]:
        S["groups"][name.lower()] = g
        v = view(g)
    threading.Thread(target=life, args=(g,), daemon=True).start()
    return h.send(201, v)


def event(g, name, msg, typ="Normal"):
    t = now_iso()
    g["events"].append({"count": 1, "firstTimestamp": t, "lastTimestamp": t, "message": msg,
                        "name": name, "type": typ})


def life(g):
    emu = S["emu"]
    try:
        _life(g, emu)
    except Exception as e:  # the emulator's own failure: the container fails with it
        import traceback
        traceback.print_exc()
        with S["lock"]:
            g["cstate"], g["detail"], g["exit"] = "Terminated", "EmulatorError: %s" % e, 1
            g["gstate"], g["prov"] = "Failed", "Failed"


def _life(g, emu):
    if g["stop"].wait(emu.cfg["aci_create_ms"] / 1000.0):
        return
    with S["lock"]:
        g["prov"], g["gstate"], g["cstate"], g["detail"] = "Succeeded", "Pending", "Waiting", "Pulling"
        event(g, "Pulling", 'pulling image "%s"' % g["image"])
    if g["stop"].wait(emu.cfg["aci_pull_ms"] / 1000.0):
        return
    if g["pull_fail"]:
        with S["lock"]:
            g["detail"] = "ErrImagePull"
            g["prov"], g["gstate"] = "Failed", "Pending"
            event(g, "Failed", 'Failed to pull image "%s": rpc error: code = NotFound desc = failed to resolve '
                  'reference "%s": not found' % (g["image"], g["image"]), "Warning")
        return
    cprops = g["props"]["containers"][0]["properties"]
    cmd = cprops.get("command") or ["/bin/true"]
    os.makedirs(g["workdir"], exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": g["workdir"],
           "LANG": os.environ.get("LANG", "C.UTF-8"), "TMPDIR": os.path.join(g["workdir"], "tmp"),
           "SSL_CERT_FILE": os.path.join(emu.dir, "ca.pem"), "HOSTNAME": g["name"]}
    os.makedirs(env["TMPDIR"], exist_ok=True)
    for e in cprops.get("environmentVariables") or []:
        env[e["name"]] = str(e.get("value", e.get("secureValue", "")))
    with S["lock"]:
        if g["stop"].is_set():
            return
        event(g, "Pulled", 'Successfully pulled image "%s"' % g["image"])
        try:
            pr = subprocess.Popen(cmd, cwd=g["workdir"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            g["cstate"], g["detail"], g["exit"] = "Terminated", "ContainerCannotRun: %s" % e, 127
            g["gstate"], g["finish"] = "Failed", now_iso()
            return
        g["proc"] = pr
        g["cstate"], g["detail"], g["gstate"], g["start"] = "Running", "", "Running", now_iso()
        event(g, "Started", "Started container")

    def pump():
        while True:
            b = pr.stdout.read1(65536) if hasattr(pr.stdout, "read1") else pr.stdout.read(4096)
            if not b:
                break
            with S["lock"]:
                if len(g["log"]) < MAX_LOG:
                    g["log"] += b[:MAX_LOG - len(g["log"])]
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    oom = False
    while pr.poll() is None:
        if not oom and emu.take_fault("RUN", g["name"], ("oom_kill",)) is not None:
            oom = True
            try:
                os.killpg(pr.pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    t.join(5)
    rc = pr.returncode
    code = rc if rc >= 0 else 128 - rc
    with S["lock"]:
        g["exit"], g["finish"], g["cstate"] = code, now_iso(), "Terminated"
        g["detail"] = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        g["gstate"] = "Succeeded" if code == 0 else "Failed"
        event(g, "Killing" if oom else "Terminated", "Container was OOM killed" if oom
              else "Container terminated with exit code %d" % code, "Warning" if oom else "Normal")


def view(g):
    """The group as ARM returns it (call with the lock held); secure values are left out."""
    props = copy.deepcopy(g["props"])
    c = props["containers"][0]["properties"]
    c["environmentVariables"] = [{"name": e["name"], **({"value": e["value"]} if "value" in e else {})}
                                 for e in c.get("environmentVariables", [])]
    if g["cstate"] is not None:
        cs = {"state": g["cstate"], "detailStatus": g["detail"]}
        if g["start"]:
            cs["startTime"] = g["start"]
        if g["cstate"] == "Terminated":
            cs["exitCode"] = g["exit"]
            cs["finishTime"] = g["finish"]
        c["instanceView"] = {"restartCount": 0, "currentState": cs, "events": list(g["events"])}
    props["provisioningState"] = g["prov"]
    props.setdefault("osType", "Linux")
    props["isCreatedFromStandbyPool"] = False
    if g["gstate"] is not None:
        props["instanceView"] = {"events": list(g["gevents"]), "state": g["gstate"]}
    out = {"id": g["id"], "name": g["name"], "type": TYPE, "location": g["location"], "properties": props}
    if g["tags"]:
        out["tags"] = g["tags"]
    if g["zones"]:
        out["zones"] = g["zones"]
    return out


# ---- replay of Microsoft's examples (python3 emu_svc_aci.py --examples specs/aci.json) ---------
def replay(bundle):
    with open(bundle, encoding="utf-8") as f:
        files = json.load(f)["files"]
    n = bad = 0
    for rel, text in sorted(files.items()):
        ex = json.loads(text)
        body = ex.get("parameters", {}).get("containerGroup")
        if body is not None:
            n += 1
            errs = validate_group(body)
            if errs:
                bad += 1
                print("not ok - request %s: %s" % (rel, "; ".join(errs)))
            else:
                print("ok - request %s" % rel)
        for st, rs in ex.get("responses", {}).items():
            b = rs.get("body")
            if isinstance(b, dict) and "properties" in b and "containers" in b.get("properties", {}):
                n += 1
                errs = validate_group(b)
                if errs:
                    bad += 1
                    print("not ok - response %s %s: %s" % (st, rel, "; ".join(errs)))
                else:
                    print("ok - response %s %s" % (st, rel))
    print("%d checked, %d bad" % (n, bad))
    return bad


if __name__ == "__main__":
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--examples":
        sys.exit(1 if replay(sys.argv[2]) else 0)
    sys.exit(__doc__)
