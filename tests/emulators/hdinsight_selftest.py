#!/usr/bin/env python3
"""The emulator's HDInsight service held to the documents it copies (run by tests/test_hdinsight
with a running emulator's directory): Livy's rest-api.md (the request fields of POST /batches,
the Batch object, the answers of GET /batches, /state and /log, parsed from the bundled text
here, independently of the emulator's own parsing) and the official example
GetLinuxSparkCluster.json (replayed: its request accepted, the answer of the example's shape,
with the example's values except the ids and endpoints that must name this emulator).

    hdinsight_selftest.py DIR      (AZFIX_TENANT, AZFIX_CLIENT_ID, AZFIX_CLIENT_SECRET,
                                    AZFIX_SUBSCRIPTION, AZFIX_RESOURCE_GROUP in the environment)
Prints one line per check; exits 1 when one fails."""
import base64
import json
import os
import re
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
D = sys.argv[1]
E = os.environ
CTX = ssl.create_default_context(cafile=os.path.join(D, "ca.pem"))
BUNDLE = json.load(open(os.path.join(HERE, "specs", "hdinsight.json"), encoding="utf-8"))["files"]
MD = BUNDLE["docs/rest-api.md"]
EXAMPLE = json.loads(BUNDLE["specification/hdinsight/resource-manager/Microsoft.HDInsight/HDInsight/"
                            "stable/2021-06-01/examples/GetLinuxSparkCluster.json"])
failed = passed = 0


def check(what, ok, detail=None):
    global failed, passed
    if ok:
        passed += 1
        print("ok - " + what)
    else:
        failed += 1
        print("not ok - %s%s" % (what, "" if detail is None else ": %s" % (detail,)))


def table(section, nth=0):
    i = MD.index(section + "\n")
    for _ in range(nth):
        i = MD.index("</table>", i) + 8
    j = MD.index("</table>", i)
    return [(n.strip(), t.strip()) for n, t in re.findall(
        r"<tr>\s*<td>([^<]+)</td>\s*<td>.*?</td>\s*<td>([^<]+)</td>\s*</tr>", MD[i:j], re.S)]


def read(name):
    with open(os.path.join(D, name)) as f:
        return f.read().strip()


LIVY = "https://127.0.0.1:%s" % read("livy_port")
ARM = "https://127.0.0.1:%s" % read("port")
PW = read("livy_password")


def call(method, url, body=None, headers=None, auth=("admin", PW), form=False):
    h = dict(headers or {})
    data = None
    if body is not None:
        data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
        h["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode()
    rq = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(rq, context=CTX, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None), dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            j = json.loads(raw)
        except ValueError:
            j = raw.decode("utf-8", "replace")
        return e.code, j, dict(e.headers)


CSRF = {"X-Requested-By": "selftest"}
JTYPE = {"int": int, "string": str, "list": list}

# ---- Livy ---------------------------------------------------------------------------------
req_fields = table("### POST /batches")
batch_fields = [n for n, _ in table("### Batch")]
check("the document lists the POST /batches fields", len(req_fields) >= 15 and req_fields[0][0] == "file",
      req_fields)

st, j, h = call("GET", LIVY + "/batches", auth=("admin", "wrong"))
check("a wrong password is 401 with a Basic challenge", st == 401 and "Basic" in h.get("WWW-Authenticate", ""),
      (st, h.get("WWW-Authenticate")))
st, j, _ = call("POST", LIVY + "/batches", {"file": "/nonexistent.py"})
check("POST without X-Requested-By is refused (CSRF)", st == 400, (st, j))

app = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False, dir=D)
app.write("import sys, time\nprint('selftest', sys.argv[1:], flush=True)\ntime.sleep(float(sys.argv[1]))\n")
app.close()
sample = {"file": app.name, "proxyUser": "alice", "className": "Main", "args": ["0"], "jars": [],
          "pyFiles": [], "files": [], "driverMemory": "1g", "driverCores": 1, "executorMemory": "1g",
          "executorCores": 1, "numExecutors": 1, "archives": [], "queue": "default", "name": "selftest",
          "conf": {"spark.a": "b"}}
check("the sample sets every documented field", sorted(sample) == sorted(n for n, _ in req_fields),
      sorted(set(sample) ^ set(n for n, _ in req_fields)))
st, j, _ = call("POST", LIVY + "/batches", sample, CSRF)
check("a body with every documented field is accepted (201)", st == 201, (st, j))
check("the created Batch has exactly the documented fields", isinstance(j, dict) and sorted(j) == sorted(batch_fields),
      j)
bid = j.get("id") if isinstance(j, dict) else None
for n, t in req_fields:
    bad = dict(sample)
    bad[n] = 7 if not t.startswith("int") else "seven"
    st, jj, _ = call("POST", LIVY + "/batches", bad, CSRF)
    check("a wrong type for %s (%s) is 400" % (n, t), st == 400, (st, jj))
st, jj, _ = call("POST", LIVY + "/batches", dict(sample, colour="red"), CSRF)
check("an unknown field is 400 Unrecognized field", st == 400 and "Unrecognized field" in str(jj), (st, jj))
st, jj, _ = call("POST", LIVY + "/batches", {k: v for k, v in sample.items() if k != "file"}, CSRF)
check("a body without file is 400", st == 400, (st, jj))

