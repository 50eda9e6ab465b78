"""A burst of creations (issue 17): 500 jobs posted by 8 clients at once to the real web process
are all accepted, and every one is built, once. Marked `burst`: 6 to 10 minutes of full
build slots, in a session scripts/test runs beside the scale-out suite, not beside the main one."""

import threading
import time
import uuid
from collections import Counter

import httpx
import pytest

from builds.models import FINAL_STATUSES, Job, LogChunk
from tests.conftest import API_TOKEN, TEST_ROOT, wait_for
from tests.support.webserver import WebServer

JOBS, CLIENTS = 500, 8


def post_all(url: str, bodies: list[dict]) -> list[int]:
    statuses = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60) as client:
        for body in bodies:
            statuses.append(client.post("/api/v1/jobs", json=body).status_code)
    return statuses


def log_text(job_id: str) -> str:
    chunks = LogChunk.objects.filter(job_id=job_id).order_by("offset").values_list("data", flat=True)
    return b"".join(bytes(data) for data in chunks).decode(errors="replace")


@pytest.mark.e2e
@pytest.mark.burst
@pytest.mark.timeout(1500)
def test_five_hundred_jobs_posted_by_eight_clients_are_all_built_once(live_db, worker, git_server, receiver):
    repo = git_server.repo(f"burst-{uuid.uuid4().hex[:6]}")
    repo.commit({"Dockerfile": "FROM debian:bookworm-slim\n"})
    run = uuid.uuid4().hex[:8]
    ids = [f"burst-{run}-{i}" for i in range(JOBS)]
    bodies = [{"id": job_id, "projectId": f"burst-{i % 4}", "userId": f"burst-{i % 3}", "sourceType": "git",
               "sourceInfo": {"gitRepository": repo.url}, "buildConfig": {}} for i, job_id in enumerate(ids)]
    web = WebServer(TEST_ROOT / "log" / f"web-burst-{time.time_ns()}.log", workers=2)
    try:
        answers: list[list[int]] = [[] for _ in range(CLIENTS)]
        threads = [threading.Thread(target=lambda c=c: answers[c].extend(post_all(web.url, bodies[c::CLIENTS])))
                   for c in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        accepted_in = time.monotonic() - started
        assert Counter(s for a in answers for s in a) == {201: JOBS}, f"answers after {accepted_in:.0f} s"
    finally:
        web.stop()

    def final_count() -> bool:
        return Job.objects.filter(pk__in=ids, status__in=FINAL_STATUSES).count() == JOBS

    try:
        wait_for(final_count, 1200, f"{JOBS} builds to end", interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; by status: {dict(Counter(Job.objects.filter(pk__in=ids).values_list('status', flat=True)))}") from None
    jobs = list(Job.objects.filter(pk__in=ids))
    assert Counter(job.status for job in jobs) == {"success": JOBS}
    assert all(job.retry_count == 0 for job in jobs)
    pushed = Counter(log_text(job_id).count("] pushed ") for job_id in ids)
    assert pushed == {1: JOBS}, "jobs by how many attempts pushed an image"
    wait_for(lambda: all(receiver.for_job(job_id) for job_id in ids), 120, "every job's callback")
    assert all(len([r for r in receiver.for_job(job_id) if r.json.get("status") == "success"]) == 1
               for job_id in ids)
