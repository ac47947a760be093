#!/usr/bin/env python3
"""The emulated Data Lake Analytics held to Microsoft's job.json (2016-11-01), against a
running emulator (tests/azfix.c starts it; the AZFIX_* environment names it).  There is no
official npm client for the ADLA job plane in the lockfile, so the fidelity checks are:
  * the three official examples (Adla_Job_Create, Adla_Job_Get, Adla_Job_Cancel): each
    example's own request and response bodies pass our validator; the Create example's
    request is sent to the emulator (accepted, 200) and its answer, and the Get of that job,
    are valid against the swagger response schemas; the Cancel example's call answers 200;
  * bodies that break the schema (no name, a wrong type, properties without script) get 400;
  * GET /Jobs answers a JobInfoListResult valid against its schema;
  * the WebHDFS store: MKDIRS, the two-step CREATE (307 Location, then the data), OPEN with
    its redirect, LISTSTATUS, GETFILESTATUS, DELETE, FileNotFoundException as RemoteException.
Prints "ok - what" / "not ok - what: why" per check; exit 1 if any failed."""
import http.client
import json
import os
import ssl
import sys
sys.dont_write_bytecode = True
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import swagger_validate  # noqa: E402

E = os.environ
DIR = E["AZFIX_DIR"]
CA = os.path.join(DIR, "ca.pem")
PORT = int(open(os.path.join(DIR, "port")).read())
JOB_PORT = int(open(os.path.join(DIR, "adla_port")).read())
STORE_PORT = int(open(os.path.join(DIR, "adls_port")).read())
CTX = ssl.create_default_context(cafile=CA)
SPEC_DIR = os.path.join(DIR, "specs", "specification", "datalake-analytics", "data-plane",
                        "Microsoft.DataLakeAnalytics", "stable", "2016-11-01")
failed = 0


def check(what, cond, why=""):
    global failed
    if cond:
        print("ok - " + what)
    else:
        failed += 1
        print("not ok - %s: %s" % (what, why))
    sys.stdout.flush()
    return cond


def req(port, method, path, body=None, token=None, ctype="application/json", raw=False):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=CTX, timeout=30)
    h = {}
    if token:
        h["Authorization"] = "Bearer " + token
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h["Content-Type"] = ctype
    c.request(method, path, data, h)
    r = c.getresponse()
    out = r.read()
    hdrs = dict(r.getheaders())
    c.close()
    if raw:
        return r.status, out, hdrs
    try:
        return r.status, (json.loads(out) if out else None), hdrs
    except ValueError:
        return r.status, out, hdrs


def token(scope):
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": E["AZFIX_CLIENT_ID"],
                                   "client_secret": E["AZFIX_CLIENT_SECRET"], "scope": scope}).encode()
    st, b, _ = req(PORT, "POST", "/%s/oauth2/v2.0/token" % E["AZFIX_TENANT"], form,
                   ctype="application/x-www-form-urlencoded")
    assert st == 200, b
    return b["access_token"]


