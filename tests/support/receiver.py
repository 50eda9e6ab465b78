"""A real HTTP server that records the callbacks it receives and answers as told."""

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = self.server.owner.status_for_next()
        self.server.owner.record(Received({k.lower(): v for k, v in self.headers.items()}, body, time.time(), status))
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class CallbackReceiver:
    def __init__(self, host: str = "127.0.0.1"):
        self.httpd = ThreadingHTTPServer((host, 0), _Handler)
        self.httpd.owner = self
        self.httpd.daemon_threads = True
        self.received: list[Received] = []
        self.status = 200
        self._lock = threading.Lock()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/hooks/build"

    def status_for_next(self) -> int:
        return self.status

    def record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def for_job(self, job_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.json.get("id") == job_id]

    def wait_for(self, job_id: str, timeout: float = 30, count: int = 1) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [r for r in self.for_job(job_id) if 200 <= r.answered < 300]
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"no callback for {job_id} within {timeout}s; got {self.for_job(job_id)}")

    def close(self) -> None:
        self.httpd.shutdown()
