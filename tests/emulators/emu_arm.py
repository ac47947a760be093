"""ARM + Azure ML resources of the emulator: workspace, computes (LROs over time), codes,
environments, datastores, jobs (run by emu_jobs).  handle(h, path, body) serves one request
for the Handler h of azure_emulator.py."""
import hashlib
import json
import re
import time
import urllib.parse
import uuid

from azure_emulator import HttpError, ML, API_VERSION, now_iso

WS_RX = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.MachineLearningServices"
                   r"/workspaces/([^/]+)(/.*)?$", re.I)
OPS_RX = re.compile(r"^/subscriptions/([^/]+)/providers/Microsoft\.MachineLearningServices/locations/([^/]+)/"
                    r"(computeOperationsStatus|computeOperationsResults|mfeOperationsStatus|mfeOperationResults)"
                    r"/([^/]+)$", re.I)
# /subscriptions/S/resourceGroups/RG/providers/NAMESPACE/...: other services' resources
PROVIDER_RX = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/([^/]+)(/.*)?$", re.I)
SUB_RX = re.compile(r"^/subscriptions/([^/]+)(/resourceGroups/([^/]+))?/?$", re.I)
NAME_RX = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,254}$")
COMPUTE_NAME_RX = re.compile(r"^[a-zA-Z](?![a-zA-Z0-9-]*-$)[a-zA-Z0-9-]{1,31}$")
TERMINAL = ("Completed", "Failed", "Canceled", "NotResponding", "Paused")


def handle(h, path, body):
    emu = h.emu
    av = h.q.get("api-version")
    if av is None:
        raise HttpError(400, "MissingApiVersionParameter",
                        "The api-version query parameter (?api-version=) is required for all requests.")
    emu.check_arm_token(h.headers)
    m = SUB_RX.match(path) or WS_RX.match(path) or OPS_RX.match(path)
    sub = m.group(1) if m else path.split("/")[2]
    if sub.lower() != emu.sub.lower():
        raise HttpError(404, "SubscriptionNotFound", "The subscription '%s' could not be found." % sub)
    m = PROVIDER_RX.match(path)
    svc = emu.service_for(m.group(3)) if m else None
    if svc is not None:
        if m.group(2).lower() != emu.seed["resource_group"].lower():
            raise rg_not_found(m.group(2))
        return svc.arm(h, path, body)
    m = OPS_RX.match(path)
    if m:
        check_api(av)
        return operation(h, m.group(3), m.group(4))
    m = SUB_RX.match(path)
    if m:
        if m.group(3) and m.group(3).lower() != emu.seed["resource_group"].lower():
            raise rg_not_found(m.group(3))
        return h.send(200, {"id": "/subscriptions/" + emu.sub, "subscriptionId": emu.sub,
                            "displayName": "ctarget test subscription", "state": "Enabled"})
    m = WS_RX.match(path)
    if not m:
        raise HttpError(400, "InvalidResourceType", "The resource type of '%s' could not be found in the "
                        "namespace '%s' for api version '%s'." % (path, ML, av))
    rg, ws, rest = m.group(2), m.group(3), m.group(4) or ""
    if rg.lower() != emu.seed["resource_group"].lower():
        raise rg_not_found(rg)
    if ws.lower() != emu.seed["workspace_name"].lower():
        raise HttpError(404, "ResourceNotFound",
                        "The Resource '%s/workspaces/%s' under resource group '%s' was not found. For more "
                        "details please go to https://aka.ms/ARMResourceNotFoundFix" % (ML, ws, rg))
    check_api(av)
    doc = None
    if body.strip():
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise HttpError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                            "deserialized: '%s'." % e)
    if doc is not None:  # kept for sdk/validate_bodies.mjs (GET /_emulator/bodies)
        with emu.lock:
            emu.bodies.append({"seq": h.rec["seq"], "method": h.command, "path": path, "body": doc})
    op = emu.spec.find_operation(h.command, path)
    if op is not None and h.command in ("PUT", "PATCH", "POST"):
        errs = emu.spec.validate_request(op, doc)
        if errs:
            h.rec["invalid"] = "; ".join(errs[:5])
            raise HttpError(400, "UserError", "The request body does not match the %s schema: %s"
                            % (op.get("operationId"), "; ".join(errs[:5])))
    with emu.lock:
        settle(emu)
    segs = [urllib.parse.unquote(s) for s in rest.split("/") if s]
    return route(h, segs, doc, path)


