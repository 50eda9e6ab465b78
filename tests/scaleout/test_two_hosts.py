"""The scale-out layout (issue 4, item 7): PostgreSQL + Redis, two build workers with their own
data and log directories (two hosts), two web processes. Jobs spread over both workers, and a
job built on one "host" has its log served by the other web process."""

import json
import urllib.request

import pytest
from django.conf import settings

from tests.conftest import API_TOKEN, TEST_ROOT, Worker
from tests.support.jobs import new_id, wait_final
from tests.support.webserver import WebServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]


def call(url: str, method: str = "GET", body: dict | None = None):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {API_TOKEN}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def host_env(name: str) -> dict:
    root = TEST_ROOT / name
    return {"DATA_DIR": str(root / "data"), "LOG_DIR": str(root / "log"), "WORKER_NAME": name}


def test_settings_are_the_scale_out_ones():
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    # Redis redelivers unacknowledged messages after this: it must exceed the longest build.
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] > settings.MAX_TIMEOUT_SECONDS


def test_two_hosts_share_the_builds_and_any_web_process_serves_any_log(worker, git_server, infra):
    worker.stop()  # the session's worker stands aside: two "hosts" take over
    host_a = Worker("host-a", concurrency=2, extra_env=host_env("host-a"))
    host_b = Worker("host-b", concurrency=2, extra_env=host_env("host-b"))
    web_1 = WebServer(TEST_ROOT / "log" / "web-1.log", env=host_env("web-1"))
    web_2 = WebServer(TEST_ROOT / "log" / "web-2.log", env=host_env("web-2"))
    try:
        repo = git_server.repo("two-hosts")
        repo.commit({"Dockerfile": "FROM debian:bookworm-slim\nARG N\nRUN echo $N && sleep 2\n"})
        ids = [new_id("spread") for _ in range(8)]
        for job_id in ids:
            status, _ = call(f"{web_1.url}/api/v1/jobs", "POST", {
                "id": job_id, "projectId": "spread", "userId": "tester",
                "sourceInfo": {"gitRepository": repo.url}, "buildConfig": {"env": {"N": job_id}}})
            assert status == 201
        jobs = [wait_final(job_id) for job_id in ids]
        assert {job.status for job in jobs} == {"success"}, [(j.id, j.error) for j in jobs]
        hosts = {job.worker.split(":")[0] for job in jobs}
        assert hosts == {"host-a", "host-b"}, hosts
        for job in jobs:
            status, text = call(f"{web_2.url}/api/v1/jobs/{job.id}/logs")
            assert status == 200 and b"build succeeded" in text
            assert f"on worker {job.worker}".encode() in text
        # Each host kept its own workspaces, and removed them.
        for name in ("host-a", "host-b"):
            workspaces = TEST_ROOT / name / "data" / "workspaces"
            assert workspaces.is_dir() and not any(workspaces.iterdir())
    finally:
        for process in (web_1, web_2):
            process.stop()
        for w in (host_a, host_b):
            w.stop()
        worker.start()
