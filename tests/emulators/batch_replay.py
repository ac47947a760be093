"""Replays the official Azure Batch examples (tests/emulators/specs/batch.json, the files of
/work/shared/specs/batch with their upstream paths) against a running emulator: each example's
request must be accepted with a status the example lists, and the answer must have the
example's shape (every property of the example's response present with the same JSON type,
recursively; arrays by their first element).  There is no Batch swagger in shared/specs, so
the examples are the contract.

    python3 batch_replay.py --dir FIXTURE_DIR      (the emulator's --dir: ports, CA)
"""
import argparse
import json
import os
import ssl
import sys
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DP = "specification/batch/data-plane/Batch/examples/2025-06-01/"
RM = "specification/batch/resource-manager/Microsoft.Batch/Batch/stable/2025-06-01/examples/"
fails = 0


def check(what, ok, detail=""):
    global fails
    print("%s - %s%s" % ("ok" if ok else "not ok", what, "" if ok else ": " + str(detail)[:400]))
    if not ok:
        fails += 1


def shape(ex, got, where, errs):
    if isinstance(ex, dict):
        if not isinstance(got, dict):
            errs.append("%s: not an object" % where)
            return
        for k, v in ex.items():
            if k not in got:
                errs.append("%s.%s missing" % (where, k))
            else:
                shape(v, got[k], where + "." + k, errs)
    elif isinstance(ex, list):
        if not isinstance(got, list):
            errs.append("%s: not an array" % where)
        elif ex and got:
            shape(ex[0], got[0], where + "[0]", errs)
    elif isinstance(ex, bool):
        if not isinstance(got, bool):
            errs.append("%s: not a boolean" % where)
    elif isinstance(ex, (int, float)):
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            errs.append("%s: not a number" % where)
    elif isinstance(ex, str):
        if not isinstance(got, str):
            errs.append("%s: not a string" % where)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    d = a.dir
    port = int(open(os.path.join(d, "port")).read())
    bport = int(open(os.path.join(d, "batch_port")).read())
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
    ex = json.load(open(os.path.join(HERE, "specs", "batch.json")))["files"]
    seed = json.loads(urllib.request.urlopen("https://127.0.0.1:%d/_emulator/seed" % port, context=ctx).read())
    secret = os.environ["AZFIX_CLIENT_SECRET"]

    def token(scope):
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": os.environ["AZFIX_CLIENT_ID"],
                                       "client_secret": secret, "scope": scope}).encode()
        r = urllib.request.urlopen("https://127.0.0.1:%d/%s/oauth2/v2.0/token" % (port, seed["tenant_id"]),
                                   data=body, context=ctx)
        return json.loads(r.read())["access_token"]

    def call(base, tok, method, path, body=None):
        req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
        try:
            r = urllib.request.urlopen(req, context=ctx)
            return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    arm, bt = token("https://management.azure.com/.default"), token("https://batch.core.windows.net/.default")
    A = "https://127.0.0.1:%d" % port
    B = "https://127.0.0.1:%d" % bport
    q = "?api-version=2025-06-01"
    sfx = os.urandom(3).hex()

    e = json.loads(ex[RM + "BatchAccountGet.json"])
    st, b = call(A, arm, "GET", "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Batch/batchAccounts/ctbatch%s"
                 % (seed["subscription_id"], seed["resource_group"], q))
    errs = []
    if st == 200:
        shape(e["responses"]["200"]["body"], json.loads(b), "account", errs)
    check("BatchAccountGet: %d, shape of the example" % st, str(st) in e["responses"] and not errs, errs or b[:300])

    e = json.loads(ex[DP + "Pools_CreatePool_VirtualMachineConfiguration.json"])
    pool = dict(e["parameters"]["pool"], id="ex-pool-" + sfx)
    st, b = call(B, bt, "POST", "/pools" + q, pool)
    check("Pools_CreatePool: the example's pool accepted (%d)" % st, str(st) in e["responses"], b[:300])

    # and the check that holds bodies to those shapes refuses what they do not allow
    st, b = call(B, bt, "POST", "/pools" + q, {"id": "bad-" + sfx, "vmSize": 3, "bogusProperty": 1})
    bj = json.loads(b) if b else {}
    reason = " ".join(v.get("value", "") for v in bj.get("values", []))
    check("an invalid pool body is refused: 400 InvalidRequestBody naming both properties",
          st == 400 and bj.get("code") == "InvalidRequestBody" and "pool.vmSize" in reason
          and "pool.bogusProperty" in reason, (st, b[:300]))

    jid = "ex-job-" + sfx
    st, b = call(B, bt, "POST", "/jobs" + q, {"id": jid, "poolInfo": {"poolId": "ctpool"}})
    check("a job for the examples (%d)" % st, st == 201, b[:300])
    e = json.loads(ex[DP + "Jobs_GetJob.json"])
    st, b = call(B, bt, "GET", "/jobs/%s%s" % (jid, q))
    errs = []
    body = json.loads(b) if st == 200 else {}
    exb = dict(e["responses"]["200"]["body"])
    # a completed job's fields (endTime, terminateReason, previousState*) are not there while active
    for k in ("previousState", "previousStateTransitionTime"):
        exb.pop(k, None)
    exb["executionInfo"] = {k: v for k, v in exb["executionInfo"].items() if k not in ("endTime", "terminateReason")}
    shape(exb, body, "job", errs)
    check("Jobs_GetJob: %d, shape of the example (active job)" % st, st == 200 and not errs, errs)

    e = json.loads(ex[DP + "Tasks_CreateTaskCollection_Basic.json"])
    coll = {"value": [dict(t, commandLine="echo %s" % t["id"]) for t in e["parameters"]["taskCollection"]["value"]]}
    st, b = call(B, bt, "POST", "/jobs/%s/addtaskcollection%s" % (jid, q), coll)
    errs = []
    if st == 200:
        shape(e["responses"]["200"]["body"], json.loads(b), "collection", errs)
    check("Tasks_CreateTaskCollection: %d, shape of the example" % st, st == 200 and not errs, errs or b[:300])

    e = json.loads(ex[DP + "Tasks_CreateTask_ContainerSettingsWithDataIsolation.json"])
    task = dict(e["parameters"]["task"], commandLine="/bin/sh -c 'mkdir -p d && printf 12345678901234567 > testFile.txt'")
    st, b = call(B, bt, "POST", "/jobs/%s/tasks%s" % (jid, q), task)
    check("Tasks_CreateTask (container settings, user identity): accepted (%d)" % st, str(st) in e["responses"], b[:300])

    e = json.loads(ex[DP + "Tasks_ListTasks.json"])
    import time
    def all_tasks():
        """every page of the list (odata.nextLink); the first page's status and body"""
        st, b = call(B, bt, "GET", "/jobs/%s/tasks%s" % (jid, q))
        first, out = (st, b), []
        while st == 200:
            page = json.loads(b)
            out += page.get("value", [])
            nl = page.get("odata.nextLink")
            if not nl:
                break
            st, b = call("", bt, "GET", nl)
        return first, out
    for _ in range(200):
        (st, b), tasks = all_tasks()
        if len(tasks) == 3 and all(t["state"] == "completed" for t in tasks):
            break
        time.sleep(0.05)
    check("Tasks_ListTasks: all 3 tasks listed across pages", len(tasks) == 3, [t.get("id") for t in tasks])
    errs = []
    exb = e["responses"]["200"]["body"]
    shape(exb, json.loads(b), "tasks", errs)
    check("Tasks_ListTasks: %d, shape of the example" % st, st == 200 and not errs, errs)

    e = json.loads(ex[DP + "Tasks_GetTaskFile.json"])
    st, b = call(B, bt, "GET", "/jobs/%s/tasks/%s/files/%s%s" % (jid, "taskId", urllib.parse.quote(e["parameters"]["filePath"]), q))
    check("Tasks_GetTaskFile (path wd\\\\testFile.txt): %d, 17 bytes as the example's Content-Length" % st,
          st == 200 and len(b) == int(e["responses"]["200"]["Content-Length"]), (st, b[:200]))
    call(B, bt, "DELETE", "/jobs/%s%s" % (jid, q))
    call(B, bt, "DELETE", "/pools/%s%s" % (pool["id"], q))
    print("batch_replay.py: %d failed" % fails)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