def json_body(body):
    """A request body as JSON (None when empty), or ARM's 400 for malformed content."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError as e:
        raise HttpError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                        "deserialized: '%s'." % e)


def check_api(av):
    if av != API_VERSION:
        raise HttpError(400, "InvalidApiVersionParameter",
                        "The api-version '%s' is invalid. The supported versions are '%s'." % (av, API_VERSION))


def rg_not_found(rg):
    return HttpError(404, "ResourceGroupNotFound", "Resource group '%s' could not be found." % rg)


def not_found(kind, name):
    return HttpError(404, "ResourceNotFound", "%s '%s' was not found in the workspace." % (kind, name))


def route(h, segs, doc, path):
    emu, m = h.emu, h.command
    if not segs:
        if m == "GET":
            return h.send(200, workspace_view(emu))
        raise HttpError(405, "MethodNotAllowed", "Only GET is emulated for workspaces.")
    kind = segs[0].lower()
    if kind == "computes":
        return computes(h, segs[1:], doc)
    if kind == "codes":
        return assets(h, "codes", segs[1:], doc)
    if kind == "environments":
        return assets(h, "environments", segs[1:], doc)
    if kind == "datastores":
        return datastores(h, segs[1:], doc)
    if kind == "jobs":
        return jobs(h, segs[1:], doc)
    raise HttpError(404, "NotFound", "No emulated resource at %s." % path)


def workspace_view(emu):
    s = emu.seed
    return {"id": emu.ws_id(), "name": s["workspace_name"], "type": ML + "/workspaces",
            "location": s["location"], "kind": "Default",
            "properties": {"workspaceId": emu.ws_guid, "friendlyName": s["workspace_name"],
                           "provisioningState": "Succeeded", "discoveryUrl": emu.base_url() + "/discovery",
                           "storageAccount": "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Storage/"
                                             "storageAccounts/%s" % (emu.sub, s["resource_group"], s["storage_account"]),
                           "mlFlowTrackingUri": "azureml://%s.api.azureml.ms/mlflow/v1.0%s" % (s["location"], emu.ws_id())},
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": s["tenant_id"]},
            "sku": {"name": "Basic", "tier": "Basic"}}


# ---- LROs -------------------------------------------------------------------------------------
def new_op(h, kind, target, outcome="Succeeded", error=None, dur_ms=None):
    emu = h.emu
    f = emu.take_fault(h.command, h.rec["path"], ("slow_lro",))
    if f:
        dur_ms = f.get("lro_ms", 3000)
        h.rec["fault"] = f["id"]
    if dur_ms is None:
        dur_ms = emu.cfg["lro_ms"]
    oid = str(uuid.uuid4())
    emu.ops[oid] = {"id": oid, "kind": kind, "target": target, "start": time.time(),
                    "end": time.time() + dur_ms / 1000.0, "outcome": outcome, "error": error,
                    "applied": False}
    return oid


def op_headers(emu, oid, family="compute"):
    base = "%s/subscriptions/%s/providers/%s/locations/%s" % (emu.base_url(), emu.sub, ML, emu.seed["location"])
    if family == "compute":
        st, res = "computeOperationsStatus", "computeOperationsResults"
    else:
        st, res = "mfeOperationsStatus", "mfeOperationResults"
    return {"Azure-AsyncOperation": "%s/%s/%s?api-version=%s" % (base, st, oid, API_VERSION),
            "Location": "%s/%s/%s?api-version=%s" % (base, res, oid, API_VERSION),
            "Retry-After": str(emu.cfg["retry_after"])}


def settle(emu):
    """Apply every LRO whose time has come (called under the lock on each ARM request)."""
    t = time.time()
    for op in emu.ops.values():
        if op["applied"] or t < op["end"]:
            continue
        op["applied"] = True
        kind, name = op["kind"], op["target"]
        c = emu.computes.get(name)
        if kind in ("create", "update") and c is not None and c["state"] != "Deleting":
            c["state"] = op["outcome"]
            c["modified"] = t
            if op["outcome"] == "Failed":
                c["errors"] = [{"error": op["error"]}]
            if c["type"] == "ComputeInstance" and op["outcome"] == "Succeeded":
                c["ci_state"] = "Running"
            elif c["type"] == "ComputeInstance":
                c["ci_state"] = "CreateFailed"
        elif kind == "delete" and c is not None:
            del emu.computes[name]
        elif kind in ("start", "stop", "restart") and c is not None:
            c["ci_state"] = {"start": "Running", "stop": "Stopped", "restart": "Running"}[kind]
            c["last_op"] = {"operationName": kind.capitalize(), "operationTime": now_iso(t),
                            "operationStatus": "Succeeded", "operationTrigger": "User"}


def operation(h, which, oid):
    emu = h.emu
    with emu.lock:
        settle(emu)
        op = emu.ops.get(oid)
        if op is None and which.lower().startswith("mfe"):
            return mfe_operation(h, which, oid)
        if op is None:
            raise HttpError(404, "ResourceNotFound", "Operation '%s' was not found." % oid)
        done = op["applied"]
        status = op["outcome"] if done else "InProgress"
        if which.lower() == "computeoperationsstatus":
            out = {"id": h.rec["path"], "name": oid, "status": status, "startTime": now_iso(op["start"])}
            if done:
                out["endTime"] = now_iso(op["end"])
            if done and op["outcome"] == "Failed":
                out["error"] = op["error"]
            return h.send(200, out, {"Retry-After": str(emu.cfg["retry_after"])} if not done else None)
        if not done:
            return h.send(202, None, op_headers(emu, oid))
        if op["outcome"] == "Failed":
            raise HttpError(400, op["error"]["code"], op["error"]["message"])
        c = emu.computes.get(op["target"])
        if op["kind"] in ("create", "update") and c is not None:
            return h.send(200, compute_view(emu, c))
        return h.send(204)


# ---- computes ---------------------------------------------------------------------------------
def compute_id(emu, name):
    return emu.ws_id() + "/computes/" + name


def cores(emu, size):
    return emu.seed["vm_sizes"].get(size.upper())


def nodes_busy(emu, c):
    n = 0
    for jb in emu.jobs.values():
        if jb.compute_key == c["name"].lower() and jb.status in ("Preparing", "Queued", "Running", "Finalizing"):
            n += jb.instance_count
    return n


def compute_view(emu, c):
    t = c["type"]
    props = {"computeType": t, "computeLocation": c["location"], "provisioningState": c["state"],
             "description": c.get("description"), "createdOn": now_iso(c["created"]),
             "modifiedOn": now_iso(c["modified"]), "isAttachedCompute": bool(c.get("resourceId")),
             "disableLocalAuth": c.get("disableLocalAuth", False), "provisioningErrors": c.get("errors")}
    if c.get("resourceId"):
        props["resourceId"] = c["resourceId"]
    elif t == "AKS" and c["state"] == "Succeeded":
        # a created AKS compute names its managed cluster, as the service does
        props["resourceId"] = ("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.ContainerService/"
                               "managedClusters/%s" % (emu.sub, emu.seed["resource_group"], c["name"]))
    inner = json.loads(json.dumps(c.get("props") or {}))
    if t == "AmlCompute" and c["state"] in ("Succeeded", "Updating"):
        ss = inner.setdefault("scaleSettings", {"maxNodeCount": 1})
        mn, mx = ss.get("minNodeCount", 0), ss.get("maxNodeCount", 1)
        busy = min(nodes_busy(emu, c), mx)
        cur = max(mn, busy)
        inner.update({"allocationState": "Steady", "allocationStateTransitionTime": now_iso(c["modified"]),
                      "errors": None, "currentNodeCount": cur, "targetNodeCount": cur,
                      "nodeStateCounts": {"idleNodeCount": cur - busy, "runningNodeCount": busy,
                                          "preparingNodeCount": 0, "unusableNodeCount": 0,
                                          "leavingNodeCount": 0, "preemptedNodeCount": c.get("preempted", 0)}})
        inner.setdefault("osType", "Linux")
        inner.setdefault("vmPriority", "Dedicated")
        inner.setdefault("remoteLoginPortPublicAccess", "Enabled" if not inner.get("subnet") else "Disabled")
        if inner.get("remoteLoginPortPublicAccess") == "NotSpecified":
            inner["remoteLoginPortPublicAccess"] = "Disabled" if inner.get("subnet") else "Enabled"
    elif t == "AmlCompute":
        inner.update({"allocationState": "Resizing", "currentNodeCount": 0, "targetNodeCount": 0})
    elif t == "ComputeInstance":
        ssh = inner.get("sshSettings") or {}
        ssh = {"sshPublicAccess": ssh.get("sshPublicAccess", "Disabled"), "adminUserName": "azureuser",
               "sshPort": 50000, "adminPublicKey": ssh.get("adminPublicKey")}
        if ssh["adminPublicKey"] is None:
            del ssh["adminPublicKey"]
        inner["sshSettings"] = ssh
        inner["state"] = c.get("ci_state", "Creating")
        inner["connectivityEndpoints"] = {"publicIpAddress": "127.0.0.1", "privateIpAddress": "10.0.0.4"}
        inner["applications"] = []
        inner["createdBy"] = {"userName": c.get("principal", ""), "userOrgId": emu.seed["tenant_id"],
                              "userId": c.get("principal", "")}
        inner["errors"] = [{"error": e["error"]} for e in (c.get("errors") or [])]
        if c.get("last_op"):
            inner["lastOperation"] = c["last_op"]
        inner.setdefault("applicationSharingPolicy", "Shared")
        inner.setdefault("computeInstanceAuthorizationType", "personal")
    if inner:
        props["properties"] = inner
    out = {"id": compute_id(emu, c["name"]), "name": c["name"], "type": ML + "/workspaces/computes",
           "location": c["location"], "properties": props}
    for k in ("tags", "sku", "identity"):
        if c.get(k) is not None:
            out[k] = c[k]
    if isinstance(out.get("identity"), dict) and out["identity"].get("type", "").startswith("SystemAssigned"):
        out["identity"] = dict(out["identity"], principalId=c["mi_principal"], tenantId=emu.seed["tenant_id"])
    out["systemData"] = {"createdBy": c.get("principal", ""), "createdByType": "Application",
                         "createdAt": now_iso(c["created"]), "lastModifiedBy": c.get("principal", ""),
                         "lastModifiedByType": "Application", "lastModifiedAt": now_iso(c["modified"])}
    return out


def computes(h, segs, doc):
    emu, m = h.emu, h.command
    if not segs:
        if m != "GET":
            raise HttpError(405, "MethodNotAllowed", "%s on computes" % m)
        with emu.lock:
            return h.send(200, {"value": [compute_view(emu, c) for c in emu.computes.values()]})
    name, action = segs[0], (segs[1] if len(segs) > 1 else None)
    key = name.lower()
    with emu.lock:
        c = emu.computes.get(key)
        if action is None and m == "PUT":
            return compute_put(h, name, c, doc)
        if c is None:
            if m == "DELETE":
                return h.send(204)
            raise HttpError(404, "ResourceNotFound", "Compute with name '%s' was not found in workspace '%s'."
                            % (name, emu.seed["workspace_name"]))
        if action is None and m == "GET":
            return h.send(200, compute_view(emu, c))
        if action is None and m == "PATCH":
            return compute_patch(h, c, doc)
        if action is None and m == "DELETE":
            act = h.q.get("underlyingresourceaction")
            if act not in ("Delete", "Detach"):
                raise HttpError(400, "MissingRequiredParameter" if act is None else "InvalidParameter",
                                "The query parameter 'underlyingResourceAction' must be Delete or Detach.")
            if c["state"] == "Deleting":
                oid = c["delete_op"]
            else:
                c["state"] = "Deleting"
                oid = c["delete_op"] = new_op(h, "delete", key)
            return h.send(202, None, op_headers(emu, oid))
        if m != "POST":
            raise HttpError(405, "MethodNotAllowed", "%s on %s" % (m, action))
        if action == "listNodes":
            return h.send(200, list_nodes(emu, c))
        if action == "listKeys":
            if c["type"] in ("AKS", "Kubernetes", "VirtualMachine", "Databricks"):
                return h.send(200, {"computeType": "AKS" if c["type"] == "Kubernetes" else c["type"],
                                    "userKubeConfig": "apiVersion: v1\nkind: Config\n",
                                    "adminKubeConfig": "apiVersion: v1\nkind: Config\n",
                                    "imagePullSecretName": None})
            raise HttpError(400, "BadRequest", "Compute '%s' of type %s has no keys." % (c["name"], c["type"]))
        if action in ("start", "stop", "restart"):
            if c["type"] != "ComputeInstance":
                raise HttpError(400, "BadRequest", "%s is only supported for ComputeInstance, not %s."
                                % (action, c["type"]))
            if c["state"] != "Succeeded":
                raise HttpError(409, "Conflict", "Compute '%s' is %s; try again when it has settled."
                                % (c["name"], c["state"]))
            st = c.get("ci_state")
            if (action == "start" and st == "Running") or (action == "stop" and st == "Stopped"):
                raise HttpError(400, "UserError" if action == "start" else "UserError",
                                "Compute instance '%s' is already %s." % (c["name"], st.lower()))
            if action == "restart" and st != "Running":
                raise HttpError(400, "UserError", "Compute instance '%s' is %s: only a running instance can "
                                "be restarted." % (c["name"], st))
            c["ci_state"] = {"start": "Starting", "stop": "Stopping", "restart": "Restarting"}[action]
            oid = new_op(h, action, key)
            return h.send(202, None, op_headers(emu, oid))
        raise HttpError(404, "NotFound", "No compute action '%s'." % action)


def list_nodes(emu, c):
    if c["type"] != "AmlCompute":
        raise HttpError(400, "BadRequest", "listNodes is only supported for AmlCompute.")
    v = compute_view(emu, c)["properties"].get("properties", {})
    running = [jb for jb in emu.jobs.values() if jb.compute_key == c["name"].lower() and jb.status == "Running"]
    nodes, i = [], 0
    for jb in running:
        for _ in range(jb.instance_count):
            nodes.append({"nodeId": "tvmps_%08d_d" % i, "privateIpAddress": "10.0.0.%d" % (4 + i),
                          "publicIpAddress": "127.0.0.1", "port": 50000 + i, "nodeState": "running",
                          "runId": jb.name})
            i += 1
    while i < v.get("currentNodeCount", 0):
        nodes.append({"nodeId": "tvmps_%08d_d" % i, "privateIpAddress": "10.0.0.%d" % (4 + i),
                      "publicIpAddress": "127.0.0.1", "port": 50000 + i, "nodeState": "idle"})
        i += 1
    return {"nodes": nodes, "nextLink": None}


def vm_check(emu, ctype, size):
    if not size:
        raise HttpError(400, "BadRequest", "vmSize is required for %s." % ctype)
    if cores(emu, size) is None:
        raise HttpError(400, "BadRequest", "The specified VM size '%s' is not supported in location '%s' for "
                        "compute type %s. Supported sizes: %s." % (size, emu.seed["location"], ctype,
                                                                  ", ".join(sorted(emu.seed["vm_sizes"]))),
                        details=[{"code": "InvalidVmSize", "message": "VM size '%s' is not available." % size}])


def quota_check(emu, name, ctype, size, nodes):
    used = 0
    for c in emu.computes.values():
        if c["name"].lower() == name.lower() or c.get("resourceId") or c["state"] in ("Failed", "Deleting"):
            continue
        sz = (c.get("props") or {}).get("vmSize") or ""
        n = (c.get("props") or {}).get("scaleSettings", {}).get("minNodeCount", 0) if c["type"] == "AmlCompute" \
            else (1 if c.get("ci_state") != "Stopped" else 0)
        used += (cores(emu, sz) or 0) * n
    need = cores(emu, size) * max(1, nodes)
    q = emu.cfg["core_quota"]
    if used + need > q:
        msg = ("The specified subscription has a total vCPU quota of %d and cannot accomodate for at least %d "
               "requested managed compute node%s which maps to %d vCPUs (%d in use). Talk to your Subscription "
               "Admin or refer to https://docs.microsoft.com/azure/machine-learning/how-to-manage-quotas"
               "#request-quota-increases to increase the total quota." % (q, max(1, nodes),
                                                                          "s" if nodes > 1 else "", need, used))
        raise HttpError(400, "BadRequest", msg, details=[{"code": "QuotaExceeded", "message": msg}])


def compute_put(h, name, c, doc):
    emu = h.emu
    if not COMPUTE_NAME_RX.match(name):
        raise HttpError(400, "BadRequest", "Compute name '%s' is invalid: it must be 2 to 32 characters, start "
                        "with a letter, contain only letters, digits and '-', and not end with '-'." % name)
    props = (doc or {}).get("properties") or {}
    ctype = props.get("computeType")
    inner = props.get("properties") or {}
    rid = props.get("resourceId")
    if c is not None:
        if c["state"] == "Deleting":
            raise HttpError(409, "Conflict", "Compute '%s' is being deleted." % name)
        if c["type"] != ctype:
            raise HttpError(400, "BadRequest", "Compute '%s' exists with type %s; it cannot become %s."
                            % (name, c["type"], ctype))
        if ctype == "ComputeInstance":
            old = (c.get("props") or {}).get("sshSettings") or {}
            new = inner.get("sshSettings") or {}
            if new.get("sshPublicAccess", old.get("sshPublicAccess", "Disabled")) != old.get("sshPublicAccess", "Disabled"):
                raise HttpError(400, "UserError", "sshPublicAccess of compute instance '%s' cannot be changed "
                                "after creation." % name)
        if c["state"] == "Creating":
            return h.send(200, compute_view(emu, c), op_headers(emu, c["create_op"]))
        if ctype == "AmlCompute":
            vm_check(emu, ctype, inner.get("vmSize") or c["props"].get("vmSize"))
            if inner.get("vmSize") and inner["vmSize"].upper() != (c["props"].get("vmSize") or "").upper():
                raise HttpError(400, "BadRequest", "vmSize of compute '%s' cannot be changed after creation." % name)
        c["props"] = dict(c.get("props") or {}, **inner)
        for k in ("tags", "identity"):
            if k in (doc or {}):
                c[k] = doc[k]
        c["state"] = "Updating"
        oid = c["create_op"] = new_op(h, "update", name.lower())
        return h.send(200, compute_view(emu, c), op_headers(emu, oid))
    if rid:
        for o in emu.computes.values():
            if (o.get("resourceId") or "").lower() == rid.lower():
                raise HttpError(409, "Conflict", "The resource '%s' is already attached to this workspace as "
                                "compute '%s'." % (rid, o["name"]),
                                details=[{"code": "ComputeAlreadyAttached", "message": o["name"]}])
    if ctype in ("AmlCompute", "ComputeInstance") and not rid:
        vm_check(emu, ctype, inner.get("vmSize"))
        n = inner.get("scaleSettings", {}).get("minNodeCount", 0) if ctype == "AmlCompute" else 1
        if ctype == "AmlCompute":
            ss = inner.get("scaleSettings") or {}
            if "maxNodeCount" not in ss:
                raise HttpError(400, "BadRequest", "scaleSettings.maxNodeCount is required for AmlCompute.")
            if ss.get("minNodeCount", 0) > ss["maxNodeCount"]:
                raise HttpError(400, "BadRequest", "minNodeCount (%d) must not exceed maxNodeCount (%d)."
                                % (ss["minNodeCount"], ss["maxNodeCount"]))
        quota_check(emu, name, ctype, inner["vmSize"], n)
    outcome, err = "Succeeded", None
    f = emu.take_fault(h.command, h.rec["path"], ("fail_provisioning",))
    if f:
        h.rec["fault"] = f["id"]
        outcome = "Failed"
        err = {"code": f.get("code", "AllocationFailed"),
               "message": f.get("message", "Allocation failed. We do not have sufficient capacity for the requested "
                                "VM size in this region (emulated provisioning failure).")}
    t = time.time()
    c = {"name": name, "type": ctype, "location": doc.get("location") or emu.seed["location"],
         "props": inner, "description": props.get("description"), "resourceId": rid,
         "disableLocalAuth": props.get("disableLocalAuth", False), "tags": doc.get("tags"),
         "sku": doc.get("sku"), "identity": doc.get("identity"), "mi_principal": str(uuid.uuid4()),
         "state": "Creating", "created": t, "modified": t, "errors": None,
         "principal": h.emu.check_arm_token(h.headers)["principal"]}
    if ctype == "ComputeInstance":
        c["ci_state"] = "Creating"
    emu.computes[name.lower()] = c
    c["create_op"] = new_op(h, "create", name.lower(), outcome, err)
    return h.send(201, compute_view(emu, c), op_headers(emu, c["create_op"]))


def compute_patch(h, c, doc):
    emu = h.emu
    if c["type"] != "AmlCompute":
        raise HttpError(400, "BadRequest", "Only AmlCompute can be updated with PATCH.")
    if c["state"] not in ("Succeeded", "Updating"):
        raise HttpError(409, "Conflict", "Compute '%s' is %s." % (c["name"], c["state"]))
    ss = (((doc or {}).get("properties") or {}).get("properties") or {}).get("scaleSettings")
    if ss:
        if ss.get("minNodeCount", 0) > ss.get("maxNodeCount", 1):
            raise HttpError(400, "BadRequest", "minNodeCount must not exceed maxNodeCount.")
        quota_check(emu, c["name"], "AmlCompute", c["props"]["vmSize"], ss.get("minNodeCount", 0))
        c["props"]["scaleSettings"] = dict(c["props"].get("scaleSettings") or {}, **ss)
    if "identity" in (doc or {}):
        c["identity"] = doc["identity"]
    c["modified"] = time.time()
    c["state"] = "Updating"
    oid = c["create_op"] = new_op(h, "update", c["name"].lower())
    return h.send(200, compute_view(emu, c), op_headers(emu, oid))


# ---- codes and environments -------------------------------------------------------------------
def asset_view(emu, kind, name, version, rec):
    rid = "%s/%s/%s" % (emu.ws_id(), kind, name) + ("/versions/%s" % version if version else "")
    out = {"id": rid, "name": version or name, "type": "%s/workspaces/%s%s" % (ML, kind, "/versions" if version else ""),
           "properties": rec["properties"],
           "systemData": {"createdAt": now_iso(rec["created"]), "createdBy": rec["principal"],
                          "createdByType": "Application", "lastModifiedAt": now_iso(rec["created"]),
                          "lastModifiedBy": rec["principal"], "lastModifiedByType": "Application"}}
    return out


def pending_folder(name, version):
    return "LocalUpload/%s/" % hashlib.sha256(("%s/%s" % (name, version)).encode()).hexdigest()[:32]


def assets(h, kind, segs, doc):
    emu, m = h.emu, h.command
    store_c = emu.codes if kind == "codes" else emu.envs
    store_v = emu.code_versions if kind == "codes" else emu.env_versions
    if not segs:
        if m != "GET":
            raise HttpError(405, "MethodNotAllowed", m)
        with emu.lock:
            return h.send(200, {"value": [asset_view(emu, kind, n, None, r) for n, r in store_c.items()]})
    name = segs[0]
    if not NAME_RX.match(name):
        raise HttpError(400, "UserError", "The name '%s' is not valid for %s." % (name, kind))
    principal = emu.check_arm_token(h.headers)["principal"]
    with emu.lock:
        if len(segs) == 1:
            if m == "PUT":
                created = name not in store_c
                store_c[name] = {"properties": dict(doc.get("properties") or {}, provisioningState="Succeeded",
                                                    latestVersion=latest(store_v, name)),
                                 "created": time.time(), "principal": principal}
                return h.send(201 if created else 200, asset_view(emu, kind, name, None, store_c[name]))
            if m == "GET":
                if name not in store_c:
                    raise not_found(kind[:-1], name)
                return h.send(200, asset_view(emu, kind, name, None, store_c[name]))
            raise HttpError(405, "MethodNotAllowed", m)
        if segs[1] != "versions":
            raise HttpError(404, "NotFound", "/".join(segs))
        if len(segs) == 2:
            vals = [asset_view(emu, kind, n, v, r) for (n, v), r in store_v.items() if n == name]
            return h.send(200, {"value": vals})
        version = segs[2]
        key = (name, version)
        if len(segs) == 4 and segs[3] == "startPendingUpload" and kind == "codes" and m == "POST":
            if emu.blob is None:
                raise HttpError(400, "UserError", "no blob storage configured (--blob-endpoint)")
            if (doc or {}).get("pendingUploadType", "TemporaryBlobReference") not in ("TemporaryBlobReference", "None"):
                raise HttpError(400, "UserError", "pendingUploadType must be TemporaryBlobReference.")
            folder = pending_folder(name, version)
            emu.blob.create_container(emu.blob_container)
            uri = emu.public_url(emu.blob_container, folder)
            return h.send(200, {"blobReferenceForConsumption": {
                "blobUri": uri, "storageAccountArmId": "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Storage/"
                "storageAccounts/%s" % (emu.sub, emu.seed["resource_group"], emu.seed["storage_account"]),
                "credential": {"credentialType": "SAS", "sasUri": uri + "?" + emu.blob.container_sas(emu.blob_container)}},
                "pendingUploadId": (doc or {}).get("pendingUploadId") or str(uuid.uuid4()),
                "pendingUploadType": "TemporaryBlobReference"})
        if len(segs) != 3:
            raise HttpError(404, "NotFound", "/".join(segs))
        if m == "GET":
            if key not in store_v:
                raise not_found(kind[:-1] + " version", "%s:%s" % key)
            return h.send(200, asset_view(emu, kind, name, version, store_v[key]))
        if m == "DELETE":
            store_v.pop(key, None)
            return h.send(200)
        if m != "PUT":
            raise HttpError(405, "MethodNotAllowed", m)
        props = dict(doc.get("properties") or {})
        if kind == "codes" and not props.get("codeUri"):
            raise HttpError(400, "UserError", "codeUri is required for a code version.")
        if kind == "environments" and not (props.get("image") or props.get("build")):
            raise HttpError(400, "UserError", "An environment version needs an image or a build context.")
        old = store_v.get(key)
        if old is not None:
            same = ("codeUri", "image", "build", "condaFile")
            if any(old["properties"].get(k) != props.get(k) for k in same if k in props or k in old["properties"]):
                raise HttpError(409, "UserError", "%s version %s:%s already exists with different contents; "
                                "versions are immutable." % (kind[:-1].capitalize(), name, version))
            return h.send(200, asset_view(emu, kind, name, version, old))
        props["provisioningState"] = "Succeeded"
        props.setdefault("isAnonymous", False)
        props.setdefault("isArchived", False)
        if kind == "environments":
            props.setdefault("environmentType", "UserCreated")
            props.setdefault("osType", "Linux")
        store_v[key] = {"properties": props, "created": time.time(), "principal": principal}
        if name not in store_c:
            store_c[name] = {"properties": {"provisioningState": "Succeeded", "isArchived": False},
                             "created": time.time(), "principal": principal}
        store_c[name]["properties"]["latestVersion"] = latest(store_v, name)
        return h.send(201, asset_view(emu, kind, name, version, store_v[key]))


def latest(store_v, name):
    vs = [v for (n, v) in store_v if n == name]
    return max(vs, key=lambda v: (len(v), v)) if vs else None


# ---- datastores -------------------------------------------------------------------------------
def datastore_defs(emu):
    return {"workspaceblobstore": emu.blob_container, "workspaceartifactstore": emu.artifact_container,
            "workspaceworkingdirectory": emu.blob_container}


def datastore_view(emu, name):
    cont = datastore_defs(emu).get(name) or emu.extra_datastores[name]["containerName"]
    return {"id": "%s/datastores/%s" % (emu.ws_id(), name), "name": name,
            "type": ML + "/workspaces/datastores",
            "properties": {"datastoreType": "AzureBlob", "accountName": emu.seed["storage_account"],
                           "containerName": cont, "endpoint": "core.windows.net", "protocol": "https",
                           "isDefault": name == "workspaceblobstore",
                           "serviceDataAccessAuthIdentity": "None",
                           "credentials": {"credentialsType": "AccountKey"},
                           "description": "Azurite blob endpoint: %s (proxy: %s)" % (emu.blob_endpoint, emu.public_blob),
                           "tags": {}, "properties": {}}}


def datastores(h, segs, doc):
    emu, m = h.emu, h.command
    if not hasattr(emu, "extra_datastores"):
        emu.extra_datastores = {}
    names = list(datastore_defs(emu)) + list(emu.extra_datastores)
    if not segs:
        return h.send(200, {"value": [datastore_view(emu, n) for n in names]})
    name = segs[0]
    if len(segs) == 1 and m == "PUT":
        p = (doc or {}).get("properties") or {}
        emu.extra_datastores[name] = {"containerName": p.get("containerName", name)}
        return h.send(201, datastore_view(emu, name))
    if name not in names:
        raise not_found("datastore", name)
    if len(segs) == 1 and m == "GET":
        return h.send(200, datastore_view(emu, name))
    if len(segs) == 2 and segs[1] == "listSecrets" and m == "POST":
        return h.send(200, {"secretsType": "AccountKey", "key": emu.seed["storage_key"]})
    raise HttpError(404, "NotFound", "/".join(segs))


# ---- jobs -------------------------------------------------------------------------------------
def resolve_compute(emu, cid):
    if not cid:
        raise HttpError(400, "UserError", "computeId is required for a command job.")
    name = cid.rstrip("/").split("/")[-1]
    if "/" in cid and not cid.lower().startswith((emu.ws_id() + "/computes/").lower()):
        raise HttpError(400, "UserError", "computeId '%s' is not a compute of this workspace." % cid)
    c = emu.computes.get(name.lower())
    if c is None:
        raise HttpError(400, "UserError", "Compute '%s' was not found in workspace '%s'."
                        % (name, emu.seed["workspace_name"]))
    if c["state"] not in ("Succeeded", "Updating"):
        raise HttpError(400, "UserError", "Compute '%s' is in state %s and cannot run jobs." % (name, c["state"]))
    return c


def resolve_asset(emu, kind, aid, what):
    m = re.match(r"^(?:azureml:)?/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/"
                 r"workspaces/[^/]+/%s/([^/]+)/versions/([^/]+)$" % kind, aid or "", re.I)
    if not m:
        m = re.match(r"^azureml:([^:/]+):([^:/]+)$", aid or "")
    store = emu.code_versions if kind == "codes" else emu.env_versions
    if not m or (m.group(1), m.group(2)) not in store:
        raise HttpError(400, "UserError", "%s '%s' was not found." % (what, aid))
    return store[(m.group(1), m.group(2))]


def jobs(h, segs, doc):
    import emu_jobs
    emu, m = h.emu, h.command
    if not segs:
        if m != "GET":
            raise HttpError(405, "MethodNotAllowed", m)
        with emu.lock:
            return h.send(200, {"value": [jb.view() for jb in emu.jobs.values()]})
    name = segs[0]
    key = name.lower()
    with emu.lock:
        jb = emu.jobs.get(key)
        if len(segs) == 2 and segs[1] == "cancel" and m == "POST":
            if jb is None:
                raise not_found("job", name)
            if jb.status not in TERMINAL:
                emu.runner.cancel(jb)
            base = "%s/subscriptions/%s/providers/%s/locations/%s" % (emu.base_url(), emu.sub, ML, emu.seed["location"])
            return h.send(202, None, {"Location": "%s/mfeOperationResults/jc:%s?api-version=%s"
                                      % (base, urllib.parse.quote(jb.name), API_VERSION),
                                      "Retry-After": str(emu.cfg["retry_after"])})
        if len(segs) != 1:
            raise HttpError(404, "NotFound", "/".join(segs))
        if m == "GET":
            if jb is None:
                raise not_found("job", name)
            return h.send(200, jb.view())
        if m == "DELETE":
            if jb is None:
                return h.send(204)
            emu.runner.cancel(jb)
            del emu.jobs[key]
            return h.send(202, None, {"Location": emu.base_url() + h.rec["path"] + "?api-version=" + API_VERSION,
                                      "Retry-After": str(emu.cfg["retry_after"])})
        if m != "PUT":
            raise HttpError(405, "MethodNotAllowed", m)
        if not NAME_RX.match(name):
            raise HttpError(400, "UserError", "Job name '%s' is not valid." % name)
        if jb is not None:  # PUT is idempotent: the job that exists, never a second run
            return h.send(200, jb.view())
        p = (doc or {}).get("properties") or {}
        if p.get("jobType") != "Command":
            raise HttpError(400, "UserError", "Only command jobs are emulated (jobType '%s')." % p.get("jobType"))
        if not p.get("command"):
            raise HttpError(400, "UserError", "command is required for a command job.")
        c = resolve_compute(emu, p.get("computeId"))
        n = int((p.get("resources") or {}).get("instanceCount") or 1)
        if c["type"] == "AmlCompute":
            mx = c["props"].get("scaleSettings", {}).get("maxNodeCount", 1)
            if n > mx:
                raise HttpError(400, "UserError", "The job asks %d nodes but compute '%s' has at most %d."
                                % (n, c["name"], mx))
        elif c["type"] == "ComputeInstance":
            if c.get("ci_state") != "Running":
                raise HttpError(400, "UserError", "Compute instance '%s' is %s: start it to run jobs."
                                % (c["name"], c.get("ci_state")))
            if n != 1:
                raise HttpError(400, "UserError", "A compute instance runs single-node jobs only.")
        code = resolve_asset(emu, "codes", p["codeId"], "Code") if p.get("codeId") else None
        env = p.get("environmentId")
        if env and not env.startswith("azureml://registries/"):
            resolve_asset(emu, "environments", env, "Environment")
        elif not env:
            raise HttpError(400, "UserError", "environmentId is required for a command job.")
        principal = emu.check_arm_token(h.headers)["principal"]
        jb = emu_jobs.Job(emu, name, doc, c, code, principal)
        emu.jobs[key] = jb
        emu.runner.start(jb)
        return h.send(201, jb.view())


def mfe_operation(h, which, oid):
    emu = h.emu
    if oid.startswith("jc:"):
        jb = emu.jobs.get(urllib.parse.unquote(oid[3:]).lower())
        if jb is None or jb.status in TERMINAL:
            return h.send(200)
        return h.send(202, None, {"Location": emu.base_url() + h.rec["path"] + "?api-version=" + API_VERSION,
                                  "Retry-After": str(emu.cfg["retry_after"])})
    raise HttpError(404, "ResourceNotFound", "Operation '%s' was not found." % oid)
