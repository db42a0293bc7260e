"""The front end on $PORT: renders the API's items, fetched through $API_URL."""
import json
import os
import urllib.request
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_URL = os.environ["API_URL"]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with urllib.request.urlopen(f"{API_URL}/items", timeout=2) as response:
            items = json.load(response)["items"]
        rows = "".join(f"<li>{escape(item)}</li>" for item in items)
        payload = f"<h1>quickstart</h1><p>from {escape(API_URL)}</p><ul>{rows}</ul>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        if self.path == "/health" or self.headers.get("User-Agent") == "locald-health":
            return
        print("web:", fmt % args, flush=True)


port = int(os.environ["PORT"])
print(f"web listening on 127.0.0.1:{port}, API at {API_URL}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
