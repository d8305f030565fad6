"""A webhook receiver for the tests: an HTTP server on loopback that checks each POST's Standard Webhooks
signature with its own code (not the service's), records what came, and answers as scripted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, ok!!!").decode()


def signature_valid(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """The check a receiver makes (standardwebhooks.com): HMAC-SHA256 over "{id}.{timestamp}.{body}"."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    offered = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected.decode(), s) for s in offered)


class Receiver:
    """Records {headers, body, valid, at} per POST; answers `answers.pop(0)` (then 200) as the status."""

    def __init__(self, secret: str = SECRET, answers: list[int] | None = None, host: str = "127.0.0.1") -> None:
        self.secret, self.answers = secret, list(answers or [])
        self.received: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.changed:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.received.append({
                        "headers": headers, "body": json.loads(body), "status": status, "at": time.monotonic(),
                        "valid": signature_valid(receiver.secret, headers, body), "path": self.path,
                    })  # fmt: skip
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, condition: Any, timeout: float = 60) -> list[dict[str, Any]]:
        """Block until `condition(received)` holds (woken by each POST); TimeoutError after `timeout` s."""
        with self.changed:
            if not self.changed.wait_for(lambda: condition(self.received), timeout):
                raise TimeoutError(f"webhooks received: {[r['headers'].get('webhook-event') for r in self.received]}")
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
