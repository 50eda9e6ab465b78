"""Live log followers are cheap and capped (issue 11 item 7), against the real web process: many
followers of one job cost no thread and no database connection each, and beyond
MAX_LOG_FOLLOWERS a web process answers 429."""

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from builds.joblog import writer
from builds.models import Job
from tests.conftest import API_TOKEN, TEST_ROOT, wait_for
from tests.support.jobs import new_id
from tests.support.webserver import WebServer

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
EVENTS = {**AUTH, "Accept": "text/event-stream"}
CAP = 40


@pytest.fixture(scope="module")
def web(django_db_setup):
    server = WebServer(TEST_ROOT / "log" / f"web-limits-{time.time_ns()}.log", workers=1,
                       env={"MAX_LOG_FOLLOWERS": str(CAP)})
    yield server
    server.stop()


def running_job(text: str) -> str:
    job = Job.objects.create(id=new_id("limits"), project_id="p", user_id="u", source_info={},
                             request_fingerprint="-", status="building")
    writer.append_text(job.id, text)
    return job.id


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_database_files(pid: int) -> int:
    """Descriptors on the SQLite database and its WAL file: two per open connection."""
    database = str(Path(os.environ["DATA_DIR"]) / "hubfly.sqlite3")
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith(database)
        except OSError:
            pass
    return count


class Followers:
    """`n` clients that follow a log as Server-Sent Events and hold their streams open."""

    def __init__(self, web, job_id: str, n: int, headers=EVENTS, query: str = ""):
        self.statuses, self.first_events = [], []
        self._stop = threading.Event()
        url = f"{web.url}/api/v1/jobs/{job_id}/logs{query}"
        self._threads = [threading.Thread(target=self._follow, args=(url, headers), daemon=True) for _ in range(n)]
        for thread in self._threads:
            thread.start()

    def _follow(self, url, headers):
        with httpx.stream("GET", url, headers=headers, timeout=60) as response:
            self.statuses.append(response.status_code)
            chunks = response.iter_raw()  # kept: dropping the iterator would close the stream
            if response.status_code == 200:
                next(chunks)  # the log so far has arrived: the follower is live
                self.first_events.append(True)
            self._stop.wait(60)

    def close(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_followers_of_one_job_cost_no_thread_or_connection_each(web):
    job_id = running_job("started")
    (worker,) = web.worker_pids()
    assert httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs", headers=AUTH, timeout=10).status_code == 200
    idle_threads, idle_files = threads(worker), open_database_files(worker)
    followers = Followers(web, job_id, CAP)
    try:
        wait_for(lambda: len(followers.first_events) == CAP, 60, f"{CAP} followers to get the log")
        writer.append_text(job_id, "more")  # the followers' shared reader picks it up
        busy_threads, busy_files = threads(worker), open_database_files(worker)
    finally:
        followers.close()
        Job.objects.filter(pk=job_id).update(status="success")
    assert busy_threads - idle_threads <= 4, f"{CAP} followers took {busy_threads - idle_threads} threads"
    assert busy_files - idle_files <= 4, f"{CAP} followers opened {busy_files - idle_files} database files"
    # Nothing stays behind once they have gone.
    wait_for(lambda: open_database_files(worker) <= idle_files, 30, "the followers' database files to be closed")


def test_followers_beyond_the_cap_get_429_and_slots_come_back(web):
    job_id = running_job("started")
    followers = Followers(web, job_id, CAP)
    try:
        wait_for(lambda: len(followers.first_events) == CAP, 60, f"{CAP} followers to get the log")
        for headers, query in ((EVENTS, ""), (AUTH, "?follow=true")):
            response = httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs{query}", headers=headers, timeout=10)
            assert response.status_code == 429, response.text
            assert response.json()["error"] == "TOO_MANY_FOLLOWERS"
            assert response.headers["retry-after"].isdigit()
        # Reading the log without following is not limited.
        assert httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs", headers=AUTH, timeout=10).status_code == 200
    finally:
        followers.close()

    # The clients went away: their slots are free again.
    def follower_accepted():
        with httpx.stream("GET", f"{web.url}/api/v1/jobs/{job_id}/logs", headers=EVENTS, timeout=10) as response:
            return response.status_code == 200

    wait_for(follower_accepted, 30, "a slot to come back")
    Job.objects.filter(pk=job_id).update(status="success")


def test_followers_sharing_a_reader_all_get_every_line_and_the_end(web):
    job_id = running_job("line 0")
    received = {}

    def follow(i):
        with httpx.stream("GET", f"{web.url}/api/v1/jobs/{job_id}/logs?follow=true", headers=AUTH,
                          timeout=60) as response:
            received[i] = b"".join(response.iter_raw())

    threads_ = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(10)]
    for thread in threads_:
        thread.start()
    for n in range(1, 30):
        writer.append_text(job_id, f"line {n}")
    Job.objects.filter(pk=job_id).update(status="success")
    for thread in threads_:
        thread.join(60)
    full = httpx.get(f"{web.url}/api/v1/jobs/{job_id}/logs", headers=AUTH, timeout=10).content
    assert len(received) == 10
    assert all(text == full for text in received.values())


def test_readers_hold_no_connection_once_the_reads_are_done():
    """A reader closes its connection before it waits for work. Closing "after a read if the queue
    looked empty" let another reader take the queued read, and this one wait holding a connection
    (the test above then saw a database file stay open)."""
    from django.db import connections

    from builds.joblog.reader import Readers

    readers, used = Readers(threads=4), {}

    def read(i):
        connections["default"].ensure_connection()
        used[threading.get_ident()] = connections["default"]

    async def burst():
        await asyncio.gather(*(readers.run(read, i) for i in range(24)))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave at every few bytecodes: races show up
    try:
        for _ in range(50):
            asyncio.run(burst())
            wait_for(lambda: all(c.connection is None for c in used.values()), 5,
                     "every reader to close its connection once nothing is queued")
    finally:
        sys.setswitchinterval(switch)
