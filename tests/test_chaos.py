"""200 jobs from 8 concurrent clients through the real web process while the build worker is
SIGKILLed and restarted twice (issue 5): every job ends once, none is built twice, the API
never answers 5xx, and no process logs "database is locked"."""

import http.client
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter

import pytest

from builds.models import FINAL_STATUSES, CallbackEvent, Job
from tests.conftest import API_TOKEN, TEST_ROOT, wait_for
from tests.support.webserver import WebServer

# In the `waits` session: it is four minutes of mostly waiting for builds and restarts, the
# longest test of the main session otherwise.
pytestmark = [pytest.mark.e2e, pytest.mark.waits, pytest.mark.usefixtures("live_db")]

JOBS = int(os.environ.get("HUBFLY_TEST_CHAOS_JOBS", 200))
CLIENTS = 8


def client_run(url: str, repo_url: str, ids: list[str], statuses: Counter, lock: threading.Lock) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
    for job_id in ids:
        body = json.dumps({"id": job_id, "projectId": "chaos", "userId": "tester",
                           "sourceInfo": {"gitRepository": repo_url}, "buildConfig": {"env": {"N": job_id}}})
        for method, path, payload in (("POST", "/api/v1/jobs", body), ("GET", f"/api/v1/jobs/{job_id}", None)):
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
            with lock:
                statuses[response.status] += 1


def test_two_hundred_jobs_survive_two_worker_kills(worker, git_server, receiver):
    repo = git_server.repo("chaos")
    repo.commit({"Dockerfile": "FROM scratch\nARG N\nCOPY data.txt /\n", "data.txt": "chaos\n"})
    web = WebServer(TEST_ROOT / "log" / "web-chaos.log", workers=2)
    ids = [f"chaos-{uuid.uuid4().hex[:12]}" for _ in range(JOBS)]
    statuses: Counter = Counter()
    lock = threading.Lock()
    threads = [threading.Thread(target=client_run, args=(web.url, repo.url, ids[i::CLIENTS], statuses, lock))
               for i in range(CLIENTS)]
    # Only what processes log during this test counts: other tests lock the database on purpose.
    logged_before = {path: path.stat().st_size for path in (TEST_ROOT / "log").iterdir() if path.is_file()}
    try:
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for _ in range(2):  # kill the build worker mid-stream, twice, and bring it back
            wait_for(lambda: Job.objects.filter(pk__in=ids, status="building").exists(), 60, "a running build")
            os.kill(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
            time.sleep(1)
            worker.start()
        for thread in threads:
            thread.join()
        wait_for(lambda: Job.objects.filter(pk__in=ids, status__in=FINAL_STATUSES).count() == JOBS, 600,
                 "every job to end")
        elapsed = time.monotonic() - started
        wait_for(lambda: CallbackEvent.objects.filter(job_id__in=ids, state="delivered").count() == JOBS, 60,
                 "every callback")
    finally:
        web.stop()
    assert set(statuses) <= {200, 201}, statuses
    jobs = list(Job.objects.filter(pk__in=ids))
    assert Counter(job.status for job in jobs) == Counter({"success": JOBS})
    retried = [job for job in jobs if job.retry_count]
    assert len(retried) <= 2 * 2, "more jobs were retried than two kills of a two-slot worker can explain"
    assert all(job.attempts == job.retry_count + 1 for job in jobs)
    delivered = Counter(r.json["id"] for r in receiver.received if r.answered == 200 and r.json["id"] in ids)
    assert set(delivered.values()) == {1} and len(delivered) == JOBS
    for path in (TEST_ROOT / "log").iterdir():
        if path.is_file():
            with open(path, "rb") as fh:
                fh.seek(logged_before.get(path, 0))
                assert b"database is locked" not in fh.read(), path
    print(f"{JOBS} jobs, {statuses} responses, {len(retried)} retried after kills, all done in {elapsed:.1f}s")
