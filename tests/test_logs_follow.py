"""Live logs (issue 4 item 2): `?follow=true` and Server-Sent Events served
by the real web process (the Procfile's gunicorn + uvicorn worker), offsets, resuming with
Last-Event-ID, and followers that never block other requests."""

import re
import threading
import time
import uuid

import httpx
import pytest

from builds.joblog import writer
from builds.models import Job, LogChunk
from tests.conftest import API_TOKEN, TEST_ROOT, wait_for
from tests.support.jobs import new_id, submit, wait_final
from tests.support.webserver import WebServer

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
EVENTS = {**AUTH, "Accept": "text/event-stream"}


def ten_lines() -> str:
    """A Dockerfile whose RUN step prints a line a second; unique, so BuildKit cannot cache it."""
    return f"FROM debian:bookworm-slim\nRUN echo {uuid.uuid4().hex} && for i in $(seq 1 10); do echo line $i; sleep 1; done\n"


def printed_numbers(text: str) -> list[int]:
    return [int(m[1]) for line in text.splitlines() if (m := re.search(r"\bline (\d+)$", line))]


@pytest.fixture(scope="module")
def web(django_db_setup):
    """One ASGI worker process: the strictest case for "one follower never blocks the others"."""
    server = WebServer(TEST_ROOT / "log" / f"web-follow-{time.time_ns()}.log", workers=1)
    yield server
    server.stop()


def read_events(response, stop=None):
    """Parse an SSE stream into (event, id, data) tuples; `stop(events)` ends reading early."""
    events, fields = [], {"data": []}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line == "":
            if fields.get("id") is not None or fields["data"]:
                events.append((fields.get("event", "message"), fields.get("id"), "\n".join(fields["data"])))
            fields = {"data": []}
            if stop and stop(events):
                break
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            fields["data"].append(value)
        else:
            fields[name] = value
    return events


def log_lines_text(events) -> str:
    return "".join(data + "\n" for event, _, data in events if event == "message")


def make_job(status: str = "building") -> str:
    job = Job.objects.create(
        id=new_id("follow"), project_id="p", user_id="u", source_info={"gitRepository": "http://127.0.0.1:9/x.git"},
        request_fingerprint="-", status=status,
    )
    return job.id


def full_log(web, job_id: str) -> str:
    response = httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs", headers=AUTH, timeout=30)
    assert response.status_code == 200
    return response.text


# --- against a real build ------------------------------------------------------------------------


