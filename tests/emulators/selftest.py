#!/usr/bin/env python3
"""The emulator's own checks, against a running emulator + Azurite (tests/azfix.c starts them;
the AZFIX_* environment names them).  selftest.py GROUP...  (aad imds arm lro faults jobs ci blob)
Prints "ok - what" / "not ok - what: why" per check; exit 1 if any failed."""
import base64
import http.client
import json
import os
import ssl
import subprocess
import sys
sys.dont_write_bytecode = True  # the source tree may be read-only (distcheck) and stays clean
import tempfile
import time
import urllib.parse

E = os.environ
DIR = E["AZFIX_DIR"]
CA = os.path.join(DIR, "ca.pem")
PORT = int(open(os.path.join(DIR, "port")).read())
IMDS_PORT = int(open(os.path.join(DIR, "imds_port")).read())
TENANT, CID, SECRET = E["AZFIX_TENANT"], E["AZFIX_CLIENT_ID"], E["AZFIX_CLIENT_SECRET"]
SUB, RG, WS = E["AZFIX_SUBSCRIPTION"], E["AZFIX_RESOURCE_GROUP"], E["AZFIX_WORKSPACE"]
WSP = "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.MachineLearningServices/workspaces/%s" % (SUB, RG, WS)
AV = "?api-version=2025-12-01"
CTX = ssl.create_default_context(cafile=CA)
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


def req(method, path, body=None, headers=None, token=None, raw=False, port=None, tls=True):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    c = (http.client.HTTPSConnection("127.0.0.1", port or PORT, context=CTX, timeout=30) if tls
         else http.client.HTTPConnection("127.0.0.1", port, timeout=30))
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()
    if raw:
        return r.status, hdrs, data
    try:
        j = json.loads(data) if data else None
    except ValueError:
        j = data
    return r.status, hdrs, j


def token(scope="https://management.azure.com/.default", secret=SECRET, tenant=TENANT, cid=CID):
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": cid,
                                   "client_secret": secret, "scope": scope})
    return req("POST", "/%s/oauth2/v2.0/token" % tenant, form,
               {"Content-Type": "application/x-www-form-urlencoded"})


def arm_token():
    st, _, j = token()
    assert st == 200, j
    return j["access_token"]


def admin(method, path, body=None):
    st, _, j = req(method, "/_emulator" + path, body)
    assert st < 400, (st, j)
    return j


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def assertion(aud, key_file, thumb_der, exp_in=300, sub=CID):
    hdr = {"alg": "RS256", "typ": "JWT", "x5t": b64u(__import__("hashlib").sha1(thumb_der).digest())}
    now = int(time.time())
    claims = {"aud": aud, "iss": sub, "sub": sub, "jti": os.urandom(8).hex(), "nbf": now - 10,
              "exp": now + exp_in}
    si = b64u(json.dumps(hdr).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_file], input=si.encode(),
                         stdout=subprocess.PIPE, check=True).stdout
    return si + "." + b64u(sig)


