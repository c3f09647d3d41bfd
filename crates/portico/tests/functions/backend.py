"""A plain HTTP backend for instance/IP target group tests (Python stdlib only).

    backend.py NAME PORT     (PORT 0 picks a free one; the first line printed is the port)

GET /health answers 200. GET /count answers how many other requests it served. GET /status/CODE answers CODE. GET /slow sleeps 3 s first. Anything else answers 200 with JSON:
the backend's name, the path with its query, the request headers (lower-cased names) and
the body's length, so tests can see what the load balancer sent.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1]
SERVED = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle holds the body back
    # for the client's delayed ACK (40 ms per request).
    disable_nagle_algorithm = True

    def answer(self):
        global SERVED
        if self.path == "/count":
            payload = str(SERVED).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if self.path != "/health":
            SERVED += 1
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/slow":
            time.sleep(3)
        status = 200
        if self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        payload = json.dumps(
            {
                "backend": NAME,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": len(body),
            }
        ).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-backend", NAME)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = answer
    do_POST = answer
    do_DELETE = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