st, j, _ = call("GET", LIVY + "/batches?from=0&size=10")
want = [n for n, _ in table("### GET /batches", 1)]
check("GET /batches answers the documented fields", st == 200 and sorted(j) == sorted(want), (st, j, want))
check("... with Batch objects", all(sorted(b) == sorted(batch_fields) for b in j.get("sessions", [])), j)
for _ in range(200):
    st, j, _ = call("GET", LIVY + "/batches/%s/state" % bid)
    if j and j.get("state") == "success":
        break
    time.sleep(0.05)
want = [n for n, _ in table("### GET /batches/{batchId}/state")]
check("GET /batches/{id}/state answers the documented fields and ends in success",
      st == 200 and sorted(j) == sorted(want) and j["state"] == "success", (st, j, want))
st, j, _ = call("GET", LIVY + "/batches/%s/log?from=0&size=100" % bid)
want = [n for n, _ in table("### GET /batches/{batchId}/log", 1)]
# the document says "size" for the number of lines, Livy's server sends "total": both allowed
check("GET /batches/{id}/log answers the documented fields (and Livy's total)",
      st == 200 and set(want) <= set(j) and set(j) - set(want) <= {"total"} and j["size"] == j["total"],
      (st, j, want))
check("... with the driver's output", any("selftest ['0']" in l for l in j.get("log", [])), j)
st, j, _ = call("GET", LIVY + "/livy/batches/%s" % bid)
check("the gateway's /livy path answers too", st == 200 and j.get("id") == bid, (st, j))
st, j, _ = call("DELETE", LIVY + "/batches/%s" % bid, headers=CSRF)
check("DELETE answers {msg: deleted}", st == 200 and j == {"msg": "deleted"}, (st, j))
st, j, _ = call("GET", LIVY + "/batches/%s" % bid)
check("a deleted batch is forgotten (404)", st == 404, (st, j))

# ---- ARM: the official example replayed ---------------------------------------------------
st, tok, _ = call("POST", ARM + "/%s/oauth2/v2.0/token" % E["AZFIX_TENANT"],
                  {"grant_type": "client_credentials", "client_id": E["AZFIX_CLIENT_ID"],
                   "client_secret": E["AZFIX_CLIENT_SECRET"],
                   "scope": "https://management.azure.com/.default"}, auth=None, form=True)
check("a token for ARM", st == 200 and "access_token" in tok, st)
bearer = {"Authorization": "Bearer " + tok.get("access_token", "")}
p = EXAMPLE["parameters"]
name = p["clusterName"]
st, j, _ = call("POST", ARM + "/_emulator/config", {"hdinsight_clusters": {name: {"ssh": "127.0.0.1:2222"}}},
                auth=None)
check("the example's cluster registered", st == 200, (st, j))
path = "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.HDInsight/clusters/%s" % (
    E["AZFIX_SUBSCRIPTION"], E["AZFIX_RESOURCE_GROUP"], name)


def arm_get(url):
    rq = urllib.request.Request(url, headers=bearer)
    try:
        with urllib.request.urlopen(rq, context=CTX, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


st, got = arm_get(ARM + path + "?api-version=" + p["api-version"])
ex = EXAMPLE["responses"]["200"]["body"]
check("the example's GET is answered with one of its statuses", str(st) in EXAMPLE["responses"], st)


def diff(a, b, where="$"):
    """where the answer leaves the example's shape, or values (ids and endpoints excepted)"""
    if type(a) is not type(b):
        return ["%s: %s vs %s" % (where, type(a).__name__, type(b).__name__)]
    if isinstance(a, dict):
        out = ["%s: keys %s" % (where, sorted(set(a) ^ set(b)))] if set(a) != set(b) else []
        for k in set(a) & set(b):
            out += diff(a[k], b[k], where + "." + k)
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return ["%s: %d vs %d items" % (where, len(a), len(b))]
        return [x for i in range(len(a)) for x in diff(a[i], b[i], "%s[%d]" % (where, i))]
    if a != b and where not in ("$.id",) and not where.startswith("$.properties.connectivityEndpoints"):
        return ["%s: %r vs %r" % (where, a, b)]
    return []


d = diff(got, ex)
check("the answer has the example's shape and values", not d, d[:5])
check("its id names this subscription and group", got.get("id") == path, got.get("id"))
eps = {e["name"]: e for e in got.get("properties", {}).get("connectivityEndpoints", [])}
check("SSH endpoint as registered", eps.get("SSH", {}).get("location") == "127.0.0.1" and
      eps["SSH"].get("port") == 2222, eps)
check("HTTPS endpoint is the Livy plane", str(eps.get("HTTPS", {}).get("port")) == read("livy_port"), eps)
st, j = arm_get(ARM + path + "?api-version=2018-06-01-preview")
check("another api-version is 400", st == 400 and j["error"]["code"] == "InvalidApiVersionParameter", (st, j))
st, j = arm_get(ARM + path[:-len(name)] + "nope?api-version=2021-06-01")
check("an unknown cluster is 404 ResourceNotFound", st == 404 and j["error"]["code"] == "ResourceNotFound", (st, j))
os.unlink(app.name)
print("hdinsight_selftest: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed or not passed else 0)
