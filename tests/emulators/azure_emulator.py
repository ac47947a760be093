#!/usr/bin/env python3
"""Azure emulator for ctarget's tests: AAD token endpoint, IMDS, ARM + Azure ML (computes, jobs,
codes, environments, datastores) with LROs over time, jobs that really run as local processes,
fault injection and an admin API.  Python 3 stdlib + the openssl command.  See README.md.

    azure_emulator.py --dir DIR [--seed SEED.json] [--blob-endpoint URL] [--lro-ms N] [--job-phase-ms N]
"""
import argparse
import base64
import hashlib
import http.server
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
sys.dont_write_bytecode = True  # the source tree may be read-only (distcheck) and stays clean
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if __name__ == "__main__":  # emu_arm imports this module by name: one copy of its classes
    sys.modules["azure_emulator"] = sys.modules["__main__"]
import swagger_validate  # noqa: E402
import emu_blob  # noqa: E402
import emu_jobs  # noqa: E402

ML = "Microsoft.MachineLearningServices"
API_VERSION = "2025-12-01"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

DEFAULT_SEED = {
    "tenant_id": "00000000-0000-0000-0000-0000000000aa",
    "service_principals": [{"client_id": "00000000-0000-0000-0000-0000000000c1",
                            "client_secret": "ctarget-test-secret-Zq8u3", "certificate": True}],
    "cert_password": "ctarget-test-certpw",
    "managed_identities": [{"client_id": "00000000-0000-0000-0000-0000000000d1",
                            "object_id": "00000000-0000-0000-0000-0000000000d2"}],
    "subscription_id": "00000000-0000-0000-0000-000000000001",
    "resource_group": "rg-ctarget",
    "workspace_name": "ws-ctarget",
    "location": "westeurope",
    "vm_sizes": {"STANDARD_D2_V2": 2, "STANDARD_DS3_V2": 4, "STANDARD_DS11_V2": 2,
                 "STANDARD_NC6": 6, "STANDARD_E4DS_V4": 4},
    "core_quota": 24,
    "storage_account": "devstoreaccount1",
    "storage_key": AZURITE_KEY,
}


