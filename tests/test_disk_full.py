"""Full disks (issue 11, item 9): the workspace's disk filling up during a build is the build
host's fault (retried, like any infrastructure failure), and the database's disk filling up
makes the API answer 503, never 500. Each disk is a small tmpfs the test mounts (as root)."""

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from builds.models import Job
from tests.conftest import API_TOKEN, REPO_ROOT, TEST_ROOT, wait_for
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.support.webserver import WebServer
from tests.test_recovery import BASE, worker_with
from tests.testenv import SCALEOUT

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]


@contextlib.contextmanager
def small_disk(name: str, size_mb: int):
    path = TEST_ROOT / name
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk: Path) -> Path:
    """Write until the disk is full; returns the file to delete to free it."""
    filler = disk / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as fh:  # the last partial block
        while fh.write(b"\0" * 512):
            pass
    return filler


def test_a_workspace_disk_that_fills_up_during_a_fetch_is_retried(api, worker, git_server):
    repo = git_server.repo("disk-full-workspace")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE\n", "data.txt": "x" * 100_000})
    with small_disk("workspace-disk", 64) as disk, worker_with(
        worker, WORKSPACE_DIR=disk, MIN_FREE_DISK=0, GIT_MAX_BYTES=1024**2 * 16, RETRY_BACKOFF_SECONDS=3,
    ):
        git_server.slow_down("disk-full-workspace", 3)  # the fetch waits while the disk fills up
        try:
            job_id = submit(api, repo.url, env={"NONCE": new_id()})
            wait_for(lambda: "fetching" in log_text(api, job_id), 30, "the fetch to start")
            filler = fill(disk)
            wait_for(lambda: Job.objects.get(pk=job_id).retry_count >= 1 or Job.objects.get(pk=job_id).is_final,
                     60, "the first attempt to end")
        finally:
            git_server.slow_down("disk-full-workspace", 0)
        filler.unlink()
        job = wait_final(job_id, timeout=90)
        text = log_text(api, job_id)
    assert job.status == "success" and job.retry_count >= 1, (job.status, job.error_code, job.error, text)
    assert "error [DISK_SPACE_LOW]" in text and "INTERNAL_ERROR" not in text


@pytest.mark.skipif(SCALEOUT, reason="the SQLite file's disk; PostgreSQL's server answers for its own")
def test_a_full_database_disk_answers_503_never_500():
    with small_disk("database-disk", 24) as disk:
        env = {**os.environ, "DATA_DIR": str(disk)}
        for command in ("migrate", "init_broker"):
            subprocess.run([sys.executable, "manage.py", command, "--verbosity", "0"], cwd=REPO_ROOT, env=env,
                           check=True)
        web = WebServer(TEST_ROOT / "log" / f"web-full-disk-{time.time_ns()}.log", env={"DATA_DIR": str(disk)})
        headers = {"Authorization": f"Bearer {API_TOKEN}"}

        def post(client: httpx.Client) -> httpx.Response:
            return client.post("/api/v1/jobs", headers=headers, json={
                "id": new_id("full-disk"), "projectId": "full", "userId": "tester",
                "sourceInfo": {"gitRepository": "http://127.0.0.1:9/none.git"},
                "buildConfig": {"env": {f"PAD{i}": "p" * 4000 for i in range(10)}}})

        try:
            with httpx.Client(base_url=web.url, timeout=60) as client:
                assert post(client).status_code == 201
                filler = fill(disk)
                statuses = [post(client) for _ in range(60)]
                answered = {r.status_code for r in statuses}
                unavailable = next((r for r in statuses if r.status_code == 503), None)
                assert client.get("/healthz").status_code == 200
                filler.unlink()
                after = wait_for(lambda: (r := post(client)).status_code == 201 and r, 30, "a job accepted again")
        finally:
            web.stop()
    assert 500 not in answered and 503 in answered, answered
    assert unavailable.json()["error"] == "SERVICE_UNAVAILABLE" and unavailable.headers["retry-after"]
    assert after.status_code == 201
