"""The web process refuses before it reads (issue 10, items 5 and 3): a request body is checked
against the token and the size limit before any of it is read, on the JSON API and on the log
route (Django's ASGI handler, which would read a whole body first); JSON nested too deep is a
400; a webhook answered with a redirect is a failed attempt; env keys that steer BuildKit are
refused at submit time."""

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from builds.models import CallbackEvent, Job
from builds.services import callbacks
from tests.conftest import API_TOKEN, TEST_ROOT
from tests.support.webserver import WebServer

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CHUNK = 1024 * 1024


@pytest.fixture(scope="module")
def web_tmp():
    path = TEST_ROOT / f"web-tmp-{time.time_ns()}"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def web(django_db_setup, web_tmp):
    # Its own TMPDIR: a body spooled to disk would be a file opened there.
    server = WebServer(TEST_ROOT / "log" / f"web-refusals-{time.time_ns()}.log", workers=1,
                       env={"TMPDIR": str(web_tmp)})
    yield server
    server.stop()


def large_files_open_under(pids: list[int], directory: Path) -> list[str]:
    """Files over 64 KiB the processes hold open in `directory` (gunicorn keeps an empty
    heartbeat file there; a spooled body would be a big one, unlinked but still open)."""
    found = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target, size = os.readlink(fd), fd.stat().st_size
            except OSError:
                continue
            if target.startswith(str(directory)) and size > 64 * 1024:
                found.append(f"{target} ({size} bytes)")
    return found


class BodySender:
    """Sends a request head, then body bytes from a thread until told to stop (or the server
    stops taking them), while the test reads the answer on the same connection."""

    def __init__(self, port: int, head: bytes, pieces):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(head)
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._send, args=(pieces,), daemon=True)
        self.thread.start()

    def _send(self, pieces) -> None:
        try:
            for piece in pieces:
                if self.stop.is_set():
                    return
                self.sock.sendall(piece)
                self.sent += len(piece)
        except OSError:  # the server closed the connection: it had answered
            pass

    def answer(self, timeout: float) -> bytes:
        """The response head, or b"" if none came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        reply = b""
        while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            reply += chunk
        return reply

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=30)


def chunked(total: int):
    """A chunked body of `total` bytes without its terminating chunk: it never ends."""
    piece = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
    for _ in range(total // CHUNK):
        yield piece


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/v1/jobs/x/logs", "/api/v1/jobs"])
def test_a_chunked_body_without_a_token_is_refused_before_it_is_read(web, web_tmp, path):
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    sender = BodySender(web.port, head, chunked(40 * CHUNK))
    try:
        # The body never ends: a server that reads it before deciding never answers.
        reply = sender.answer(timeout=20)
        assert reply.split(b"\r\n", 1)[0] in (b"HTTP/1.1 401 Unauthorized", b"HTTP/1.1 411 Length Required"), reply[:300]
        assert large_files_open_under(web.worker_pids(), web_tmp) == []
    finally:
        sender.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/v1/jobs/x/logs", "/api/v1/jobs"])
def test_a_declared_oversized_body_is_refused_before_it_is_read(web, path):
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {40 * CHUNK}\r\n\r\n".encode()
    sender = BodySender(web.port, head, iter([b"x" * CHUNK]))
    try:
        reply = sender.answer(timeout=20)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    finally:
        sender.close()


@pytest.mark.django_db(transaction=True)
def test_the_log_route_takes_no_body_but_still_serves_logs(web):
    with httpx.Client(base_url=web.url, timeout=30) as client:
        response = client.request("GET", "/api/v1/jobs/none-such/logs", content=b"{}", headers=AUTH)
        assert response.status_code == 400 and response.json()["error"] == "BAD_REQUEST"
        response = client.post("/api/v1/jobs/none-such/logs", content=b"{}", headers=AUTH)
        assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD"
        # Without a body the route works as before.
        response = client.get("/api/v1/jobs/none-such/logs", headers=AUTH)
        assert response.status_code == 404 and response.json()["error"] == "JOB_NOT_FOUND"
        assert client.get("/api/v1/jobs/none-such/logs").status_code == 401


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("depth", [33, 5_000, 100_000])
def test_json_nested_too_deep_is_a_400(web, depth):
    raw = b"[" * depth + b"]" * depth
    assert len(raw) < 1024 * 1024
    response = httpx.post(f"{web.url}/api/v1/jobs", content=raw, timeout=30,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"] == "VALIDATION_ERROR"
    assert "nested" in response.json()["message"]


@pytest.mark.django_db(transaction=True)
def test_json_nesting_up_to_the_limit_and_brackets_in_strings_are_fine(web):
    job_id = f"deep-{time.time_ns()}"
    body = {"id": job_id, "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": "http://127.0.0.1:9/a.git"},
            "buildConfig": {"env": {"A": "[[[[{{{{" * 100}}, "ignored": json.loads("[" * 30 + "]" * 30)}
    response = httpx.post(f"{web.url}/api/v1/jobs", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 201, response.text[:300]
    Job.objects.filter(pk=job_id).update(status="canceled")


class _Redirecting(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path))
        if self.path == "/hook":
            self.send_response(self.server.status)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _answer


@pytest.mark.django_db
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_webhook_answered_with_a_redirect_is_a_failed_attempt(status):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    server.seen, server.status = [], status
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = Job.objects.create(id=f"hook-{status}", project_id="p", user_id="u", request_fingerprint="-",
                                 status="success", finished_at=timezone.now())
        event = CallbackEvent.objects.create(job=job, url=f"http://127.0.0.1:{server.server_port}/hook",
                                             body='{"id": "x"}', next_attempt_at=timezone.now())
        assert callbacks.deliver(event.pk) is False
        event.refresh_from_db()
        assert event.state == CallbackEvent.State.PENDING and event.attempts == 1
        assert event.attempt_log.get().http_status == status
        assert str(status) in event.last_error
        assert server.seen == [("POST", "/hook")]  # never followed, as a GET or otherwise
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["BUILDKIT_SYNTAX", "BUILDKIT_CONTEXT_KEEP_GIT_DIR", "BUILDKIT_INLINE_CACHE",
                                 "buildkit_syntax"])
def test_env_keys_that_steer_buildkit_are_refused(api, key):
    body = {"id": "bk", "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": "http://127.0.0.1:9/a.git"},
            "buildConfig": {"env": {"NODE_ENV": "production", key: "docker.io/evil/frontend"}, "secrets": []}}
    response = api.post("/api/v1/jobs", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()
    assert error["error"] == "VALIDATION_ERROR"
    assert key in str(error["fields"]["buildConfig"]["env"])
    assert not Job.objects.filter(pk="bk").exists()
