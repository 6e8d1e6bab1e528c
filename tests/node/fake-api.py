#!/usr/bin/env python3
"""A stand-in for the Kubernetes API server's node endpoint, for the
DaemonSet test: GET /api/v1/nodes/<name> answers a node whose
status.nodeInfo.containerRuntimeVersion is argv[3]; PATCH records its
body, one line per request, in argv[2]. Listens on 127.0.0.1:argv[1]."""
import http.server
import json
import sys

port, log, runtime = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Node(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with open(log, "a") as f:
            f.write(f"GET {self.path}\n")
        self.answer({"kind": "Node", "status": {"nodeInfo": {"containerRuntimeVersion": runtime}}})

    def do_PATCH(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        with open(log, "a") as f:
            f.write(f"PATCH {self.path} {self.headers.get('Content-Type')} {body}\n")
        self.answer({"kind": "Node"})

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", port), Node).serve_forever()
