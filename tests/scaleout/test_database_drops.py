"""PostgreSQL under a running build (issue 11, item 2): the worker's connections terminated by
the server (as a failover does), or the server stopped and started again (as an upgrade or a
reboot does), while it builds; the build goes on over a new connection and succeeds in its
first attempt, log complete; the API holds its requests through a short outage and answers 503
with Retry-After only when the outage outlasts API_DATABASE_WAIT_SECONDS."""

import os
import signal
import threading
import time

import pytest
from django.db import connection

from tests.conftest import wait_for
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.test_database_faults import STEPS
from tests.test_recovery import BASE, wait_building

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]


def terminate_other_connections() -> int:
    """Every server connection but this test's own: the workers', the reaper's, the web's."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


def test_dropped_database_connections_fail_no_build(api, worker, git_server):
    repo = git_server.repo("pg-dropped")
    repo.commit({"Dockerfile": BASE + STEPS})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    wait_building(job_id)
    for step in (2, 5, 8):
        wait_for(lambda: f"step {step} of 12" in log_text(api, job_id), 60, f"step {step}")
        assert terminate_other_connections() >= 1
    job = wait_final(job_id, timeout=90)
    text = log_text(api, job_id)
    assert job.status == "success" and job.attempts == 1 and job.retry_count == 0, (job.error_code, job.error, text)
    positions = [text.index(f"step {i} of 12") for i in range(1, 13)]
    assert positions == sorted(positions)
    assert "INTERNAL_ERROR" not in text and "build succeeded" in text


def server_started_at():
    connection.close()  # after a restart this process's connection is gone too
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        return cursor.fetchone()[0]


def restart_server(down_seconds: float) -> None:
    """Stop the PostgreSQL server process and start it again (as an upgrade or a reboot does)."""
    from tests import testenv
    from tests.support import scaleout

    postgres = testenv.SCALEOUT_SERVICES[0]
    testenv.SCALEOUT_SERVICES[0] = scaleout.restart_postgres(postgres, down_seconds)


def poll_through_restart(api, path: str, down_seconds: float) -> list[tuple[int, str | None, float]]:
    """(status, Retry-After, seconds taken) of GETs of `path` sent while the server restarts."""
    started_at = server_started_at()
    answers = []
    stopper = threading.Thread(target=restart_server, args=(down_seconds,))
    stopper.start()
    while stopper.is_alive():
        sent = time.monotonic()
        answer = api.get(path)
        answers.append((answer.status_code, answer.get("Retry-After"), time.monotonic() - sent))
        time.sleep(0.2)
    stopper.join()
    assert server_started_at() > started_at
    return answers


def test_a_server_restart_fails_no_build_and_the_api_holds_its_requests(api, worker, git_server):
    repo = git_server.repo("pg-restarted")
    repo.commit({"Dockerfile": BASE + STEPS})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    wait_building(job_id)
    wait_for(lambda: "step 3 of 12" in log_text(api, job_id), 60, "step 3")
    answers = poll_through_restart(api, f"/api/v1/jobs/{job_id}", 3)
    # Every answer a 200; the ones sent while the server was down waited for it.
    assert all(status == 200 for status, _, _ in answers), answers
    assert max(seconds for _, _, seconds in answers) > 1, answers
    job = wait_final(job_id, timeout=90)
    text = log_text(api, job_id)
    assert job.status == "success" and job.attempts == 1 and job.retry_count == 0, (job.error_code, job.error, text)
    positions = [text.index(f"step {i} of 12") for i in range(1, 13)]
    assert positions == sorted(positions)
    assert api.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_an_outage_longer_than_the_wait_answers_503_with_retry_after(api, settings):
    settings.API_DATABASE_WAIT_SECONDS = 1
    job_id = submit(api, "http://127.0.0.1:9/none.git", job_id=new_id("outage"))
    answers = poll_through_restart(api, f"/api/v1/jobs/{job_id}", 4)
    assert all(status in (200, 503) for status, _, _ in answers), answers
    assert any(status == 503 and retry_after == "5" and seconds >= 1 for status, retry_after, seconds in answers), answers
    assert api.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_a_job_whose_message_meets_the_server_down_starts_when_it_is_back(api, worker, git_server):
    """The worker takes the job's message while PostgreSQL is stopped: the message is sent
    again, not consumed, so the job starts once the server is back rather than when the reaper
    re-sends it (REQUEUE_AFTER_SECONDS after it was enqueued)."""
    from django.conf import settings

    from builds.models import Job
    from tests import testenv
    from tests.support import scaleout

    repo = git_server.repo("pg-down-message")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE\n"})
    os.killpg(worker.proc.pid, signal.SIGSTOP)  # the message waits in the broker
    try:
        job_id = submit(api, repo.url, env={"NONCE": new_id()})
        postgres = testenv.SCALEOUT_SERVICES[0]
        argv, port, log = postgres.restart_with
        scaleout.stop(postgres)
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    time.sleep(4)  # the worker takes the message and finds the server gone
    testenv.SCALEOUT_SERVICES[0] = scaleout._launch_postgres(argv, port, log)
    connection.close()
    wait_for(lambda: Job.objects.get(pk=job_id).claimed_at is not None, 60, f"{job_id} to be claimed")
    job = Job.objects.get(pk=job_id)
    assert (job.claimed_at - job.created_at).total_seconds() < settings.REQUEUE_AFTER_SECONDS
    assert wait_final(job_id, timeout=90).status == "success"