def wait(pred, timeout=30.0, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


# ---- groups -----------------------------------------------------------------------------------
def g_aad():
    st, _, j = token()
    check("client secret -> token", st == 200 and j.get("token_type") == "Bearer"
          and isinstance(j.get("expires_in"), int) and j.get("access_token"), j)
    st, _, j = token(secret="wrong")
    check("wrong secret -> 401 invalid_client AADSTS7000215", st == 401 and j["error"] == "invalid_client"
          and "AADSTS7000215" in j["error_description"] and 7000215 in j["error_codes"], (st, j))
    check("the error never echoes the secret", "wrong" not in json.dumps(j), j)
    st, _, j = token(tenant="11111111-0000-0000-0000-000000000000")
    check("unknown tenant -> 400 AADSTS90002", st == 400 and "AADSTS90002" in j["error_description"], (st, j))
    st, _, j = token(cid="99999999-0000-0000-0000-000000000000")
    check("unknown client -> 400 AADSTS700016", st == 400 and "AADSTS700016" in j["error_description"], (st, j))
    st, _, j = token(scope="https://management.azure.com/")
    check("scope without /.default -> 400 invalid_scope", st == 400 and j["error"] == "invalid_scope", (st, j))
    der = subprocess.run(["openssl", "x509", "-outform", "DER", "-in", os.path.join(DIR, "sp-cert.pem")],
                         stdout=subprocess.PIPE, check=True).stdout
    aud = "https://127.0.0.1:%d/%s/oauth2/v2.0/token" % (PORT, TENANT)
    key = os.path.join(DIR, "sp-cert.pem")
    for what, a, ok in (("certificate assertion -> token", assertion(aud, key, der), True),
                        ("assertion for another audience -> 401", assertion("https://x/token", key, der), False),
                        ("expired assertion -> 401", assertion(aud, key, der, exp_in=-1000), False)):
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": CID,
                                       "scope": "https://management.azure.com/.default",
                                       "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                       "client_assertion": a})
        st, _, j = req("POST", "/%s/oauth2/v2.0/token" % TENANT, form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
        check(what, (st == 200 and j.get("access_token")) if ok else (st == 401 and j["error"] == "invalid_client"),
              (st, j))
    # a signature by another key
    with tempfile.TemporaryDirectory() as td:
        k2 = os.path.join(td, "k.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", k2],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": CID,
                                       "scope": "https://management.azure.com/.default",
                                       "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                       "client_assertion": assertion(aud, k2, der)})
        st, _, j = req("POST", "/%s/oauth2/v2.0/token" % TENANT, form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
        check("assertion signed by another key -> 401 AADSTS7000274", st == 401 and "AADSTS7000274"
              in j["error_description"], (st, j))
    # expiry by the admin API
    tok = arm_token()
    st, _, j = req("GET", WSP + AV, token=tok)
    check("token accepted by ARM", st == 200, (st, j))
    admin("POST", "/tokens/expire")
    st, _, j = req("GET", WSP + AV, token=tok)
    check("expired token -> 401 ExpiredAuthenticationToken", st == 401 and j["error"]["code"]
          == "ExpiredAuthenticationToken", (st, j))
    admin("POST", "/config", {"token_lifetime_s": 1})
    st, _, j = token()
    check("short lifetime from the admin API", st == 200 and j["expires_in"] == 1, j)
    tok = j["access_token"]
    time.sleep(1.1)
    st, _, j = req("GET", WSP + AV, token=tok)
    check("token expires by time", st == 401 and j["error"]["code"] == "ExpiredAuthenticationToken", (st, j))
    admin("POST", "/config", {"token_lifetime_s": 3599})
    st, _, j = token("https://storage.azure.com/.default")
    st2, _, j2 = req("GET", WSP + AV, token=j["access_token"])
    check("a storage token is refused by ARM (audience)", st2 == 401, (st2, j2))


def g_imds():
    q = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/"
    st, _, j = req("GET", q, port=IMDS_PORT, tls=False)
    check("IMDS without Metadata: true -> 400", st == 400 and "metadata" in j["error_description"].lower(), (st, j))
    st, _, j = req("GET", q, headers={"Metadata": "true"}, port=IMDS_PORT, tls=False)
    check("IMDS token (string expires_in/expires_on)", st == 200 and isinstance(j["expires_in"], str)
          and isinstance(j["expires_on"], str) and j["resource"] == "https://management.azure.com/", (st, j))
    st2, _, j2 = req("GET", WSP + AV, token=j["access_token"])
    check("IMDS token accepted by ARM", st2 == 200, (st2, j2))
    st, _, j = req("GET", q + "&client_id=00000000-0000-0000-0000-0000000000d1", headers={"Metadata": "true"},
                   port=IMDS_PORT, tls=False)
    check("IMDS with client_id", st == 200, (st, j))
    st, _, j = req("GET", q + "&client_id=deadbeef", headers={"Metadata": "true"}, port=IMDS_PORT, tls=False)
    check("IMDS unknown identity -> 400", st == 400, (st, j))


def g_arm():
    tok = arm_token()
    st, _, j = req("GET", WSP)
    check("no api-version -> 400 MissingApiVersionParameter", st == 400 and j["error"]["code"]
          == "MissingApiVersionParameter", (st, j))
    st, _, j = req("GET", WSP + "?api-version=2023-04-01", token=tok)
    check("wrong api-version -> 400 InvalidApiVersionParameter", st == 400 and j["error"]["code"]
          == "InvalidApiVersionParameter", (st, j))
    st, _, j = req("GET", WSP + AV)
    check("no Authorization -> 401 AuthenticationFailed", st == 401 and j["error"]["code"]
          == "AuthenticationFailed", (st, j))
    st, _, j = req("GET", WSP + AV, token="garbage")
    check("unknown token -> 401 InvalidAuthenticationToken", st == 401, (st, j))
    st, _, j = req("GET", WSP.replace(SUB, "00000000-0000-0000-0000-00000000dead") + AV, token=tok)
    check("unknown subscription -> 404 SubscriptionNotFound", st == 404 and j["error"]["code"]
          == "SubscriptionNotFound", (st, j))
    st, _, j = req("GET", WSP.replace(RG, "rg-nope") + AV, token=tok)
    check("unknown resource group -> 404 ResourceGroupNotFound", st == 404 and j["error"]["code"]
          == "ResourceGroupNotFound", (st, j))
    st, _, j = req("GET", WSP.replace("/" + WS, "/ws-nope") + AV, token=tok)
    check("unknown workspace -> 404 ResourceNotFound", st == 404 and j["error"]["code"] == "ResourceNotFound"
          and "ws-nope" in j["error"]["message"], (st, j))
    st, _, j = req("GET", WSP + "/computes/nope" + AV, token=tok)
    check("unknown compute -> 404", st == 404 and "nope" in j["error"]["message"], (st, j))
    bad = {"location": "westeurope", "properties": {"computeType": "AmlCompute",
                                                     "properties": {"vmSize": "STANDARD_D2_V2",
                                                                    "scaleSettings": {"maxNodeCount": "two"}}}}
    st, _, j = req("PUT", WSP + "/computes/badbody" + AV, bad, token=tok)
    check("body against the swagger: wrong type -> 400 naming the field", st == 400 and
          "maxNodeCount" in j["error"]["message"], (st, j))
    bad["properties"]["computeType"] = "NoSuchType"
    st, _, j = req("PUT", WSP + "/computes/badbody" + AV, bad, token=tok)
    check("unknown discriminator value -> 400", st == 400 and "NoSuchType" in j["error"]["message"], (st, j))
    st, _, j = req("PUT", WSP + "/computes/badbody" + AV, "{not json", {"Content-Type": "application/json"}, token=tok)
    check("malformed JSON -> 400 InvalidRequestContent", st == 400 and j["error"]["code"] == "InvalidRequestContent",
          (st, j))
    reqs = admin("GET", "/requests")
    check("request log marks invalid bodies", any(r.get("invalid") and "maxNodeCount" in r["invalid"] for r in reqs))
    check("request log holds no secret or token", SECRET not in json.dumps(reqs) and tok not in json.dumps(reqs))


def aml_body(vm="STANDARD_D2_V2", mx=2, mn=0, prio=None):
    p = {"vmSize": vm, "scaleSettings": {"maxNodeCount": mx, "minNodeCount": mn,
                                         "nodeIdleTimeBeforeScaleDown": "PT120S"}}
    if prio:
        p["vmPriority"] = prio
    return {"location": "westeurope", "properties": {"computeType": "AmlCompute", "properties": p}}


def poll_op(url, tok):
    u = urllib.parse.urlsplit(url)
    seen = []

    def once():
        st, h, j = req("GET", u.path + "?" + u.query, token=tok)
        seen.append(j.get("status") if isinstance(j, dict) else st)
        return j if isinstance(j, dict) and j.get("status") in ("Succeeded", "Failed", "Canceled") else None
    return wait(once, 20), seen


def g_lro():
    tok = arm_token()
    admin("POST", "/config", {"lro_ms": 400})
    st, h, j = req("PUT", WSP + "/computes/lro1" + AV, aml_body(), token=tok)
    check("compute PUT -> 201 + Azure-AsyncOperation + Location + Retry-After", st == 201 and
          "azure-asyncoperation" in h and "location" in h and "retry-after" in h, (st, h))
    check("provisioningState Creating first", j["properties"]["provisioningState"] == "Creating", j)
    t0 = time.time()
    fin, seen = poll_op(h["azure-asyncoperation"], tok)
    check("operation InProgress, then Succeeded after lro_ms", fin and fin["status"] == "Succeeded"
          and seen[0] == "InProgress" and time.time() - t0 >= 0.3, seen)
    st, _, j = req("GET", WSP + "/computes/lro1" + AV, token=tok)
    check("compute Succeeded with node counts", j["properties"]["provisioningState"] == "Succeeded"
          and j["properties"]["properties"]["currentNodeCount"] == 0, j)
    st, h, j = req("PUT", WSP + "/computes/lro1" + AV, aml_body(), token=tok)
    check("PUT again is idempotent (200, one compute)", st == 200 and len(req("GET", WSP + "/computes" + AV,
                                                                                token=tok)[2]["value"]) == 1, (st, j))
    poll_op(h["azure-asyncoperation"], tok)
    st, _, j = req("PATCH", WSP + "/computes/lro1" + AV, {"properties": {"properties": {"scaleSettings":
                                                                                       {"maxNodeCount": 3, "minNodeCount": 1}}}}, token=tok)
    check("PATCH scale settings", st == 200 and j["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 3,
          (st, j))
    wait(lambda: req("GET", WSP + "/computes/lro1" + AV, token=tok)[2]["properties"]["provisioningState"] == "Succeeded")
    st, _, j = req("GET", WSP + "/computes/lro1" + AV, token=tok)
    check("nodes follow minNodeCount", j["properties"]["properties"]["currentNodeCount"] == 1, j)
    st, _, j = req("POST", WSP + "/computes/lro1/listNodes" + AV, token=tok)
    check("listNodes", st == 200 and len(j["nodes"]) == 1, (st, j))
    # refusals
    st, _, j = req("PUT", WSP + "/computes/big1" + AV, aml_body("STANDARD_XL99"), token=tok)
    check("vm size not allowed -> 400", st == 400 and "STANDARD_XL99" in j["error"]["message"], (st, j))
    st, _, j = req("PUT", WSP + "/computes/big2" + AV, aml_body("STANDARD_NC6", mx=10, mn=4), token=tok)
    check("quota exceeded -> 400 with QuotaExceeded", st == 400 and j["error"]["details"][0]["code"]
          == "QuotaExceeded" and "vCPU quota" in j["error"]["message"], (st, j))
    st, _, j = req("PUT", WSP + "/computes/-bad-" + AV, aml_body(), token=tok)
    check("compute name rules -> 400", st == 400, (st, j))
    # failed provisioning
    admin("POST", "/faults", {"action": "fail_provisioning", "path": "/computes/failme$"})
    st, h, j = req("PUT", WSP + "/computes/failme" + AV, aml_body(), token=tok)
    fin, _ = poll_op(h["azure-asyncoperation"], tok)
    check("fail_provisioning: operation Failed with an error", fin and fin["status"] == "Failed"
          and fin["error"]["code"], fin)
    st, _, j = req("GET", WSP + "/computes/failme" + AV, token=tok)
    check("... and provisioningState Failed with provisioningErrors", j["properties"]["provisioningState"] == "Failed"
          and j["properties"]["provisioningErrors"][0]["error"]["code"], j)
    # slow LRO
    admin("POST", "/faults", {"action": "slow_lro", "path": "/computes/slow1$", "lro_ms": 1500})
    t0 = time.time()
    st, h, j = req("PUT", WSP + "/computes/slow1" + AV, aml_body(mx=1), token=tok)
    fin, seen = poll_op(h["azure-asyncoperation"], tok)
    check("slow_lro makes that LRO last lro_ms", fin and time.time() - t0 >= 1.4 and len(seen) > 3, seen)
    # delete: 202 + Location, then gone
    for n in ("slow1", "failme"):
        st, h, _ = req("DELETE", WSP + "/computes/%s" % n + AV + "&underlyingResourceAction=Delete", token=tok)
        check("DELETE %s -> 202 + Location" % n, st == 202 and "location" in h, (st, h))
        u = urllib.parse.urlsplit(h["location"])
        codes = []
        wait(lambda: codes.append(req("GET", u.path + "?" + u.query, token=tok)[0]) or codes[-1] != 202)
        check("Location: 202 then 204", codes[0] == 202 and codes[-1] == 204, codes)
        st, _, _ = req("GET", WSP + "/computes/%s" % n + AV, token=tok)
        check("deleted compute is gone", st == 404, st)
    st, _, j = req("DELETE", WSP + "/computes/lro1" + AV, token=tok)
    check("DELETE without underlyingResourceAction -> 400", st == 400, (st, j))
    admin("POST", "/config", {"lro_ms": 300})


def g_faults():
    tok = arm_token()
    admin("POST", "/faults", {"method": "GET", "path": "/workspaces/[^/]+$", "status": 429, "retry_after": 1,
                              "count": 2})
    r = [req("GET", WSP + AV, token=tok) for _ in range(3)]
    check("429 x count with Retry-After, then through", [x[0] for x in r] == [429, 429, 200]
          and r[0][1].get("retry-after") == "1", [x[0] for x in r])
    admin("POST", "/faults", {"method": "GET", "path": "/workspaces/[^/]+$", "status": 500, "count": 1})
    check("500 once", req("GET", WSP + AV, token=tok)[0] == 500 and req("GET", WSP + AV, token=tok)[0] == 200)
    admin("POST", "/faults", {"method": "GET", "path": "/workspaces/[^/]+$", "action": "drop", "count": 1})
    try:
        req("GET", WSP + AV, token=tok)
        dropped = False
    except (http.client.HTTPException, OSError):
        dropped = True
    check("drop closes the connection without an answer", dropped)
    check("... once", req("GET", WSP + AV, token=tok)[0] == 200)
    reqs = admin("GET", "/requests")
    check("faulted requests are logged with their fault", sum(1 for x in reqs if x.get("fault")) >= 4)
    admin("POST", "/reset")
    check("reset clears the log", len(admin("GET", "/requests")) == 0)


def blob_put_sas(sas_folder, name, data):
    u = urllib.parse.urlsplit(sas_folder)
    path = u.path.rstrip("/") + "/" + urllib.parse.quote(name)
    st, _, _ = req("PUT", path + "?" + u.query, data, {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"},
                   port=u.port, raw=True)
    return st


def setup_compute(tok, name="jobs1", body=None):
    st, h, j = req("PUT", WSP + "/computes/%s" % name + AV, body or aml_body(mx=2), token=tok)
    assert st in (200, 201), (st, j)
    wait(lambda: req("GET", WSP + "/computes/%s" % name + AV, token=tok)[2]["properties"]["provisioningState"]
         == "Succeeded")
    return WSP + "/computes/" + name


def upload_code(tok, name, files):
    st, _, j = req("POST", WSP + "/codes/%s/versions/1/startPendingUpload" % name + AV,
                   {"pendingUploadType": "TemporaryBlobReference"}, token=tok)
    assert st == 200, (st, j)
    ref = j["blobReferenceForConsumption"]
    for n, data in files.items():
        st = blob_put_sas(ref["credential"]["sasUri"], n, data)
        assert st == 201, st
    st, _, j = req("PUT", WSP + "/codes/%s/versions/1" % name + AV, {"properties": {"codeUri": ref["blobUri"]}},
                   token=tok)
    assert st in (200, 201), (st, j)
    return j["id"], ref


def env_id(tok):
    st, _, j = req("PUT", WSP + "/environments/ctarget-py/versions/1" + AV,
                   {"properties": {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest"}}, token=tok)
    assert st in (200, 201), (st, j)
    return j["id"]


def job_body(compute, code, env, command, **kw):
    p = {"jobType": "Command", "command": command, "computeId": compute, "codeId": code, "environmentId": env,
         "experimentName": "ctarget", "displayName": "t"}
    p.update(kw)
    return {"properties": p}


def job_status(tok, name):
    return req("GET", WSP + "/jobs/" + name + AV, token=tok)[2]["properties"]["status"]


def blob(container, name):
    st, _, data = req("GET", "/_emulator/blob/%s/%s" % (container, name), raw=True)
    return data if st == 200 else None


def g_jobs():
    tok = arm_token()
    comp = setup_compute(tok)
    env = env_id(tok)
    script = (b"import os, sys\nprint('hello from', os.environ['AZUREML_RUN_ID'], os.environ.get('MYVAR'))\n"
              b"sys.stdout.flush()\nprint('to stderr', file=sys.stderr)\nos.makedirs('outputs/sub', exist_ok=True)\n"
              b"open('outputs/sub/result.txt','w').write('42')\nprint(open(sys.argv[1] + '/data.txt').read())\n"
              b"sys.exit(int(sys.argv[2]))\n")
    code, ref = upload_code(tok, "code-a", {"train.py": script})
    check("startPendingUpload gives a SAS URL into Azurite", ref["credential"]["sasUri"].startswith(E["AZFIX_BLOB"]))
    # an input folder in the workspace blob store
    st, _, ds = req("GET", WSP + "/datastores/workspaceblobstore" + AV, token=tok)
    st2, _, sec = req("POST", WSP + "/datastores/workspaceblobstore/listSecrets" + AV, token=tok)
    check("datastore + listSecrets (account key)", st == 200 and st2 == 200 and sec["secretsType"] == "AccountKey", (ds, sec))
    blob_put_sas(ref["credential"]["sasUri"].replace("/LocalUpload/", "/inputs-x/LocalUpload/"), "data.txt", b"DATA")
    folder = urllib.parse.urlsplit(ref["blobUri"]).path.split("/", 3)[3]
    inputs = {"d": {"jobInputType": "uri_folder", "mode": "ReadOnlyMount",
                    "uri": "azureml://datastores/workspaceblobstore/paths/inputs-x/" + folder},
              "rc": {"jobInputType": "literal", "value": "0"}}
    body = job_body(comp, code, env, "python3 train.py ${{inputs.d}} ${{inputs.rc}}",
                    inputs=inputs, environmentVariables={"MYVAR": "myval"}, resources={"instanceCount": 1},
                    limits={"jobLimitsType": "Command", "timeout": "PT5M"})
    st, _, j = req("PUT", WSP + "/jobs/job-ok-1" + AV, body, token=tok)
    check("job PUT -> 201 NotStarted", st == 201 and j["properties"]["status"] == "NotStarted", (st, j))
    seen = []

    def done():
        s = job_status(tok, "job-ok-1")
        if not seen or seen[-1] != s:
            seen.append(s)
        return s in ("Completed", "Failed", "Canceled")
    wait(done, 60, 0.02)
    check("job goes NotStarted .. Running .. Completed", seen[-1] == "Completed" and "Running" in seen
          and seen.index("Running") > 0, seen)
    st, _, j = req("PUT", WSP + "/jobs/job-ok-1" + AV, body, token=tok)
    check("PUT of an existing job: 200, no second run", st == 200 and len(req("GET", WSP + "/jobs" + AV,
                                                                               token=tok)[2]["value"]) == 1, (st, j))
    log = blob("azureml", "ExperimentRun/dcid.job-ok-1/user_logs/std_log.txt")
    check("std_log.txt holds stdout+stderr", log is not None and b"hello from job-ok-1 myval" in log
          and b"to stderr" in log and b"DATA" in log, log)
    check("outputs uploaded", blob("azureml", "ExperimentRun/dcid.job-ok-1/outputs/sub/result.txt") == b"42")
    # a failing job
    body["properties"]["inputs"]["rc"]["value"] = "3"
    req("PUT", WSP + "/jobs/job-fail-1" + AV, body, token=tok)
    wait(lambda: job_status(tok, "job-fail-1") in ("Completed", "Failed"), 60)
    st, _, j = req("GET", WSP + "/jobs/job-fail-1" + AV, token=tok)
    check("exit code 3 -> Failed naming the code", j["properties"]["status"] == "Failed" and
          "code 3" in j["properties"]["properties"].get("azureml.runErrorMessage", ""), j)
    # cancel
    code2, _ = upload_code(tok, "code-b", {"sleep.py": b"import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n"})
    req("PUT", WSP + "/jobs/job-cancel-1" + AV, job_body(comp, code2, env, "python3 sleep.py"), token=tok)
    wait(lambda: job_status(tok, "job-cancel-1") == "Running", 60)
    wait(lambda: b"sleeping" in (blob("azureml", "ExperimentRun/dcid.job-cancel-1/user_logs/std_log.txt") or b""), 20)
    check("live log while running", b"sleeping" in (blob("azureml", "ExperimentRun/dcid.job-cancel-1/user_logs/std_log.txt") or b""))
    pids = admin("GET", "/state")["jobs"]["job-cancel-1"]["pids"]
    st, h, _ = req("POST", WSP + "/jobs/job-cancel-1/cancel" + AV, token=tok)
    check("cancel -> 202 + Location", st == 202 and "location" in h, (st, h))
    wait(lambda: job_status(tok, "job-cancel-1") == "Canceled", 20)
    check("canceled job: Canceled", job_status(tok, "job-cancel-1") == "Canceled")
    check("... and its process is gone", wait(lambda: not any(os.path.exists("/proc/%d" % p) and
                                                              open("/proc/%d/stat" % p).read().split()[2] != "Z"
                                                              for p in pids), 10))
    u = urllib.parse.urlsplit(h["location"])
    check("cancel Location: 200 when done", req("GET", u.path + "?" + u.query, token=tok)[0] == 200)
    # preemption on a low-priority cluster
    comp_lp = setup_compute(tok, "lowpri1", aml_body(mx=1, prio="LowPriority"))
    admin("POST", "/faults", {"action": "preempt", "job": "job-pre-1", "after_ms": 300})
    req("PUT", WSP + "/jobs/job-pre-1" + AV, job_body(comp_lp, code2, env, "python3 sleep.py"), token=tok)
    wait(lambda: job_status(tok, "job-pre-1") in ("Failed", "Completed", "Canceled"), 30)
    st, _, j = req("GET", WSP + "/jobs/job-pre-1" + AV, token=tok)
    check("preempt: Failed with the preemption error", j["properties"]["status"] == "Failed" and
          j["properties"]["properties"].get("azureml.runErrorCode") == "JobPreempted", j)
    # multi-node
    code3, _ = upload_code(tok, "code-c", {"r.py": b"import os\nprint('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'])\n"})
    req("PUT", WSP + "/jobs/job-mn-1" + AV, job_body(comp, code3, env, "python3 r.py", resources={"instanceCount": 2}),
        token=tok)
    wait(lambda: job_status(tok, "job-mn-1") in ("Failed", "Completed"), 60)
    l0 = blob("azureml", "ExperimentRun/dcid.job-mn-1/user_logs/std_log.txt") or b""
    l1 = blob("azureml", "ExperimentRun/dcid.job-mn-1/user_logs/std_log_process_1.txt") or b""
    check("instanceCount 2: two processes with their ranks", b"rank 0 of 2" in l0 and b"rank 1 of 2" in l1, (l0, l1))
    st, _, j = req("PUT", WSP + "/jobs/job-mn-2" + AV, job_body(comp, code3, env, "true", resources={"instanceCount": 9}),
                   token=tok)
    check("more nodes than maxNodeCount -> 400", st == 400, (st, j))
    st, _, j = req("PUT", WSP + "/jobs/job-nc-1" + AV, job_body(WSP + "/computes/none", code3, env, "true"), token=tok)
    check("job on an unknown compute -> 400", st == 400 and "none" in j["error"]["message"], (st, j))
    # a timeout
    req("PUT", WSP + "/jobs/job-to-1" + AV, job_body(comp, code2, env, "python3 sleep.py",
                                                     limits={"jobLimitsType": "Command", "timeout": "PT1S"}), token=tok)
    wait(lambda: job_status(tok, "job-to-1") in ("Failed", "Completed"), 30)
    check("limits.timeout stops the job: Failed", job_status(tok, "job-to-1") == "Failed")


def g_ci():
    tok = arm_token()
    body = {"location": "westeurope", "properties": {"computeType": "ComputeInstance", "properties": {
        "vmSize": "STANDARD_DS3_V2", "sshSettings": {"sshPublicAccess": "Disabled"}}}}
    setup_compute(tok, "ci1", body)
    st, _, j = req("GET", WSP + "/computes/ci1" + AV, token=tok)
    check("compute instance Running after create", j["properties"]["properties"]["state"] == "Running", j)
    st, h, _ = req("POST", WSP + "/computes/ci1/stop" + AV, token=tok)
    check("stop -> 202 + Location", st == 202 and "location" in h, st)
    st, _, j = req("GET", WSP + "/computes/ci1" + AV, token=tok)
    check("Stopping", j["properties"]["properties"]["state"] == "Stopping", j)
    wait(lambda: req("GET", WSP + "/computes/ci1" + AV, token=tok)[2]["properties"]["properties"]["state"] == "Stopped")
    check("Stopped", req("GET", WSP + "/computes/ci1" + AV, token=tok)[2]["properties"]["properties"]["state"] == "Stopped")
    st, _, j = req("POST", WSP + "/computes/ci1/restart" + AV, token=tok)
    check("restart of a stopped instance -> 400", st == 400, (st, j))
    st, h, _ = req("POST", WSP + "/computes/ci1/start" + AV, token=tok)
    wait(lambda: req("GET", WSP + "/computes/ci1" + AV, token=tok)[2]["properties"]["properties"]["state"] == "Running")
    check("start -> Running", req("GET", WSP + "/computes/ci1" + AV, token=tok)[2]["properties"]["properties"]["state"] == "Running")
    body["properties"]["properties"]["sshSettings"]["sshPublicAccess"] = "Enabled"
    st, _, j = req("PUT", WSP + "/computes/ci1" + AV, body, token=tok)
    check("sshPublicAccess is immutable -> 400", st == 400 and "sshPublicAccess" in j["error"]["message"], (st, j))


def g_blob():
    tok = arm_token()
    st_, _, j = req("POST", WSP + "/codes/blobchk/versions/1/startPendingUpload" + AV,
                    {"pendingUploadType": "TemporaryBlobReference"}, token=tok)
    check("SAS URLs name Azurite by default", j["blobReferenceForConsumption"]["blobUri"].startswith(E["AZFIX_BLOB"] + "/"), j)
    admin("POST", "/config", {"blob_via_proxy": True})
    st_, _, j = req("POST", WSP + "/codes/blobchk/versions/1/startPendingUpload" + AV,
                    {"pendingUploadType": "TemporaryBlobReference"}, token=tok)
    sas = j["blobReferenceForConsumption"]["credential"]["sasUri"]
    check("... the proxy with blob_via_proxy", sas.startswith(E["AZFIX_BLOB_PROXY"] + "/"), sas)
    admin("POST", "/reset")
    data = b"x" * 5000
    check("upload through the proxy", blob_put_sas(sas, "one.bin", data) == 201)
    log = admin("GET", "/blob_requests")
    check("blob request logged with its size, the SAS signature redacted",
          any(r["method"] == "PUT" and r["body_size"] == 5000 and r["status"] == 201 and "sig=REDACTED" in r["query"]
              for r in log), log)
    check("blob requests stay out of the ARM request log", not any(r["path"].startswith("/devstoreaccount1")
                                                                   for r in admin("GET", "/requests")))
    admin("POST", "/faults", {"target": "blob", "method": "PUT", "path": "dropme", "action": "drop", "after_bytes": 1000})
    try:
        blob_put_sas(sas, "dropme.bin", data)
        dropped = False
    except (http.client.HTTPException, OSError):
        dropped = True
    check("blob drop mid-upload closes the connection", dropped)
    folder = urllib.parse.urlsplit(sas).path.split("/", 3)[3]
    cont = urllib.parse.urlsplit(sas).path.split("/")[2]
    check("... and nothing reached Azurite", blob(cont, folder + "dropme.bin") is None)
    log = admin("GET", "/blob_requests")
    check("... logged as dropped after 1000 bytes", any(r["status"] == 0 and r.get("body_received") == 1000 for r in log), log)
    check("the retry goes through", blob_put_sas(sas, "dropme.bin", data) == 201 and blob(cont, folder + "dropme.bin") == data)
    admin("POST", "/faults", {"target": "blob", "method": "PUT", "status": 503, "retry_after": 1, "count": 1})
    st1 = blob_put_sas(sas, "busy.bin", b"b")
    st2 = blob_put_sas(sas, "busy.bin", b"b")
    check("blob 503 with Retry-After, once", (st1, st2) == (503, 201), (st1, st2))
    admin("POST", "/faults", {"method": "PUT", "status": 500, "count": 1})
    check("a fault without target:blob never hits blob traffic", blob_put_sas(sas, "arm-only.bin", b"a") == 201)
    admin("DELETE", "/faults")
    admin("POST", "/config", {"blob_via_proxy": False})


def g_stubborn():
    """Leaves a job running that ignores SIGTERM and prints its pids (test_azemu then stops the
    emulator and checks that no process of the job survived it)."""
    tok = arm_token()
    comp = setup_compute(tok, "stub1", aml_body(mx=1))
    code, _ = upload_code(tok, "code-stub", {"s.sh": b"trap '' TERM\necho started\nwhile :; do sleep 1; done\n"})
    req("PUT", WSP + "/jobs/job-stub-1" + AV, job_body(comp, code, env_id(tok), "sh s.sh"), token=tok)
    check("a job that ignores SIGTERM runs", wait(lambda: b"started" in (blob(
        "azureml", "ExperimentRun/dcid.job-stub-1/user_logs/std_log.txt") or b""), 30))
    pids = admin("GET", "/state")["jobs"]["job-stub-1"]["pids"]
    print("pids: " + " ".join(map(str, pids)))


GROUPS = {"aad": g_aad, "imds": g_imds, "arm": g_arm, "lro": g_lro, "faults": g_faults, "jobs": g_jobs, "ci": g_ci, "blob": g_blob, "stubborn": g_stubborn}

if __name__ == "__main__":
    for g in sys.argv[1:] or list(GROUPS):
        try:
            GROUPS[g]()
        except Exception as e:  # a broken step is a failure, never a skip
            import traceback
            traceback.print_exc()
            check("group %s ran to the end" % g, False, "%s: %s" % (type(e).__name__, e))
    print("selftest: %d failed" % failed)
    sys.exit(1 if failed else 0)
