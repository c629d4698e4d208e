"""A small web app for enjin: it serves on $PORT, answers /healthz, and logs each request."""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = os.environ.get("GREETING", "hello from python")
INSTANCE = os.environ.get("ENJIN_INSTANCE", "local")
RELEASE = os.environ.get("ENJIN_RELEASE", "dev")
# For trying out failed rollouts: the health check fails while this is set.
FAIL_HEALTH = os.environ.get("FAIL_HEALTH") == "1"


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, so the router can reuse its connections.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/healthz" and FAIL_HEALTH:
            self.send_error(503, "unhealthy on purpose (FAIL_HEALTH=1)")
            return
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            body = f"{GREETING} ({RELEASE}, {INSTANCE})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if self.path == "/healthz":
            return
        print(f"{self.command} {self.path} -> {fmt % args}", flush=True)


def main():
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    print(f"listening on port {port}", flush=True)
    print(f"{INSTANCE} starting", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
