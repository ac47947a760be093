#!/usr/bin/env python3
"""Every official example in tests/emulators/specs (a bundle of shared/specs) against the
swagger and the running emulator (AZFIX_* environment, as selftest.py):

1. the validator accepts Microsoft's own payloads: each example's request body validates
   against the operation's request schema, each response body against its response schema;
2. each example's request is replayed to the emulator (path parameters of our seed workspace,
   the compute/job/code renamed per example, its prerequisites created first, resource ids in the
   body that name other resources replaced by ones the replay made) and the emulator's answer
   must have a status the example lists and a body valid against the swagger's response schema.

Operations whose schema is not here (mfe.json: jobs, codes, datastores; see README) are still
replayed and held to the example's status codes; those are counted apart and said so."""
import glob
import json
import os
import sys
sys.dont_write_bytecode = True  # the source tree may be read-only (distcheck) and stays clean

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import selftest as st  # noqa: E402  (its request helpers and the fixture's environment)
import swagger_validate  # noqa: E402
import emu_specs  # noqa: E402

ROOT = emu_specs.unpack(os.path.join(st.DIR, "specs"))  # where the emulator unpacked them
STABLE = os.path.dirname(ROOT)
SPECS = [p for p in (os.path.join(ROOT, "machineLearningServices.json"), os.path.join(ROOT, "mfe.json"))
         if os.path.exists(p)]
spec = swagger_validate.Spec(SPECS)
counts = {"examples": 0, "own_valid": 0, "replayed": 0, "replay_valid": 0, "no_schema": 0}

# examples the 2025-12-01 swagger files here do not reference (their spec is mfe.json, or the
# copy is of another version): operation by path template
FALLBACK = {
    "Compute/start.json": ("POST", "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
                           "Microsoft.MachineLearningServices/workspaces/{workspaceName}/computes/{computeName}/start"),
    "Job/CommandJob/createOrUpdate.json": ("PUT", "{ws}/jobs/{id}"),
    "Job/CommandJob/get.json": ("GET", "{ws}/jobs/{id}"),
    "Job/cancel.json": ("POST", "{ws}/jobs/{id}/cancel"),
    "Workspace/CodeContainer/createOrUpdate.json": ("PUT", "{ws}/codes/{name}"),
    "Workspace/CodeVersion/createOrUpdate.json": ("PUT", "{ws}/codes/{name}/versions/{version}"),
    "Workspace/CodeVersion/get.json": ("GET", "{ws}/codes/{name}/versions/{version}"),
    "Workspace/CodeVersion/createOrGetStartPendingUpload.json": ("POST", "{ws}/codes/{name}/versions/{version}/startPendingUpload"),
    "Datastore/AzureBlobWAccountKey/createOrUpdate.json": ("PUT", "{ws}/datastores/{name}"),
    "Datastore/get.json": ("GET", "{ws}/datastores/{name}"),
    "Datastore/listSecrets.json": ("POST", "{ws}/datastores/{name}/listSecrets"),
}
WS_T = ("/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
        "Microsoft.MachineLearningServices/workspaces/{workspaceName}")


def example_ops():
    """{example path: (method, template, op or None)} from x-ms-examples, then FALLBACK."""
    out = {}
    for m, rx, tmpl, op in spec.ops:
        for ex in (op.get("x-ms-examples") or {}).values():
            p = os.path.normpath(os.path.join(os.path.dirname(op["_doc"]), ex["$ref"]))
            out[p] = (m, tmpl, op)
    for f in sorted(glob.glob(os.path.join(STABLE, "*", "examples", "**", "*.json"), recursive=True)):
        if f in out:
            continue
        rel = f.split("/examples/", 1)[1]
        if rel in FALLBACK:
            m, t = FALLBACK[rel]
            t = t.replace("{ws}", WS_T)
            op = None
            for mm, rx, tmpl, o in spec.ops:
                if mm == m and tmpl.lower() == t.lower():
                    op = o
            out[f] = (m, t, op)
        else:
            out[f] = (None, None, None)
    return out


