"""`make demo`'s look at `loramix serve`: start it on a folder of LoRAs, fetch the page and one preview of the
first two LoRAs at 0.7 each, and stop it. Every request is bounded in time; the server never outlives this.

    python scripts/serve_demo.py build/demo/loras
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from loramix.testing import start_server, stop_server

TIMEOUT = 120  # seconds for one request: a preview takes well under one on the toy base


def fetch(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return response.read()


def main() -> None:
    folder = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as scratch:
        process, url = start_server([str(folder)], cwd=".", log=Path(scratch) / "serve.log")
        try:
            print(f"loramix serve --loras {folder}: {url}")
            assert b"<title>loramix serve</title>" in fetch(url)
            names = [entry["name"] for entry in json.loads(fetch(url + "api/loras"))["loras"] if not entry["error"]]
            body = {"loras": [{"name": name, "weight": 0.7} for name in names[:2]], "count": 4,
                    "prompt": "a face with a mustache and lipstick"}
            preview = json.loads(fetch(url + "api/preview", body))
            out = folder.parent / "serve-preview.png"
            out.write_bytes(base64.b64decode(preview["images"][0].split(",", 1)[1]))
            print(f"  {len(names)} LoRAs listed; a preview of 4 images rendered in {preview['render_seconds']:.3f} s")
            for k, reading in enumerate(preview["judge"] or []):
                print(f"  image {k}: " + ", ".join(f"{name} {score:.2f}" for name, score in reading.items()))
            print(f"  reproduce it: {preview['commands']['compose']}")
            print(f"  wrote {out} (with its parameters text)")
        finally:
            stop_server(process)


if __name__ == "__main__":
    main()
