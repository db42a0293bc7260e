"""A JSON API on $PORT: /items and /health."""
import json
import os
import pathlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA = json.loads(pathlib.Path(".locald-data.json").read_text())
HITS = {"count": 0}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = {"ok": True}
        elif self.path == "/items":
            HITS["count"] += 1
            body = {"items": DATA["items"], "served": HITS["count"]}
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        if self.path == "/health" or self.headers.get("User-Agent") == "locald-health":
            return
        print("api:", fmt % args, flush=True)


port = int(os.environ["PORT"])
print(f"api listening on 127.0.0.1:{port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