def now_iso(t=None):
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def log(msg):
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class HttpError(Exception):
    def __init__(self, status, code, message, headers=None, details=None):
        Exception.__init__(self, message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.details = details

    def body(self):
        e = {"code": self.code, "message": self.message}
        if self.details:
            e["details"] = self.details
        return {"error": e}


# ---- certificates ------------------------------------------------------------------------------
def openssl(*args, stdin=None):
    r = subprocess.run(["openssl"] + list(args), input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (args[0], r.stderr.decode(errors="replace")))
    return r.stdout


def make_certs(d, cert_password):
    p = lambda n: os.path.join(d, n)  # noqa: E731
    if not os.path.exists(p("ca.pem")):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p("ca.key"), "-out", p("ca.pem.tmp"), "-days", "3", "-subj",
                "/CN=ctarget test CA (throwaway)", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.rename(p("ca.pem.tmp"), p("ca.pem"))
    if not os.path.exists(p("server.pem")):
        with open(p("server.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p("server.key"), "-out", p("server.csr"), "-subj", "/CN=127.0.0.1")
        openssl("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-out", p("server.pem.tmp"), "-days", "3",
                "-extfile", p("server.ext"))
        os.rename(p("server.pem.tmp"), p("server.pem"))
    if not os.path.exists(p("sp-cert.pem")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("sp.key"),
                "-out", p("sp.crt"), "-days", "3", "-subj", "/CN=ctarget-test-sp")
        enc = openssl("pkcs8", "-topk8", "-in", p("sp.key"), "-v2", "aes-256-cbc",
                      "-passout", "pass:" + cert_password)
        crt, key = open(p("sp.crt"), "rb").read(), open(p("sp.key"), "rb").read()
        with open(p("sp-cert-enc.pem"), "wb") as f:
            f.write(crt + enc)
        os.chmod(p("sp-cert-enc.pem"), 0o600)
        with open(p("sp-pub.pem"), "wb") as f:
            f.write(openssl("x509", "-pubkey", "-noout", "-in", p("sp.crt")))
        with open(p("sp-cert.pem.tmp"), "wb") as f:
            f.write(crt + key)
        os.chmod(p("sp-cert.pem.tmp"), 0o600)
        os.rename(p("sp-cert.pem.tmp"), p("sp-cert.pem"))
    der = openssl("x509", "-outform", "DER", "-in", p("sp.crt"))
    return {"x5t": b64u(hashlib.sha1(der).digest()), "x5t#S256": b64u(hashlib.sha256(der).digest())}


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64u_dec(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# ---- the emulator's state ----------------------------------------------------------------------
class Emulator:
    def __init__(self, args, seed):
        self.dir = os.path.abspath(args.dir)
        self.seed = seed
        self.lock = threading.RLock()
        self.cfg = {"lro_ms": args.lro_ms, "job_phase_ms": args.job_phase_ms,
                    "token_lifetime_s": 3599, "retry_after": 0, "core_quota": seed["core_quota"],
                    "blob_via_proxy": False}
        self.thumbs = make_certs(self.dir, seed["cert_password"])
        self.tokens = {}          # token -> {aud, exp, principal}
        self.requests = []
        self.bodies = []          # ARM request bodies (JSON), for sdk/validate_bodies.mjs
        self.seq = 0
        self.faults = []
        self.fault_id = 0
        self.computes = {}        # lower name -> record
        self.ops = {}             # operation id -> record
        self.codes = {}           # (name) -> container resource ; versions in code_versions
        self.code_versions = {}   # (name, version) -> resource
        self.envs = {}
        self.env_versions = {}
        self.jobs = {}            # lower name -> emu_jobs.Job
        self.port = None
        self.blob = None
        self.blob_endpoint = None
        self.public_blob = None
        self.proxy = None
        self.blob_requests = []   # what went through the blob proxy
        if args.blob_endpoint:
            self.set_blob(args.blob_endpoint)
        import emu_specs
        root = emu_specs.unpack(os.path.join(self.dir, "specs"))
        specs = [os.path.join(root, "machineLearningServices.json"), os.path.join(root, "mfe.json")]
        if not os.path.exists(specs[0]):
            sys.exit("azure_emulator: no swagger at %s: nothing to hold requests to" % specs[0])
        self.spec = swagger_validate.Spec([s for s in specs if os.path.exists(s)])
        self.ws_guid = str(uuid.uuid5(uuid.NAMESPACE_URL, seed["workspace_name"]))
        self.blob_container = "azureml-blobstore-" + self.ws_guid
        self.artifact_container = "azureml"
        self.runner = emu_jobs.Runner(self)
        self.services = {}        # NAME -> emu_svc_* module (load_services)
        self.planes = {}          # NAME -> its data-plane server

    # ---- further services (emu_svc_*.py) ----------------------------------------------------
    def load_services(self):
        """Each tests/emulators/emu_svc_NAME.py is one more Azure service: NAME, NAMESPACES (the
        ARM resource-provider namespaces it answers, lower case), init(emu), arm(h, path, body)
        for ARM requests under those namespaces, and optional state(emu) (for GET
        /_emulator/state), reset(emu, state) and stop(emu)."""
        import importlib
        for fn in sorted(os.listdir(HERE)):
            m = re.match(r"^(emu_svc_[a-z0-9_]+)\.py$", fn)
            if not m:
                continue
            mod = importlib.import_module(m.group(1))
            self.services[mod.NAME] = mod
            mod.init(self)

    def service_for(self, namespace):
        for mod in self.services.values():
            if namespace.lower() in getattr(mod, "NAMESPACES", ()):
                return mod
        return None

    def data_plane(self, name, fn):
        """Serve a service's data plane on its own HTTPS port (127.0.0.1, the emulator's
        certificate), written to DIR/<name>_port.  fn(h, path, body) answers a request; it may
        raise HttpError.  Requests are logged with server=name; faults with target=name apply."""
        cls = type("Plane_" + name, (Handler,), {"plane": name, "plane_fn": staticmethod(fn)})
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(self.dir, "server.pem"), os.path.join(self.dir, "server.key"))
        srv = Server(("127.0.0.1", 0), cls)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
        self.planes[name] = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        port = srv.server_address[1]
        with open(os.path.join(self.dir, name + "_port.tmp"), "w") as f:
            f.write("%d\n" % port)
        os.rename(os.path.join(self.dir, name + "_port.tmp"), os.path.join(self.dir, name + "_port"))
        return port

    def set_blob(self, endpoint):
        """Azurite at endpoint: the emulator talks to it directly; every URL it hands out names
        the proxy in front of it (emu_proxy), whose port goes to DIR/blob_port."""
        self.blob_endpoint = endpoint.rstrip("/")
        self.blob = emu_blob.Blob(self.blob_endpoint, self.seed["storage_account"], self.seed["storage_key"],
                                  os.path.join(self.dir, "ca.pem"))
        if self.proxy is None:
            import emu_proxy
            self.proxy = emu_proxy.start(self, Server, os.path.join(self.dir, "server.pem"),
                                         os.path.join(self.dir, "server.key"))
            port = self.proxy.server_address[1]
            with open(os.path.join(self.dir, "blob_port.tmp"), "w") as f:
                f.write("%d\n" % port)
            os.rename(os.path.join(self.dir, "blob_port.tmp"), os.path.join(self.dir, "blob_port"))
        self.public_blob = "https://127.0.0.1:%d%s" % (self.proxy.server_address[1], self.blob.base_path)

    def public_url(self, container, name=""):
        """A blob URL to hand out: Azurite itself, or the proxy when blob_via_proxy is set."""
        base = self.public_blob if self.cfg["blob_via_proxy"] else self.blob_endpoint
        return "%s/%s%s" % (base, container, "/" + urllib.parse.quote(name) if name else "")

    # ids
    @property
    def sub(self):
        return self.seed["subscription_id"]

    def ws_id(self):
        return "/subscriptions/%s/resourceGroups/%s/providers/%s/workspaces/%s" % (
            self.sub, self.seed["resource_group"], ML, self.seed["workspace_name"])

    def base_url(self):
        return "https://127.0.0.1:%d" % self.port

    # ---- faults --------------------------------------------------------------------------------
    def add_fault(self, f):
        with self.lock:
            self.fault_id += 1
            f = dict(f, id=self.fault_id)
            f.setdefault("count", 1)
            if f.get("action") == "preempt":
                self.runner.preempt(f)
            else:
                self.faults.append(f)
            return f

    def take_fault(self, method, path, kinds, target="arm"):
        with self.lock:
            for f in self.faults:
                act = f.get("action", "status")
                if act not in kinds or f["count"] == 0 or f.get("target", "arm") != target:
                    continue
                if f.get("method") and f["method"].upper() != method:
                    continue
                if f.get("path") and not re.search(f["path"], path):
                    continue
                if f["count"] > 0:
                    f["count"] -= 1
                f["hits"] = f.get("hits", 0) + 1
                return f
        return None

    # ---- tokens --------------------------------------------------------------------------------
    def issue(self, aud, principal, lifetime=None):
        lifetime = self.cfg["token_lifetime_s"] if lifetime is None else lifetime
        tok = "emu." + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[tok] = {"aud": aud, "exp": time.time() + lifetime, "principal": principal}
        return tok, lifetime

    def check_arm_token(self, headers):
        auth = headers.get("Authorization", "")
        if not auth:
            raise HttpError(401, "AuthenticationFailed",
                            "Authentication failed. The 'Authorization' header is missing.")
        if not auth.startswith("Bearer "):
            raise HttpError(401, "AuthenticationFailed",
                            "Authentication failed. The 'Authorization' header is provided in an invalid format.")
        t = self.tokens.get(auth[7:].strip())
        if t is None:
            raise HttpError(401, "InvalidAuthenticationToken",
                            "The access token is invalid.")
        if t["exp"] <= time.time():
            raise HttpError(401, "ExpiredAuthenticationToken",
                            "The access token expiry UTC time is earlier than current UTC time.")
        if t["aud"].rstrip("/") not in ("https://management.azure.com", "https://management.core.windows.net"):
            raise HttpError(401, "InvalidAuthenticationTokenAudience",
                            "The access token has been obtained for wrong audience or resource '%s'." % t["aud"])
        return t


# ---- the HTTP side ----------------------------------------------------------------------------
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ctarget-azure-emulator"
    sys_version = ""
    emu = None
    imds = False
    plane = None        # a service's data plane (Emulator.data_plane): its name
    plane_fn = None

    def log_message(self, fmt, *a):
        pass

    def do_GET(self):
        self.dispatch()

    do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = do_GET

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, obj=None, headers=None, raw=None, ctype="application/json; charset=utf-8"):
        data = raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode())
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("x-ms-correlation-request-id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.rec["status"] = status

    def drop(self):
        self.rec["status"] = 0
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def dispatch(self):
        emu = self.emu
        u = urllib.parse.urlsplit(self.path)
        path, query = u.path, urllib.parse.parse_qs(u.query, keep_blank_values=True)
        self.q = {k.lower(): v[-1] for k, v in query.items()}
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        with emu.lock:
            emu.seq += 1
            self.rec = {"seq": emu.seq, "method": self.command, "path": path, "query": u.query,
                        "status": None, "body_size": len(body), "t": round(time.time(), 3),
                        "server": self.plane or ("imds" if self.imds else "https")}
            if not path.startswith("/_emulator/"):
                emu.requests.append(self.rec)
        try:
            if path.startswith("/_emulator/") and not self.imds and not self.plane:
                return self.admin(path, body)
            f = emu.take_fault(self.command, path, ("status", "drop"), target=self.plane or "arm")
            if f:
                self.rec["fault"] = f["id"]
                if f.get("action") == "drop":
                    return self.drop()
                st = int(f.get("status", 500))
                hdr = {}
                if "retry_after" in f:
                    hdr["Retry-After"] = str(f["retry_after"])
                code = f.get("code") or {429: "TooManyRequests", 500: "InternalServerError",
                                         503: "ServiceUnavailable"}.get(st, "Fault")
                return self.send(st, {"error": {"code": code, "message": f.get(
                    "message", "Injected fault %d (emulator)." % st)}}, hdr)
            if self.imds:
                return self.do_imds(path)
            if self.plane:
                return self.plane_fn(self, path, body)
            m = re.match(r"^/([^/]+)/oauth2/v2\.0/token$", path)
            if m:
                return self.do_token(m.group(1), body)
            m = re.match(r"^/([^/]+)/v2\.0/\.well-known/openid-configuration$", path)
            if m:
                return self.do_discovery(m.group(1))
            if path.lower().startswith("/subscriptions/"):
                return self.do_arm(path, body)
            raise HttpError(404, "NotFound", "No route for %s %s." % (self.command, path))
        except HttpError as e:
            self.send(e.status, e.body(), e.headers)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as e:  # an emulator bug: say so loudly
            traceback.print_exc()
            self.send(500, {"error": {"code": "EmulatorBug", "message": "%s: %s" % (type(e).__name__, e)}})

    # ---- AAD -----------------------------------------------------------------------------------
    def aad_error(self, status, error, aadsts, desc, codes):
        self.send(status, {"error": error, "error_description": "%s: %s\r\nTrace ID: %s\r\n"
                           "Correlation ID: %s\r\nTimestamp: %s" % (aadsts, desc, uuid.uuid4(), uuid.uuid4(),
                                                                    time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())),
                           "error_codes": codes, "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                           "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())})

    def do_discovery(self, tenant):
        b = self.emu.base_url()
        self.send(200, {"token_endpoint": "%s/%s/oauth2/v2.0/token" % (b, tenant),
                        "issuer": "%s/%s/v2.0" % (b, tenant),
                        "authorization_endpoint": "%s/%s/oauth2/v2.0/authorize" % (b, tenant),
                        "jwks_uri": "%s/%s/discovery/v2.0/keys" % (b, tenant),
                        "tenant_region_scope": "EU"})

    def do_token(self, tenant, body):
        emu = self.emu
        if self.command != "POST":
            raise HttpError(405, "MethodNotAllowed", "POST only")
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace"),
                                                            keep_blank_values=True).items()}
        self.rec["grant_type"] = form.get("grant_type")
        if tenant.lower() not in (emu.seed["tenant_id"].lower(), "organizations") and tenant != emu.seed.get("tenant_domain"):
            return self.aad_error(400, "invalid_request", "AADSTS90002",
                                  "Tenant '%s' not found. Check to make sure you have the correct tenant ID "
                                  "and are signing into the correct cloud." % tenant, [90002])
        if form.get("grant_type") != "client_credentials":
            return self.aad_error(400, "unsupported_grant_type", "AADSTS70003",
                                  "The app requested an unsupported grant type '%s'." % form.get("grant_type"), [70003])
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or " " in scope.strip():
            return self.aad_error(400, "invalid_scope", "AADSTS1002012",
                                  "The provided value for scope %s is not valid. Client credential flows "
                                  "must have a scope value with /.default suffixed to the resource identifier "
                                  "(application ID URI)." % scope, [1002012])
        cid = form.get("client_id", "")
        sp = next((s for s in emu.seed["service_principals"] if s["client_id"] == cid), None)
        if cid and sp is None and form.get("client_assertion"):
            sp = None
        if sp is None and form.get("client_assertion") and not cid:
            try:
                cid = json.loads(b64u_dec(form["client_assertion"].split(".")[1])).get("sub", "")
                sp = next((s for s in emu.seed["service_principals"] if s["client_id"] == cid), None)
            except (ValueError, IndexError):
                sp = None
        if sp is None:
            return self.aad_error(400, "unauthorized_client", "AADSTS700016",
                                  "Application with identifier '%s' was not found in the directory '%s'."
                                  % (cid, tenant), [700016])
        if "client_secret" in form:
            if not secrets.compare_digest(form["client_secret"], sp.get("client_secret", "")):
                return self.aad_error(401, "invalid_client", "AADSTS7000215",
                                      "Invalid client secret provided. Ensure the secret being sent in the "
                                      "request is the client secret value, not the client secret ID, for a "
                                      "secret added to app '%s'." % cid, [7000215])
        elif "client_assertion" in form:
            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return self.aad_error(400, "invalid_request", "AADSTS700024",
                                      "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                                      [700024])
            err = self.check_assertion(form["client_assertion"], cid, tenant)
            if err:
                return self.aad_error(401, "invalid_client", err[0], err[1], [int(err[0][6:])])
        else:
            return self.aad_error(401, "invalid_client", "AADSTS7000218",
                                  "The request body must contain the following parameter: 'client_assertion' "
                                  "or 'client_secret'.", [7000218])
        aud = scope[:-len("/.default")]
        tok, life = emu.issue(aud, cid)
        self.send(200, {"token_type": "Bearer", "expires_in": life, "ext_expires_in": life,
                        "access_token": tok})

    def check_assertion(self, jwt, cid, tenant):
        emu = self.emu
        try:
            h64, p64, s64 = jwt.split(".")
            hdr, claims, sig = json.loads(b64u_dec(h64)), json.loads(b64u_dec(p64)), b64u_dec(s64)
        except ValueError:
            return ("AADSTS50027", "JWT token is invalid or malformed.")
        if hdr.get("alg") != "RS256":
            return ("AADSTS5002738", "Invalid JWT token: alg '%s' is not supported." % hdr.get("alg"))
        if hdr.get("x5t") != emu.thumbs["x5t"] and hdr.get("x5t#S256") != emu.thumbs["x5t#S256"]:
            return ("AADSTS700027", "The certificate with identifier used to sign the client assertion is "
                    "not registered on application.")
        with tempfile.TemporaryDirectory(dir=emu.dir) as td:
            open(os.path.join(td, "d"), "wb").write((h64 + "." + p64).encode())
            open(os.path.join(td, "s"), "wb").write(sig)
            r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", os.path.join(emu.dir, "sp-pub.pem"),
                                "-signature", os.path.join(td, "s"), os.path.join(td, "d")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            return ("AADSTS7000274", "Client assertion contains an invalid signature.")
        want_aud = "%s/%s/oauth2/v2.0/token" % (emu.base_url(), tenant)
        if claims.get("aud") not in (want_aud, want_aud.replace("127.0.0.1", "localhost")):
            return ("AADSTS700212", "No matching federated identity record found for presented assertion "
                    "audience '%s'." % claims.get("aud"))
        if claims.get("iss") != cid or claims.get("sub") != cid:
            return ("AADSTS700021", "Client assertion application identifier doesn't match 'client_id' parameter.")
        nowt = time.time()
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < nowt - 300:
            return ("AADSTS700024", "Client assertion is not within its valid time range.")
        if claims.get("nbf", 0) > nowt + 300:
            return ("AADSTS700024", "Client assertion is not within its valid time range.")
        return None

    # ---- IMDS ----------------------------------------------------------------------------------
    def do_imds(self, path):
        emu = self.emu
        if path != "/metadata/identity/oauth2/token":
            return self.send(404, {"error": "not_found", "error_description": "Not found."})
        if self.headers.get("Metadata") != "true":
            return self.send(400, {"error": "invalid_request",
                                   "error_description": "Required metadata header not specified"})
        if "api-version" not in self.q:
            return self.send(400, {"error": "invalid_request",
                                   "error_description": "Required query variable 'api-version' is missing"})
        res = self.q.get("resource")
        if not res:
            return self.send(400, {"error": "invalid_request",
                                   "error_description": "Required query variable 'resource' is missing"})
        mis = emu.seed["managed_identities"]
        sel = None
        if "client_id" in self.q:
            sel = next((m for m in mis if m["client_id"] == self.q["client_id"]), None)
        elif "object_id" in self.q:
            sel = next((m for m in mis if m.get("object_id") == self.q["object_id"]), None)
        elif "msi_res_id" in self.q or "mi_res_id" in self.q:
            rid = self.q.get("msi_res_id") or self.q.get("mi_res_id")
            sel = next((m for m in mis if m.get("resource_id") == rid), None)
        elif len(mis) == 1:
            sel = mis[0]
        if sel is None:
            return self.send(400, {"error": "invalid_request",
                                   "error_description": "Identity not found"})
        tok, life = emu.issue(res, sel["client_id"])
        n = int(time.time())
        self.send(200, {"access_token": tok, "refresh_token": "", "expires_in": str(life),
                        "expires_on": str(n + life), "not_before": str(n), "resource": res,
                        "token_type": "Bearer", "client_id": sel["client_id"]})

    # ---- admin ---------------------------------------------------------------------------------
    def admin(self, path, body):
        emu = self.emu
        j = json.loads(body) if body.strip() else {}
        m, p = self.command, path[len("/_emulator"):]
        if p == "/faults" and m == "POST":
            return self.send(200, emu.add_fault(j))
        if p == "/faults" and m == "GET":
            return self.send(200, emu.faults)
        if p == "/faults" and m == "DELETE":
            with emu.lock:
                emu.faults = []
            return self.send(200, {})
        if p == "/bodies" and m == "GET":
            since = int(self.q.get("since", 0))
            with emu.lock:
                out = [b for b in emu.bodies if b["seq"] > since]
            return self.send(200, out)
        if p == "/blob_requests" and m == "GET":
            since = int(self.q.get("since", 0))
            with emu.lock:
                out = [dict(r) for r in emu.blob_requests if r["seq"] > since]
            return self.send(200, out)
        if p == "/requests":
            since = int(self.q.get("since", 0))
            with emu.lock:
                out = [dict(r) for r in emu.requests if r["seq"] > since]
            return self.send(200, out)
        if p == "/reset" and m == "POST":
            with emu.lock:
                emu.faults = []
                if j.get("log", True):
                    emu.requests, emu.bodies, emu.blob_requests = [], [], []
                if j.get("state"):
                    emu.runner.cancel_all()
                    emu.computes, emu.ops, emu.jobs = {}, {}, {}
                    emu.codes, emu.code_versions, emu.envs, emu.env_versions = {}, {}, {}, {}
            for mod in emu.services.values():
                if hasattr(mod, "reset"):
                    mod.reset(emu, bool(j.get("state")))
            return self.send(200, {})
        if p == "/config" and m == "POST":
            with emu.lock:
                if "blob_endpoint" in j:  # Azurite started after us (it needs our certificate)
                    emu.set_blob(j.pop("blob_endpoint"))
                for k, v in j.items():
                    if k not in emu.cfg:
                        raise HttpError(400, "BadConfig", "unknown config key '%s' (known: %s)"
                                        % (k, ", ".join(sorted(emu.cfg))))
                    emu.cfg[k] = v
            return self.send(200, dict(emu.cfg, blob_public_endpoint=emu.public_blob))
        if p == "/seed" and m == "GET":
            return self.send(200, {k: v for k, v in emu.seed.items()
                                   if k not in ("service_principals", "storage_key", "cert_password")})
        if p == "/config" and m == "GET":
            return self.send(200, dict(emu.cfg, blob_public_endpoint=emu.public_blob))
        if p == "/tokens/expire" and m == "POST":
            with emu.lock:
                for t in emu.tokens.values():
                    t["exp"] = time.time() - 1
            return self.send(200, {"expired": len(emu.tokens)})
        if p == "/state" and m == "GET":
            import emu_arm
            with emu.lock:
                st = {"computes": {k: emu_arm.compute_view(emu, c) for k, c in emu.computes.items()},
                      "jobs": {k: jb.admin_view() for k, jb in emu.jobs.items()},
                      "codes": sorted("%s/%s" % k for k in emu.code_versions),
                      "environments": sorted("%s/%s" % k for k in emu.env_versions),
                      "tokens": len(emu.tokens), "config": emu.cfg}
                for name, mod in emu.services.items():
                    if hasattr(mod, "state"):
                        st[name] = mod.state(emu)
            return self.send(200, st)
        mm = re.match(r"^/blob/([^/]+)/(.+)$", p)
        if mm and m == "GET":
            if emu.blob is None:
                raise HttpError(404, "NoBlobStorage", "the emulator was started without --blob-endpoint")
            data = emu.blob.get(mm.group(1), urllib.parse.unquote(mm.group(2)))
            if data is None:
                raise HttpError(404, "BlobNotFound", "no blob %s/%s" % (mm.group(1), mm.group(2)))
            return self.send(200, raw=data, ctype="application/octet-stream")
        raise HttpError(404, "NotFound", "no admin call %s %s" % (m, path))

    # ---- ARM -----------------------------------------------------------------------------------
    def do_arm(self, path, body):
        import emu_arm
        emu_arm.handle(self, path, body)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--seed")
    ap.add_argument("--blob-endpoint")
    ap.add_argument("--lro-ms", type=int, default=300)
    ap.add_argument("--job-phase-ms", type=int, default=100)
    args = ap.parse_args()
    seed = dict(DEFAULT_SEED)
    if args.seed:
        with open(args.seed) as f:
            seed.update(json.load(f))
    os.makedirs(args.dir, exist_ok=True)
    emu = Emulator(args, seed)
    Handler.emu = emu
    emu.load_services()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(emu.dir, "server.pem"), os.path.join(emu.dir, "server.key"))
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    emu.port = httpd.server_address[1]

    class ImdsHandler(Handler):
        imds = True
    imdsd = Server(("127.0.0.1", 0), ImdsHandler)

    def stop(signum, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()
        threading.Thread(target=imdsd.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=imdsd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    for name, val in (("imds_port", imdsd.server_address[1]), ("port", emu.port)):
        with open(os.path.join(emu.dir, name + ".tmp"), "w") as f:
            f.write("%d\n" % val)
        os.rename(os.path.join(emu.dir, name + ".tmp"), os.path.join(emu.dir, name))
    log("listening: https 127.0.0.1:%d, imds http 127.0.0.1:%d, blob %s, specs %d ops"
        % (emu.port, imdsd.server_address[1], args.blob_endpoint, len(emu.spec.ops)))
    httpd.serve_forever(poll_interval=0.2)
    for srv in emu.planes.values():
        srv.shutdown()
    for mod in emu.services.values():
        if hasattr(mod, "stop"):
            mod.stop(emu)
    emu.runner.cancel_all(wait=True)
    log("stopped")


if __name__ == "__main__":
    main()