def main():
    spec = swagger_validate.Spec([os.path.join(SPEC_DIR, "job.json")])
    tok = token("https://datalake.azure.net/.default")
    arm_tok = token("https://management.azure.com/.default")
    av = "api-version=2016-11-01"

    st, b, _ = req(JOB_PORT, "GET", "/Jobs?" + av, token=arm_tok)
    check("a token for ARM is refused by the job service", st == 401, "status %s" % st)

    ex = {}
    for n in ("Adla_Job_Create", "Adla_Job_Get", "Adla_Job_Cancel"):
        with open(os.path.join(SPEC_DIR, "examples", n + ".json")) as f:
            ex[n] = json.load(f)
    m, tmpl, op_create = spec.operation_by_id("Job_Create")
    _, _, op_get = spec.operation_by_id("Job_Get")
    _, _, op_list = spec.operation_by_id("Job_List")
    _, _, op_cancel = spec.operation_by_id("Job_Cancel")
    # the examples' own bodies against the validator
    c = ex["Adla_Job_Create"]
    errs = spec.validate_request(op_create, c["parameters"]["parameters"])
    check("Adla_Job_Create's request body is valid", not errs, errs)
    errs = spec.validate_response(op_create, 200, c["responses"]["200"]["body"])
    check("Adla_Job_Create's response body is valid", not errs, errs)
    g = ex["Adla_Job_Get"]
    errs = spec.validate_response(op_get, 200, g["responses"]["200"]["body"])
    check("Adla_Job_Get's response body is valid", not errs, errs)

    # replay Create with the example's job id and body
    jid = c["parameters"]["jobIdentity"]
    st, b, _ = req(JOB_PORT, "PUT", "/Jobs/%s?%s" % (jid, av), c["parameters"]["parameters"], tok)
    # the example's script is "test_script": accepted as a job (it then fails to compile)
    check("Adla_Job_Create replayed: 200", st == 200, "%s %s" % (st, b))
    errs = spec.validate_response(op_create, 200, b) if st == 200 else ["no body"]
    check("Job_Create's answer is a valid JobInformation", not errs, errs)
    check("Job_Create's answer names the job", isinstance(b, dict) and b.get("jobId") == jid, b)
    st, b, _ = req(JOB_PORT, "PUT", "/Jobs/%s?%s" % (jid, av), c["parameters"]["parameters"], tok)
    check("a second PUT of the same job id is 409", st == 409, st)

    # Get until it ends; the example script does not compile: Failed with a syntax error
    end = time.time() + 20
    while True:
        st, b, _ = req(JOB_PORT, "GET", "/Jobs/%s?%s" % (g["parameters"]["jobIdentity"], av), token=tok)
        if st != 200 or b.get("state") == "Ended" or time.time() > end:
            break
        time.sleep(0.1)
    check("Adla_Job_Get replayed: 200", st == 200, st)
    errs = spec.validate_response(op_get, 200, b)
    check("Job_Get's answer is a valid JobInformation", not errs, errs)
    check("the example's script ends Failed with E_CSC_USER_SYNTAXERROR",
          b.get("result") == "Failed" and b.get("errorMessage")
          and b["errorMessage"][0].get("errorId") == "E_CSC_USER_SYNTAXERROR"
          and b["errorMessage"][0].get("lineNumber") == 1, b.get("errorMessage"))
    check("the job's states went through Compiling to Ended",
          [r["newState"] for r in b.get("stateAuditRecords", [])][:2] == ["Accepted", "Compiling"]
          and b["stateAuditRecords"][-1]["newState"] == "Ended", b.get("stateAuditRecords"))

    k = ex["Adla_Job_Cancel"]
    st, b, _ = req(JOB_PORT, "POST", "/Jobs/%s/CancelJob?%s" % (k["parameters"]["jobIdentity"], av), token=tok)
    check("Adla_Job_Cancel replayed: %s" % list(k["responses"]), str(st) in k["responses"], st)
    check("Job_Cancel is a declared operation", op_cancel is not None)

    st, b, _ = req(JOB_PORT, "GET", "/Jobs?%s&%%24top=5" % av, token=tok)
    errs = spec.validate_response(op_list, 200, b) if st == 200 else [st]
    check("Job_List answers a valid JobInfoListResult", not errs and b["value"], errs)

    bad = [({"type": "USql", "properties": {"type": "USql", "script": "x"}}, "no name"),
           ({"name": "n", "type": "USql", "degreeOfParallelism": "two",
             "properties": {"type": "USql", "script": "x"}}, "a string degreeOfParallelism"),
           ({"name": "n", "type": "USql", "properties": {"type": "USql"}}, "no script")]
    for i, (body, what) in enumerate(bad):
        st, b, _ = req(JOB_PORT, "PUT", "/Jobs/0000000%d-0000-4000-8000-000000000000?%s" % (i, av), body, tok)
        check("a job body with %s is refused (400)" % what, st == 400, "%s %s" % (st, b))
    st, b, _ = req(JOB_PORT, "PUT", "/Jobs/00000009-0000-4000-8000-000000000000?" + av,
                   {"name": "n", "type": "USql", "degreeOfParallelism": 31,
                    "properties": {"type": "USql", "script": "x"}}, tok)
    check("more AUs than the account's maxDegreeOfParallelism: 400", st == 400, (st, b))
    st, b, _ = req(JOB_PORT, "PUT", "/Jobs/not-a-guid?" + av,
                   {"name": "n", "type": "USql", "properties": {"type": "USql", "script": "x"}}, tok)
    check("a job id that is no GUID is refused", st == 400, st)

    # the store
    base = "/webhdfs/v1/selftest"
    st, b, _ = req(STORE_PORT, "PUT", base + "/d?op=MKDIRS", token=tok)
    check("MKDIRS", st == 200 and b == {"boolean": True}, (st, b))
    st, b, h = req(STORE_PORT, "PUT", base + "/d/f.txt?op=CREATE&overwrite=true", token=tok)
    loc = h.get("Location", "")
    check("CREATE without data redirects (307 Location)", st == 307 and loc.startswith("https://127.0.0.1:"), (st, h))
    u = urllib.parse.urlsplit(loc)
    st, b, _ = req(STORE_PORT, "PUT", u.path + "?" + u.query, b"hello\n", tok, ctype="application/octet-stream")
    check("CREATE at the Location takes the data (201)", st == 201, st)
    st, b, _ = req(STORE_PORT, "PUT", base + "/d/f.txt?op=CREATE&write=true", b"again", tok,
                   ctype="application/octet-stream")
    check("CREATE without overwrite of an existing file: FileAlreadyExistsException",
          st == 403 and b["RemoteException"]["exception"] == "FileAlreadyExistsException", (st, b))
    st, b, h = req(STORE_PORT, "GET", base + "/d/f.txt?op=OPEN", token=tok, raw=True)
    check("OPEN redirects (307)", st == 307 and "Location" in h, st)
    st, b, _ = req(STORE_PORT, "GET", base + "/d/f.txt?op=OPEN&read=true", token=tok, raw=True)
    check("OPEN read=true gives the bytes", st == 200 and b == b"hello\n", (st, b))
    st, b, _ = req(STORE_PORT, "GET", base + "/d?op=LISTSTATUS", token=tok)
    fs = b.get("FileStatuses", {}).get("FileStatus", []) if st == 200 else []
    check("LISTSTATUS lists the file", [(f["pathSuffix"], f["type"], f["length"]) for f in fs] == [("f.txt", "FILE", 6)], b)
    st, b, _ = req(STORE_PORT, "GET", base + "/d/f.txt?op=GETFILESTATUS", token=tok)
    check("GETFILESTATUS", st == 200 and b["FileStatus"]["type"] == "FILE", b)
    st, b, _ = req(STORE_PORT, "GET", base + "/nope?op=LISTSTATUS", token=tok)
    check("a missing path: 404 FileNotFoundException",
          st == 404 and b["RemoteException"]["exception"] == "FileNotFoundException", (st, b))
    st, b, _ = req(STORE_PORT, "GET", "/webhdfs/v1/../etc?op=LISTSTATUS", token=tok)
    check("a path with .. is refused", st in (400, 404), st)
    st, b, _ = req(STORE_PORT, "DELETE", base + "?op=DELETE&recursive=true", token=tok)
    check("DELETE recursive", st == 200 and b == {"boolean": True}, (st, b))
    st, b, _ = req(STORE_PORT, "GET", base + "?op=LISTSTATUS", token=tok)
    check("deleted", st == 404, st)
    st, b, _ = req(STORE_PORT, "GET", "/webhdfs/v1/?op=LISTSTATUS", token=arm_tok)
    check("the store refuses an ARM token", st == 401, st)
    print("%d failed" % failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
