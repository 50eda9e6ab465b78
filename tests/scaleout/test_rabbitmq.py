"""RabbitMQ as the broker, for real (issue 12, item 3): Debian's rabbitmq-server beside the
session's PostgreSQL. The builds queue's consumer timeout, a broker restart in the middle of a
build, and a worker killed with unacknowledged messages.

The RabbitMQ deployment here (web process, maintenance worker, beat, build workers) has a
PostgreSQL database of its own, so the session's Redis deployment (its reaper above all) never
touches these jobs. It re-sends stale pending jobs only after 10 minutes: a message the broker
lost is not quietly replaced by the reaper's copy within a test, so each test sees the broker's
own doing.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request

import psycopg
import pytest
from django.conf import settings

from tests.conftest import API_TOKEN, REPO_ROOT, TEST_ROOT, Beat, Worker, wait_for
from tests.support.jobs import new_id
from tests.support.rabbitmq import RabbitMQ
from tests.support.receiver import CallbackReceiver
from tests.support.webserver import WebServer
from tests.testenv import RECEIVER

pytestmark = [pytest.mark.e2e]

FINAL = ("success", "failed", "canceled")
DOCKERFILE = "FROM debian:bookworm-slim\nARG MARK\nARG SECONDS=1\nRUN echo $MARK && sleep $SECONDS\n"


@pytest.fixture(scope="module")
def rabbit():
    broker = RabbitMQ(TEST_ROOT / "rabbitmq", consumer_timeout_ms=settings.BROKER_UNACKED_SECONDS * 1000)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def stack(rabbit, infra):
    """Web, maintenance worker and beat on RabbitMQ and a database of their own."""
    database = settings.DATABASES["default"]
    server = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE hubfly_rabbitmq")
    env = {"DATABASE_URL": f"{server}/hubfly_rabbitmq", "CELERY_BROKER_URL": rabbit.url,
           "REQUEUE_AFTER_SECONDS": "600"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO_ROOT, check=True,
                   env={**os.environ, **env, **host_env("rmq-migrate")})
    with contextlib.ExitStack() as started:
        maintenance = Worker("rmq-maintenance", concurrency=1, queue="maintenance",
                             extra_env={**env, **host_env("rmq-maintenance")})
        started.callback(maintenance.stop)
        started.callback(Beat("rmq-beat", extra_env={**env, **host_env("rmq-beat")}).stop)
        web = WebServer(TEST_ROOT / "log" / "rmq-web.log", env={**env, **host_env("rmq-web")})
        started.callback(web.stop)
        db = started.enter_context(psycopg.connect(env["DATABASE_URL"], autocommit=True))
        yield Stack(env, web, db)


def host_env(name: str) -> dict:
    root = TEST_ROOT / name
    return {"DATA_DIR": str(root / "data"), "LOG_DIR": str(root / "log"), "WORKER_NAME": name}


class Stack:
    def __init__(self, env: dict, web: WebServer, db):
        self.env, self.web, self.db = env, web, db

    def worker(self, name: str, **kwargs) -> Worker:
        return Worker(name, extra_env={**self.env, **host_env(name)}, **kwargs)

    def submit(self, repo_url: str, mark: str, seconds: int) -> str:
        job_id = new_id("rmq")
        body = {"id": job_id, "projectId": "rabbit", "userId": "tester", "sourceInfo": {"gitRepository": repo_url},
                "buildConfig": {"env": {"MARK": mark, "SECONDS": str(seconds)}}}
        request = urllib.request.Request(f"{self.web.url}/api/v1/jobs", method="POST", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {API_TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
        return job_id

    def job(self, job_id: str) -> dict:
        row = self.db.execute("SELECT status, attempts, retry_count, worker, error_code, error FROM builds_job "
                              "WHERE id = %s", (job_id,)).fetchone()
        return dict(zip(("status", "attempts", "retry_count", "worker", "error_code", "error"), row))

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float) -> dict:
        return wait_for(lambda: (job := self.job(job_id))["status"] in statuses and job, timeout,
                        f"job {job_id} to be {'/'.join(statuses)} (is {self.job(job_id)['status']})", interval=0.2)


def builds_in_buildkit(infra, mark: str) -> int:
    """How many builds BuildKit was asked for with this job's MARK build arg."""
    result = subprocess.run(["buildctl", "--addr", infra["buildkit"], "debug", "histories", "--format", "{{json .}}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return sum(mark in line for line in result.stdout.splitlines())


def final_callbacks(receiver: CallbackReceiver, job_id: str) -> list[str]:
    return [r.json["status"] for r in receiver.for_job(job_id) if r.json.get("status") in FINAL]


def received_task_ids(worker: Worker) -> list[str]:
    return re.findall(r"Task builds\.tasks\.run_job\[([0-9a-f-]+)\] received", worker.log())


def test_the_builds_queue_has_a_consumer_timeout_above_the_longest_build(stack, rabbit):
    worker = stack.worker("rmq-timeout", concurrency=1)
    try:
        builds = rabbit.queues()["builds"]
    finally:
        worker.stop()
    longest_ms = settings.MAX_TIMEOUT_SECONDS * 1000
    declared = builds["arguments"].get("x-consumer-timeout")
    assert declared == settings.BROKER_UNACKED_SECONDS * 1000 and declared > longest_ms, builds
    # What is in force: the queue's own argument from RabbitMQ 3.11.15 and 3.12 on; before (Debian
    # 12 has 3.10), the server's consumer_timeout alone, which defaults to 30 minutes: the
    # argument is accepted and ignored.
    version = tuple(int(part) for part in re.findall(r"\d+", rabbit.eval("rabbit_misc:version()."))[:3])
    server_wide = rabbit.eval("application:get_env(rabbit, consumer_timeout).")
    match = re.fullmatch(r"\{ok,(\d+)\}", server_wide)
    in_force = declared if version >= (3, 11, 15) else int(match[1]) if match else 30 * 60 * 1000
    assert in_force > longest_ms, (version, server_wide)


def test_a_broker_restart_during_a_build_loses_no_job_and_builds_each_once(stack, rabbit, infra, git_server):
    repo = git_server.repo(f"rmq-restart-{new_id('r')}")
    repo.commit({"Dockerfile": DOCKERFILE})
    worker = stack.worker("rmq-restart", concurrency=1)
    try:
        marks = {"running": new_id("running"), "queued": new_id("queued")}
        running = stack.submit(repo.url, marks["running"], seconds=25)
        stack.wait_status(running, ("building",), 120)
        # One slot: the second job waits in the queue, a message the broker must keep.
        queued = stack.submit(repo.url, marks["queued"], seconds=1)
        wait_for(lambda: rabbit.queues()["builds"]["messages_ready"] == 1, 30, "the second job's message to wait")

        rabbit.stop()
        assert stack.job(running)["status"] == "building"
        rabbit.start()

        jobs = {job_id: stack.wait_status(job_id, FINAL, 180) for job_id in (running, queued)}
        assert {job["status"] for job in jobs.values()} == {"success"}, jobs
        for job_id, mark in zip((running, queued), marks.values()):
            # Built once: one claim, one build in BuildKit, one final callback.
            assert (jobs[job_id]["attempts"], jobs[job_id]["retry_count"]) == (1, 0), jobs[job_id]
            assert builds_in_buildkit(infra, mark) == 1
            RECEIVER.wait_for(job_id, timeout=30)
            assert final_callbacks(RECEIVER, job_id) == ["success"]
        # The running build's message came back after the restart and found the job taken.
        wait_for(lambda: len(received_task_ids(worker)) == 3, 30, "the running job's message again")
        wait_for(lambda: (q := rabbit.queues()["builds"])["messages_ready"] + q["messages_unacknowledged"] == 0, 30,
                 "an empty builds queue")
    finally:
        worker.stop()


def test_a_killed_worker_s_unacknowledged_messages_are_redelivered_and_built_once(stack, rabbit, infra, git_server):
    repo = git_server.repo(f"rmq-kill-{new_id('k')}")
    repo.commit({"Dockerfile": DOCKERFILE})
    # One slot and two messages: one running build, one reserved for later; neither acknowledged.
    doomed = stack.worker("rmq-doomed", concurrency=1, args=("--prefetch-multiplier", "2"))
    heir = None
    try:
        marks = {"running": new_id("running"), "reserved": new_id("reserved")}
        running = stack.submit(repo.url, marks["running"], seconds=20)
        stack.wait_status(running, ("building",), 120)
        reserved = stack.submit(repo.url, marks["reserved"], seconds=1)
        wait_for(lambda: rabbit.queues()["builds"]["messages_unacknowledged"] == 2, 30, "two unacknowledged messages")
        held = received_task_ids(doomed)
        assert len(held) == 2

        doomed.stop(sig=9)
        heir = stack.worker("rmq-heir", concurrency=1)
        # The broker hands the same two messages (same task ids) to the next worker at once. The
        # reserved job builds from its redelivered message; the running one's finds the job
        # still leased to the dead worker, which the reaper takes back when the lease expires.
        wait_for(lambda: set(held) <= set(received_task_ids(heir)), 60, "the killed worker's messages, redelivered")
        jobs = {job_id: stack.wait_status(job_id, FINAL, 180) for job_id in (running, reserved)}
        assert {job["status"] for job in jobs.values()} == {"success"}, jobs
        assert (jobs[reserved]["attempts"], jobs[reserved]["retry_count"]) == (1, 0), jobs[reserved]
        assert builds_in_buildkit(infra, marks["reserved"]) == 1
        # The killed build was stopped with its worker; the job was built again, once.
        assert (jobs[running]["attempts"], jobs[running]["retry_count"]) == (2, 1), jobs[running]
        assert builds_in_buildkit(infra, marks["running"]) == 2
        for job_id in (running, reserved):
            assert jobs[job_id]["worker"].startswith("rmq-heir:")
            RECEIVER.wait_for(job_id, timeout=30)
            assert final_callbacks(RECEIVER, job_id) == ["success"]
    finally:
        doomed.stop(sig=9)
        if heir is not None:
            heir.stop()
