#!/usr/bin/env python3
"""Tiny upstream servers for the demo: one per endpoint address in examples/demo.

Each answers every HTTP request with a line naming itself, so you can see where Envoy sent
the request. Stop with Ctrl-C.
"""
import http.server
import json
import socketserver
import sys
import threading

SERVERS = [
    ("frontend", "127.0.0.21", 8081),
    ("reviews-v1", "127.0.0.31", 9081),
    ("reviews-v2", "127.0.0.32", 9081),
    ("db", "127.0.0.41", 5433),
]


def handler(name):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"server": name, "path": self.path, "host": self.headers.get("Host")}) + "\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_POST = do_GET

        def log_message(self, fmt, *args):
            sys.stderr.write(f"{name}: {fmt % args}\n")

    return Handler


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    for name, ip, port in SERVERS:
        srv = Server((ip, port), handler(name))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        print(f"{name} listening on {ip}:{port}", flush=True)
    threading.Event().wait()
