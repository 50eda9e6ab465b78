"""Helpers for tests that submit jobs through the API and wait for them."""

import time
import uuid

from builds.models import FINAL_STATUSES, Job


def new_id(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def submit(api, repo_url: str, *, job_id: str | None = None, source: dict | None = None, **build_config) -> str:
    job_id = job_id or new_id()
    data = {
        "id": job_id,
        "projectId": "demo-project",
        "userId": "tester",
        "sourceType": "git",
        "sourceInfo": {"gitRepository": repo_url, **(source or {})},
        "buildConfig": build_config,
    }
    response = api.post("/api/v1/jobs", data, format="json")
    assert response.status_code == 201, response.content
    return job_id


def wait_final(job_id: str, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.status in FINAL_STATUSES:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {Job.objects.get(pk=job_id).status} after {timeout}s")


def log_text(api, job_id: str) -> str:
    response = api.get(f"/api/v1/jobs/{job_id}/logs")
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content).decode()


def most_building_at_once(ids: list[str], timeout: float = 120) -> int:
    """How many of the jobs were `building` at the same time at the most, watched until all
    of them ended."""
    most, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = list(Job.objects.filter(pk__in=ids).values_list("status", flat=True))
        most = max(most, statuses.count("building"))
        if all(s in FINAL_STATUSES for s in statuses):
            break
        time.sleep(0.05)
    return most
