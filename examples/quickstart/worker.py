"""A background worker: polls the API every few seconds and logs what it sees."""
import json
import os
import signal
import sys
import time
import urllib.request

API_URL = os.environ["API_URL"]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

while True:
    try:
        with urllib.request.urlopen(f"{API_URL}/items", timeout=2) as response:
            body = json.load(response)
        print(f"worker: {len(body['items'])} items, api served {body['served']} requests")
    except OSError as error:
        print(f"worker: api unreachable: {error}", file=sys.stderr)
    time.sleep(3)
