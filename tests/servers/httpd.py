#!/usr/bin/env python3
"""HTTP(S) peer for tests/test_http.c: Python standard library only.

    httpd.py PORTFILE [CERT KEY]

Binds 127.0.0.1 on a free port, writes the port to PORTFILE once listening, serves until
killed.  Behaviour by path:
    /echo               JSON: method, path, x_test header, body
    /fail/KEY/N/CODE    CODE for the first N requests of KEY, then 200 "ok";
                        ?ra=S adds "Retry-After: S", ?rad=S the same as an HTTP date,
                        ?rams=MS "x-ms-retry-after-ms: MS"
    /count/KEY          how many requests /fail/KEY/... has seen
    /status/CODE        always CODE
    /stall              sleeps 300 s before answering (longer than any client timeout)
    /drop/KEY/N         closes the connection without an answer for the first N requests
                        of KEY, then 200 "ok" (counted like /fail)
    http://...          (an absolute URI: used as a proxy) 200 "proxied URI"
"""
import email.utils
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

counts = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, code, body, headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("http://"):
            return self.reply(200, "proxied " + self.path)
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = parse_qs(url.query)
        if parts[0] == "echo":
            return self.reply(200, json.dumps({
                "method": self.command, "path": self.path,
                "x_test": self.headers.get("X-Test"), "body": body.decode(errors="replace")}))
        if parts[0] == "fail" and len(parts) == 4:
            key, n, code = parts[1], int(parts[2]), int(parts[3])
            with lock:
                counts[key] = counts.get(key, 0) + 1
                seen = counts[key]
            if seen <= n:
                hdrs = []
                if "ra" in query:
                    hdrs.append(("Retry-After", query["ra"][0]))
                if "rad" in query:  # the HTTP-date form, S seconds from now
                    hdrs.append(("Retry-After", email.utils.formatdate(
                        time.time() + int(query["rad"][0]), usegmt=True)))
                if "rams" in query:  # Azure's millisecond header
                    hdrs.append(("x-ms-retry-after-ms", query["rams"][0]))
                return self.reply(code, "try again", hdrs)
            return self.reply(200, "ok")
        if parts[0] == "drop" and len(parts) == 3:
            key, n = parts[1], int(parts[2])
            with lock:
                counts[key] = counts.get(key, 0) + 1
                seen = counts[key]
            if seen <= n:
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            return self.reply(200, "ok")
        if parts[0] == "count":
            with lock:
                return self.reply(200, str(counts.get(parts[1], 0)))
        if parts[0] == "status":
            return self.reply(int(parts[1]), "status " + parts[1])
        if parts[0] == "stall":
            time.sleep(300)
            return self.reply(200, "late")
        return self.reply(404, "no such path")

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = handle_any


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if len(sys.argv) == 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