def body_param_name(op, ex):
    if op is not None:
        bp = spec.body_param(op)
        return bp["name"] if bp else None
    for k in ("body", "parameters"):
        if isinstance(ex["parameters"].get(k), dict):
            return k
    return None


TOK = None


def arm(method, path, body=None, query=""):
    return st.req(method, path + st.AV + query, body, token=TOK)


def settle_compute(name, want=("Succeeded", "Failed")):
    def ok():
        s, _, j = arm("GET", st.WSP + "/computes/" + name)
        return s == 200 and j["properties"]["provisioningState"] in want and j
    return st.wait(ok, 20)


def ensure_compute(name, kind):
    bodies = {
        "aml": st.aml_body(mx=1),
        "ci": {"location": "westeurope", "properties": {"computeType": "ComputeInstance",
                                                         "properties": {"vmSize": "STANDARD_DS3_V2"}}},
        "aks": {"location": "westeurope", "properties": {
            "computeType": "AKS", "resourceId": "/subscriptions/%s/resourceGroups/%s/providers/"
            "Microsoft.ContainerService/managedClusters/aks-%s" % (st.SUB, st.RG, name)}},
    }
    s, _, j = arm("PUT", st.WSP + "/computes/" + name, bodies[kind])
    assert s in (200, 201), (s, j)
    settle_compute(name)


def prerequisites(rel, names):
    """Create what the example's request needs; returns substitutions for its body."""
    c = names["computeName"]
    if rel in ("Compute/get/AmlCompute.json", "Compute/listNodes.json", "Compute/delete.json"):
        ensure_compute(c, "aml")
    elif rel in ("Compute/get/ComputeInstance.json", "Compute/stop.json", "Compute/restart.json"):
        ensure_compute(c, "ci")
    elif rel == "Compute/start.json":
        ensure_compute(c, "ci")
        arm("POST", st.WSP + "/computes/%s/stop" % c)
        st.wait(lambda: arm("GET", st.WSP + "/computes/" + c)[2]["properties"]["properties"]["state"] == "Stopped", 20)
    elif rel == "Compute/listKeys.json":
        ensure_compute(c, "aks")
    subs = {}
    if rel.startswith("Job/"):
        ensure_compute("replay-jobs", "aml")
        code, _ = st.upload_code(TOK, "replay-code", {"run.sh": b"echo replay\n"})
        subs = {"computeId": st.WSP + "/computes/replay-jobs", "codeId": code, "environmentId": st.env_id(TOK)}
        if rel != "Job/CommandJob/createOrUpdate.json":
            arm("PUT", st.WSP + "/jobs/" + names["id"], {"properties": {
                "jobType": "Command", "command": "sleep 30", "computeId": subs["computeId"],
                "codeId": code, "environmentId": subs["environmentId"]}})
    if rel in ("Datastore/get.json", "Datastore/listSecrets.json"):
        arm("PUT", st.WSP + "/datastores/" + names["name"], {"properties": {
            "datastoreType": "AzureBlob", "accountName": "devstoreaccount1", "containerName": "replay-ds",
            "credentials": {"credentialsType": "AccountKey", "secrets": {"secretsType": "AccountKey", "key": "x"}}}})
    if rel == "Workspace/CodeVersion/get.json":
        arm("PUT", st.WSP + "/codes/%s/versions/%s" % (names["name"], names["version"]),
            {"properties": {"codeUri": "https://127.0.0.1/replay/"}})
    return subs


