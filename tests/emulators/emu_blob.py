"""Blob storage client for the emulator (Azurite), stdlib only: Shared Key auth, service SAS.

The emulator uses it to fetch a job's code and inputs, stream its log into an append blob,
upload its outputs, and to sign the SAS URLs it hands out (startPendingUpload)."""
import base64
import datetime
import hashlib
import hmac
import http.client
import ssl
import urllib.parse
import xml.etree.ElementTree as ET

VERSION = "2021-08-06"


def _now_rfc1123():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


class BlobError(Exception):
    def __init__(self, status, text):
        Exception.__init__(self, "blob storage: HTTP %d: %s" % (status, text[:300]))
        self.status = status


class Blob:
    def __init__(self, endpoint, account, key_b64, cafile):
        """endpoint: https://127.0.0.1:PORT/devstoreaccount1 (path-style, as Azurite serves)."""
        self.endpoint = endpoint.rstrip("/")
        u = urllib.parse.urlsplit(self.endpoint)
        self.host, self.port = u.hostname, u.port or 443
        self.base_path = u.path  # /devstoreaccount1
        self.account = account
        self.key = base64.b64decode(key_b64)
        self.ctx = ssl.create_default_context(cafile=cafile)

    # ---- signing ------------------------------------------------------------------------------
    def _sign(self, method, path, query, headers):
        h = {k.lower(): v for k, v in headers.items()}
        length = h.get("content-length", "")
        if length == "0":
            length = ""
        parts = [method, h.get("content-encoding", ""), h.get("content-language", ""), length,
                 h.get("content-md5", ""), h.get("content-type", ""), "",
                 h.get("if-modified-since", ""), h.get("if-match", ""), h.get("if-none-match", ""),
                 h.get("if-unmodified-since", ""), h.get("range", "")]
        canon_h = "".join("%s:%s\n" % (k, h[k].strip()) for k in sorted(h) if k.startswith("x-ms-"))
        res = "/" + self.account + urllib.parse.quote(path, safe="/~")
        q = urllib.parse.parse_qs(query, keep_blank_values=True)
        for k in sorted(q, key=str.lower):
            res += "\n%s:%s" % (k.lower(), ",".join(sorted(q[k])))
        sts = "\n".join(parts) + "\n" + canon_h + res
        sig = base64.b64encode(hmac.new(self.key, sts.encode(), hashlib.sha256).digest()).decode()
        return "SharedKey %s:%s" % (self.account, sig)

    def request(self, method, container, name=None, query="", body=b"", headers=None, ok=(200, 201, 202)):
        path = self.base_path + "/" + container + ("/" + name if name else "")
        hdrs = {"x-ms-date": _now_rfc1123(), "x-ms-version": VERSION,
                "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        hdrs["Authorization"] = self._sign(method, path, query, hdrs)
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
        try:
            conn.request(method, urllib.parse.quote(path, safe="/~") + ("?" + query if query else ""),
                         body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            if r.status not in ok:
                raise BlobError(r.status, data.decode("utf-8", "replace"))
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
        finally:
            conn.close()

    # ---- operations ----------------------------------------------------------------------------
    def create_container(self, container):
        try:
            self.request("PUT", container, query="restype=container")
        except BlobError as e:
            if e.status != 409:
                raise

    def put(self, container, name, data):
        self.request("PUT", container, name, body=data, headers={"x-ms-blob-type": "BlockBlob"})

    def create_append(self, container, name):
        self.request("PUT", container, name, headers={"x-ms-blob-type": "AppendBlob"})

    def append(self, container, name, data):
        for i in range(0, len(data), 4 << 20):
            self.request("PUT", container, name, query="comp=appendblock", body=data[i:i + (4 << 20)])

    def get(self, container, name):
        """The blob's bytes, or None when it does not exist."""
        try:
            return self.request("GET", container, name)[2]
        except BlobError as e:
            if e.status == 404:
                return None
            raise

    def list(self, container, prefix=""):
        """[(name, size)] of every blob under prefix."""
        out, marker = [], ""
        while True:
            q = "restype=container&comp=list&maxresults=5000&prefix=" + urllib.parse.quote(prefix, safe="")
            if marker:
                q += "&marker=" + urllib.parse.quote(marker, safe="")
            try:
                data = self.request("GET", container, query=q)[2]
            except BlobError as e:
                if e.status == 404:
                    return out
                raise
            root = ET.fromstring(data)
            for b in root.iter("Blob"):
                size = b.find("Properties/Content-Length")
                out.append((b.findtext("Name"), int(size.text) if size is not None else 0))
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return out

    # ---- SAS -----------------------------------------------------------------------------------
    def container_sas(self, container, perms="racwdl", hours=24):
        """A service SAS query string for the container (signed with the account key)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        st = (now - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        se = (now + datetime.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
        canon = "/blob/%s/%s" % (self.account, container)
        # string-to-sign of service SAS version 2020-12-06 and later
        sts = "\n".join([perms, st, se, canon, "", "", "https", VERSION, "c", "", "",
                         "", "", "", "", ""])
        sig = base64.b64encode(hmac.new(self.key, sts.encode(), hashlib.sha256).digest()).decode()
        q = [("sv", VERSION), ("st", st), ("se", se), ("sr", "c"), ("sp", perms),
             ("spr", "https"), ("sig", sig)]
        return urllib.parse.urlencode(q)

    def url(self, container, name=""):
        return "%s/%s%s" % (self.endpoint, container, "/" + urllib.parse.quote(name) if name else "")
