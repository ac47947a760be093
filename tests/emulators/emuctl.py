#!/usr/bin/env python3
"""Talk to a running emulator (admin API or any call) over HTTPS with its CA.

    emuctl.py --dir DIR [--token] [--out FILE] METHOD PATH [BODY]

Prints the answer's body on stdout and "HTTP <status>" on stderr; exit 0 for a status below
400, 1 above, 2 on a transport error.  --token: get an ARM token for the seed's service
principal first and send it (for ARM calls from shell tests)."""
import http.client
import json
import os
import ssl
import sys
sys.dont_write_bytecode = True  # the source tree may be read-only (distcheck) and stays clean
import urllib.parse


def conn(d):
    port = int(open(os.path.join(d, "port")).read())
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)


def call(d, method, path, body=None, headers=None):
    c = conn(d)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def token(d):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import azure_emulator as ae
    seed = dict(ae.DEFAULT_SEED)
    if os.path.exists(os.path.join(d, "seed.json")):  # azfix writes the seed it was given there
        with open(os.path.join(d, "seed.json")) as f:
            seed.update(json.load(f))
    sp = seed["service_principals"][0]
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": sp["client_id"],
                                   "client_secret": sp["client_secret"],
                                   "scope": "https://management.azure.com/.default"})
    st, b = call(d, "POST", "/%s/oauth2/v2.0/token" % seed["tenant_id"], form,
                 {"Content-Type": "application/x-www-form-urlencoded"})
    if st != 200:
        sys.exit("emuctl: token: HTTP %d %s" % (st, b[:200]))
    return json.loads(b)["access_token"]


def main():
    a = sys.argv[1:]
    if len(a) < 4 or a[0] != "--dir":
        sys.exit(__doc__)
    d, a = a[1], a[2:]
    hdr = {"Content-Type": "application/json"}
    if a[0] == "--token":
        hdr["Authorization"] = "Bearer " + token(d)
        a = a[1:]
    out_file = None
    if a[0] == "--out":
        out_file, a = a[1], a[2:]
    method, path = a[0], a[1]
    body = a[2].encode() if len(a) > 2 else None
    try:
        st, out = call(d, method, path, body, hdr)
    except (OSError, http.client.HTTPException) as e:
        sys.stderr.write("emuctl: %s %s: %s\n" % (method, path, e))
        sys.exit(2)
    if out_file:
        with open(out_file, "wb") as f:
            f.write(out)
    else:
        sys.stdout.buffer.write(out)
    sys.stderr.write("HTTP %d\n" % st)
    sys.exit(0 if st < 400 else 1)


if __name__ == "__main__":
    main()