def main():
    global TOK
    TOK = st.arm_token()
    # a clean workspace with room for every example's computes
    st.admin("POST", "/reset", {"state": True})
    st.admin("POST", "/config", {"lro_ms": 150, "job_phase_ms": 50, "core_quota": 1000})
    exs = example_ops()
    n = 0
    for f, (method, tmpl, op) in sorted(exs.items()):
        if not os.path.exists(f):
            continue
        rel = f.split("/examples/", 1)[1]
        ex = json.load(open(f))
        counts["examples"] += 1
        if method is None:
            st.check("example %s maps to an operation" % rel, False, "no operation references it")
            continue
        bname = body_param_name(op, ex)
        req_body = ex["parameters"].get(bname) if bname else None
        # 1. Microsoft's own payloads against our validator
        errs = []
        if op is not None:
            if req_body is not None:
                errs += spec.validate_request(op, req_body)
            for code, r in ex["responses"].items():
                if "body" in r:
                    errs += ["response %s: %s" % (code, e) for e in spec.validate_response(op, int(code), r["body"])]
            if st.check("validator accepts the example's own payloads: %s" % rel, not errs, errs[:5]):
                counts["own_valid"] += 1
        # 2. replay to the emulator
        n += 1
        names = {"subscriptionId": st.SUB, "resourceGroupName": st.RG, "workspaceName": st.WS,
                 "computeName": "replay-c%d" % n, "id": "replay-job-%d" % n, "name": ex["parameters"].get("name"),
                 "version": ex["parameters"].get("version")}
        if rel.startswith("Workspace/Code"):
            names["name"] = "replay-%s" % ex["parameters"]["name"]
        try:
            subs = prerequisites(rel, names)
        except AssertionError as e:
            st.check("prerequisites of %s" % rel, False, str(e))
            continue
        path = tmpl
        for k, v in names.items():
            path = path.replace("{%s}" % k, str(v))
        body = json.loads(json.dumps(req_body)) if req_body is not None else None
        if body and subs:
            body["properties"].update(subs)
        q = ""
        if "underlyingResourceAction" in ex["parameters"]:
            q = "&underlyingResourceAction=" + ex["parameters"]["underlyingResourceAction"]
        status, hdrs, resp = arm(method, path, body, q)
        counts["replayed"] += 1
        ok_status = str(status) in ex["responses"]
        verrs = []
        if op is not None:
            verrs = spec.validate_response(op, status, resp)
        elif ok_status:
            counts["no_schema"] += 1
        good = ok_status and not verrs
        if good and op is not None:
            counts["replay_valid"] += 1
        st.check("replay %s -> %d%s" % (rel, status, "" if op is not None else " (no schema here: status only)"),
                 good, {"status": status, "expected": list(ex["responses"]), "errors": verrs[:5],
                        "body": resp if not good else None})
        # LRO headers as the examples show them
        for code, r in ex["responses"].items():
            if code == str(status):
                for hname in (r.get("headers") or {}):
                    st.check("replay %s: header %s" % (rel, hname), hname.lower() in hdrs, list(hdrs))
    # every compute answer the emulator can give, held to the schema by state (GET over time)
    for name in list(arm("GET", st.WSP + "/computes")[2]["value"]):
        errs = spec.validate_response(spec.find_operation("GET", st.WSP + "/computes/x"), 200, name)
        st.check("compute %s (%s, %s) validates" % (name["name"], name["properties"]["computeType"],
                                                    name["properties"]["provisioningState"]), not errs, errs[:5])
    lst = arm("GET", st.WSP + "/computes")[2]
    st.check("compute list validates", not spec.validate_response(spec.find_operation("GET", st.WSP + "/computes"),
                                                                    200, lst))
    # leave the workspace as clean as it was found (the request log and bodies stay)
    st.admin("POST", "/reset", {"state": True, "log": False})
    st.admin("POST", "/config", {"lro_ms": 300, "job_phase_ms": 100, "core_quota": 24})
    print("replay_examples: %(examples)d examples; own payloads valid: %(own_valid)d; replayed: %(replayed)d, "
          "valid against the swagger: %(replay_valid)d, status-only (schema not here): %(no_schema)d; "
          "unresolved external refs: " % counts + ", ".join(sorted(spec.unresolved)))
    print("selftest: %d failed" % st.failed)
    sys.exit(1 if st.failed else 0)


if __name__ == "__main__":
    main()
