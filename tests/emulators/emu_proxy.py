"""A TLS reverse proxy in front of Azurite, on its own port (DIR/blob_port): every blob request
of the product goes through it, so blob traffic can be counted (bytes on the wire) and
faulted (429/500, a connection dropped before or in the middle of an upload) like ARM's.
Requests and answers pass unchanged (Shared Key and SAS signatures do not cover the host).
Faults apply here only when they say "target": "blob"; the log is /_emulator/blob_requests."""
import http.client
import http.server
import re
import socket
import ssl
import threading
import time

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te",
       "trailer", "upgrade", "host"}


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    emu = None

    def log_message(self, fmt, *a):
        pass

    def do_GET(self):
        self.forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def upstream(self):
        c = getattr(self, "_up", None)
        if c is None:
            b = self.emu.blob
            c = self._up = http.client.HTTPSConnection(b.host, b.port, context=b.ctx, timeout=60)
        return c

    def forward(self):
        emu = self.emu
        n = int(self.headers.get("Content-Length") or 0)
        path = self.path.split("?", 1)[0]
        with emu.lock:
            emu.seq += 1
            rec = {"seq": emu.seq, "method": self.command, "path": path,
                   "query": re.sub(r"(?i)(sig=)[^&]*", r"\1REDACTED", self.path.partition("?")[2]),
                   "status": None, "body_size": n, "t": round(time.time(), 3), "server": "blob"}
            emu.blob_requests.append(rec)
        f = emu.take_fault(self.command, path, ("status", "drop"), target="blob")
        if f and f.get("action") == "drop":
            rec["fault"] = f["id"]
            keep = int(f.get("after_bytes", n))
            if keep:
                self.rfile.read(min(keep, n))
            rec["status"] = 0
            rec["body_received"] = min(keep, n)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        body = self.rfile.read(n) if n else b""
        if f:
            rec["fault"] = f["id"]
            st = int(f.get("status", 500))
            code = f.get("code") or {429: "TooManyRequests", 500: "InternalError", 503: "ServerBusy"}.get(st, "Fault")
            data = ('<?xml version="1.0" encoding="utf-8"?><Error><Code>%s</Code><Message>Injected fault %d '
                    '(emulator).</Message></Error>' % (code, st)).encode()
            self.send_response(st)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-error-code", code)
            if "retry_after" in f:
                self.send_header("Retry-After", str(f["retry_after"]))
            self.end_headers()
            self.wfile.write(data)
            rec["status"] = st
            return
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        hdrs["Content-Length"] = str(len(body))
        for attempt in (0, 1):  # a kept-alive upstream connection Azurite closed: once more
            try:
                c = self.upstream()
                c.request(self.command, self.path, body=body, headers=hdrs)
                r = c.getresponse()
                data = r.read()
                break
            except (http.client.HTTPException, OSError):
                self._up = None
                if attempt:
                    self.send_error(502)
                    rec["status"] = 502
                    return
        self.send_response(r.status, r.reason)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", r.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        rec["status"] = r.status
        rec["response_size"] = len(data)


def start(emu, server_cls, cert, key):
    class H(ProxyHandler):
        pass
    H.emu = emu
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = server_cls(("127.0.0.1", 0), H)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return srv
