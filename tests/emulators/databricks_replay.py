#!/usr/bin/env python3
"""Replays the official Databricks examples against the running emulator (tests/test_databricks).

    databricks_replay.py FIXTURE_DIR        (environment: tests/azfix.c's FX.env)

* Microsoft.Databricks WorkspaceGetParameters.json (2024-05-01): the GET with the example's
  api-version on our workspace must answer a status the example lists, with a body of the
  example's shape (every property of the example's body, recursively, present with the same
  JSON type).
* Jobs 2.1 OpenAPI: the RunSubmitSettings example (its `example` values: tasks, run_name,
  timeout_seconds, idempotency_token, git_source) must validate against the spec's own request
  schema; each example task, submitted on its own (the emulator runs one-task submits) on our
  cluster, must be accepted; runs/get, runs/get-output and runs/cancel must answer, and no answer
  of the service may be marked response_invalid in the request log.
Prints "ok - ..." / "not ok - ..." lines and "N passed, M failed".
"""
import json
import os
import ssl
import sys
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import swagger_validate  # noqa: E402

E = os.environ
FIX = sys.argv[1]
CTX = ssl.create_default_context(cafile=os.path.join(FIX, "ca.pem"))
res = {"ok": 0, "bad": 0}


def check(what, cond, detail=None):
    res["ok" if cond else "bad"] += 1
    print("%s - %s%s" % ("ok" if cond else "not ok", what, "" if cond or detail is None else ": %r" % (detail,)))
    return cond


def call(method, url, body=None, headers=None, form=False):
    data = None
    h = dict(headers or {})
    if body is not None:
        data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
        h["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
    rq = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(rq, context=CTX, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def shape(example, ours, where, errs):
    if isinstance(example, dict):
        if not isinstance(ours, dict):
            errs.append("%s: not an object" % where)
            return
        for k, v in example.items():
            if k not in ours:
                errs.append("%s.%s: missing" % (where, k))
            else:
                shape(v, ours[k], "%s.%s" % (where, k), errs)
    elif isinstance(example, list):
        if not isinstance(ours, list):
            errs.append("%s: not an array" % where)
        elif example and ours:
            shape(example[0], ours[0], where + "[0]", errs)
    elif isinstance(example, bool) != isinstance(ours, bool) or \
            isinstance(example, str) != isinstance(ours, str) or \
            isinstance(example, (int, float)) != isinstance(ours, (int, float)):
        errs.append("%s: %s instead of %s" % (where, type(ours).__name__, type(example).__name__))


def main():
    root = os.path.join(FIX, "specs", "databricks")
    ex_path = os.path.join(root, "specification/databricks/resource-manager/Microsoft.Databricks/"
                           "Databricks/stable/2024-05-01/examples/WorkspaceGetParameters.json")
    ex = json.load(open(ex_path))
    st, tok = call("POST", "%s/%s/oauth2/v2.0/token" % (E["AZFIX_AAD"], E["AZFIX_TENANT"]),
                   {"grant_type": "client_credentials", "client_id": E["AZFIX_CLIENT_ID"],
                    "client_secret": E["AZFIX_CLIENT_SECRET"],
                    "scope": "https://management.azure.com/.default"}, form=True)
    if not check("ARM token from the emulator's AAD", st == 200, st):
        return
    arm = {"Authorization": "Bearer " + tok["access_token"]}
    import emu_svc_databricks as svc
    ws = svc.DEFAULTS["workspace_name"]
    url = "%s/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Databricks/workspaces/%s?api-version=%s" % (
        E["AZFIX_ARM"], E["AZFIX_SUBSCRIPTION"], E["AZFIX_RESOURCE_GROUP"], ws, ex["parameters"]["api-version"])
    st, body = call("GET", url, headers=arm)
    check("WorkspaceGetParameters: status listed by the example", str(st) in ex["responses"], st)
    errs = []
    shape(ex["responses"]["200"]["body"], body, "body", errs)
    check("WorkspaceGetParameters: the body has the example's shape", not errs, errs[:5])
    wurl = (body or {}).get("properties", {}).get("workspaceUrl", "")
    check("workspaceUrl is host:port of the data plane", wurl.startswith("127.0.0.1:"), wurl)

    jobs = os.path.join(root, "databricks-jobs/schema/original-jobs-2.1-azure.yaml.json")
    spec = swagger_validate.Spec([])
    spec._load(jobs)
    doc = spec.docs[os.path.abspath(jobs)]
    props = doc["components"]["schemas"]["RunSubmitSettings"]["properties"]
    example = {k: v["example"] for k, v in props.items() if "example" in v}
    check("RunSubmitSettings example gathered (tasks, run_name, ...)", "tasks" in example and "run_name" in example,
          sorted(example))
    sch = doc["paths"]["/2.1/jobs/runs/submit"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    errs = spec.validate(jobs, sch, example, "body", request=True)
    check("the spec's own runs/submit example validates against its request schema", not errs, errs[:5])

    base = "https://" + wurl + "/api/"
    pat = {"Authorization": "Bearer " + svc.DEFAULTS["token"]}
    cluster = svc.DEFAULTS["clusters"][0]["cluster_id"]
    for i, t in enumerate(example.get("tasks", [])):
        t = dict(t, depends_on=[])
        if "existing_cluster_id" in t:
            t["existing_cluster_id"] = cluster
        b = {"run_name": example["run_name"], "timeout_seconds": example.get("timeout_seconds", 60),
             "tasks": [t]}
        st, r = call("POST", base + "2.1/jobs/runs/submit", b, headers=pat)
        if not check("runs/submit of example task %s accepted" % t.get("task_key"), st == 200, r):
            continue
        rid = r["run_id"]
        st, g = call("GET", base + "2.1/jobs/runs/get?run_id=%d" % rid, headers=pat)
        check("runs/get of it", st == 200 and g.get("run_id") == rid, st)
        st, c = call("POST", base + "2.1/jobs/runs/cancel", {"run_id": rid}, headers=pat)
        check("runs/cancel of it", st == 200, c)
        st, o = call("GET", base + "2.1/jobs/runs/get-output?run_id=%d" % rid, headers=pat)
        check("runs/get-output of it", st == 200 and "metadata" in o, st)
    st, bad = call("POST", base + "2.1/jobs/runs/submit", {"run_name": 7, "tasks": [{"task_key": 1}]}, headers=pat)
    check("a body against the schema is refused (400 INVALID_PARAMETER_VALUE)",
          st == 400 and bad.get("error_code") == "INVALID_PARAMETER_VALUE", bad)
    st, log = call("GET", "https://127.0.0.1:%s/_emulator/requests" % open(os.path.join(FIX, "port")).read().strip())
    invalid = [r for r in log if r.get("response_invalid")]
    check("no answer of the service failed its response schema", st == 200 and not invalid, invalid[:3])


main()
print("databricks_replay.py: %d passed, %d failed" % (res["ok"], res["bad"]))
sys.exit(1 if res["bad"] or not res["ok"] else 0)
