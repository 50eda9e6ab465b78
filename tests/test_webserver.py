"""The real web process (configs/Procfile's web line, hubfly/asgi.py): the JSON API runs in a
thread pool that keeps database connections, reads of jobs are answered in the event loop
without one, and request bodies are checked before anything reads them."""

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.conftest import API_TOKEN, TEST_ROOT
from tests.support.webserver import WebServer

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def web(django_db_setup):
    server = WebServer(TEST_ROOT / "log" / f"web-{time.time_ns()}.log", workers=1)
    yield server
    server.stop()


def raw_request(web, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", web.port), timeout=30) as sock:
        sock.sendall(head + body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def test_a_body_declared_too_large_is_refused_without_being_sent(web):
    head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
    reply = raw_request(web, head, b"{")  # the 50 MiB never come
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_a_chunked_body_gets_a_clear_error(web):
    def chunks():
        yield b'{"id": "chunked"}'

    response = httpx.post(f"{web.url}/api/v1/jobs", content=chunks(), timeout=30,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 411
    assert response.json()["error"] == "LENGTH_REQUIRED"


def open_database_files(pid: int) -> int:
    database = Path(os.environ["DATA_DIR"]) / "hubfly.sqlite3"
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == str(database)
        except OSError:
            pass
    return count


def test_api_threads_keep_their_database_connections(web):
    with httpx.Client(base_url=web.url, headers=AUTH, timeout=30) as client:
        for _ in range(20):
            assert client.get("/api/v1/jobs/none-such").status_code == 404
    (worker,) = web.worker_pids()
    # Each request has ended; a connection closed after every request would leave none open.
    assert 1 <= open_database_files(worker) <= int(os.environ.get("WEB_THREADS", "8"))


@pytest.mark.skipif(connection.vendor != "sqlite", reason="reads are answered in the loop on SQLite only; on "
                    "PostgreSQL they run in the threads (builds.api.reads)")
def test_job_reads_are_answered_in_the_event_loop_without_a_thread(web):
    """Eight clients reading at once would make the thread pool start up to eight threads;
    answered in the loop, the worker keeps the threads it had."""
    body = {"id": f"loop-{time.time_ns()}", "projectId": "loop", "userId": "loop",
            "sourceInfo": {"gitRepository": "http://127.0.0.1:9/app.git"}}
    with httpx.Client(base_url=web.url, headers=AUTH, timeout=30) as client:
        assert client.post("/api/v1/jobs", json=body).status_code == 201
        assert client.post(f"/api/v1/jobs/{body['id']}/cancel").status_code == 202  # no places to compute
    (worker,) = web.worker_pids()
    before = len(os.listdir(f"/proc/{worker}/task"))

    def read(_):
        with httpx.Client(base_url=web.url, headers=AUTH, timeout=30) as client:
            return {client.get(f"/api/v1/jobs/{body['id']}").status_code for _ in range(25)} | {
                client.get("/api/v1/jobs", params={"projectId": "loop"}).status_code}

    with ThreadPoolExecutor(8) as pool:
        assert set().union(*pool.map(read, range(8))) == {200}
    assert len(os.listdir(f"/proc/{worker}/task")) == before