@pytest.mark.e2e
def test_event_follower_resumes_with_last_event_id_without_gaps_or_duplicates(api, web, worker, git_server):
    repo = git_server.repo(new_id("sse"))
    repo.commit({"Dockerfile": ten_lines()})
    job_id = submit(api, repo.url)
    url = f"{web.url}/api/v1/jobs/{job_id}/logs"

    # First connection: read until the build has printed its third line, then drop it.
    with httpx.stream("GET", url, headers=EVENTS, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = read_events(response, stop=lambda evs: "line 3" in log_lines_text(evs))
    assert Job.objects.get(pk=job_id).status == "building", "the build should still be running"
    last_id = first[-1][1]

    # Second connection resumes after the last event it saw and runs to the end of the job.
    with httpx.stream("GET", url, headers={**EVENTS, "Last-Event-ID": last_id}, timeout=120) as response:
        assert response.headers["x-log-start"] == last_id
        second = read_events(response)
    assert second[-1][0] == "end"
    assert '"status": "success"' in second[-1][2]

    received = log_lines_text(first) + log_lines_text(second)
    assert received == full_log(web, job_id)
    assert printed_numbers(received) == list(range(1, 11)), received
    ids = [int(event_id) for event, event_id, _ in first + second if event == "message"]
    assert ids == sorted(set(ids)), "event ids must strictly increase"
    assert wait_final(job_id).status == "success"


@pytest.mark.e2e
def test_plain_follow_streams_lines_while_the_build_runs_and_ends_with_the_job(api, web, worker, git_server):
    repo = git_server.repo(new_id("follow"))
    repo.commit({"Dockerfile": ten_lines()})
    job_id = submit(api, repo.url)
    received, arrivals = b"", {}
    with httpx.stream("GET", f"{web.url}/api/v1/jobs/{job_id}/logs?follow=true", headers=AUTH, timeout=120) as response:
        assert response.status_code == 200 and response.headers["x-log-start"] == "0"
        for piece in response.iter_bytes():
            received += piece
            for i in (1, 10):
                if f"line {i}\n".encode() in received and i not in arrivals:
                    arrivals[i] = (time.monotonic(), Job.objects.get(pk=job_id).status)
    assert arrivals[1][1] == "building", "line 1 should arrive while the build still runs"
    assert arrivals[10][0] - arrivals[1][0] > 5, "lines should arrive as they are printed, not at the end"
    job = Job.objects.get(pk=job_id)
    assert job.status == "success"
    assert received.decode() == full_log(web, job_id)


# --- without a build: the stream's rules ---------------------------------------------------------


def test_followers_never_block_other_requests(web):
    """25 clients follow a 4 MB log of a running job and read nothing (their sockets fill up);
    the single web worker still answers other requests at once."""
    job_id = make_job()
    line = b"[2026-01-01T00:00:00.000Z] " + b"x" * 1000 + b"\n"
    for _ in range(64):
        writer.append_chunk(job_id, line * 64)
    stop = threading.Event()
    opened = []

    def stuck_follower():
        with httpx.stream("GET", f"{web.url}/api/v1/jobs/{job_id}/logs", headers=EVENTS, timeout=60) as response:
            opened.append(response.status_code)
            stop.wait(60)

    threads = [threading.Thread(target=stuck_follower, daemon=True) for _ in range(25)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(opened) == 25, 30, "25 followers to connect")
        for path, headers in (("/healthz", {}), (f"/api/v1/jobs/{job_id}", AUTH), ("/api/v1/jobs", AUTH)):
            started = time.monotonic()
            response = httpx.get(web.url + path, headers=headers, timeout=10)
            assert response.status_code == 200, (path, response.text)
            assert time.monotonic() - started < 2, f"{path} waited behind the followers"
    finally:
        stop.set()
        Job.objects.filter(pk=job_id).update(status="success")
        for thread in threads:
            thread.join(30)


def test_plain_request_keeps_offset_semantics(web):
    job_id = make_job("success")
    end = writer.append_text(job_id, "first line")
    writer.append_text(job_id, "second line")
    response = httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs?offset={end}", headers=AUTH, timeout=10)
    assert response.status_code == 200
    assert response.headers["x-log-offset"] == str(writer.log_end(job_id))
    assert response.text.endswith("] second line\n") and "first line" not in response.text


def test_follow_of_a_finished_job_returns_the_rest_and_ends(web):
    job_id = make_job("failed")
    writer.append_text(job_id, "one\ntwo")
    with httpx.stream("GET", f"{web.url}/api/v1/jobs/{job_id}/logs", headers={**EVENTS, "Last-Event-ID": "0"},
                      timeout=10) as response:
        events = read_events(response)
    assert [e[0] for e in events] == ["message", "end"]
    assert events[0][1] == str(writer.log_end(job_id)) and events[0][2].endswith("] two")
    assert '"status": "failed"' in events[1][2]


def test_events_cover_a_trimmed_log_with_one_gap_marker(web, settings):
    """The middle of an over-long log is deleted; a follower gets a marker and correct offsets."""
    job_id = make_job("success")
    for i in range(6):
        writer.append_chunk(job_id, f"chunk {i}\n".encode() * 100)
    size = len(b"chunk 0\n" * 100)
    LogChunk.objects.filter(job_id=job_id, offset__in=[2 * size, 3 * size]).delete()
    with httpx.stream("GET", f"{web.url}/api/v1/jobs/{job_id}/logs?offset=5", headers=EVENTS, timeout=10) as response:
        events = read_events(response)
    text = log_lines_text(events)
    assert text.count("bytes of log omitted") == 1
    assert "chunk 2" not in text and "chunk 3" not in text and "chunk 5" in text
    assert events[-1][0] == "end" and f'"offset": {6 * size}' in events[-1][2]


@pytest.mark.parametrize("query,headers,status,code", [
    ("?offset=-1", AUTH, 400, "VALIDATION_ERROR"),
    ("?follow=maybe", AUTH, 400, "VALIDATION_ERROR"),
    ("", {**EVENTS, "Last-Event-ID": "abc"}, 400, "VALIDATION_ERROR"),
    ("", {}, 401, "UNAUTHORIZED"),
    ("", {"Authorization": "Bearer wrong"}, 401, "UNAUTHORIZED"),
])
def test_bad_log_requests_get_json_errors(web, query, headers, status, code):
    job_id = make_job("success")
    writer.append_text(job_id, "x")
    response = httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs{query}", headers=headers, timeout=10)
    assert response.status_code == status
    assert response.json()["error"] == code


def test_unknown_job_and_missing_log_are_404(web):
    response = httpx.get(f"{web.url}/api/v1/jobs/nope/logs?follow=true", headers=AUTH, timeout=10)
    assert response.status_code == 404 and response.json()["error"] == "JOB_NOT_FOUND"
    job_id = make_job("failed")
    response = httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs", headers=AUTH, timeout=10)
    assert response.status_code == 404 and response.json()["error"] == "BUILD_LOG_NOT_FOUND"
