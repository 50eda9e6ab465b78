"""PostgreSQL connections dropped under a running build (issue 11, item 2): the worker's
connections are terminated by the server (as a restart or a failover does) while it builds;
the build goes on over a new connection and succeeds in its first attempt, log complete."""

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
