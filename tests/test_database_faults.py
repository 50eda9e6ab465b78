"""A database that is briefly unavailable fails no build (issue 11, item 2): the SQLite file held
locked by another process while a build runs, for a few seconds and for longer than any wait;
and an error of ours that is not transient still fails the job visibly.

PostgreSQL connections dropped under a running build: tests/scaleout/test_database_drops.py."""

import contextlib
import sqlite3
import time

import pytest
from django.conf import settings
from django.db import connection

from builds.joblog import masking, reader, writer
from builds.models import Job
from tests.conftest import wait_for
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.test_recovery import BASE, BuildctlWatch, wait_building
from tests.testenv import SCALEOUT

pytestmark = [
    pytest.mark.usefixtures("live_db"),
    pytest.mark.skipif(SCALEOUT, reason="SQLite's locks; PostgreSQL has tests/scaleout/test_database_drops.py"),
]

STEPS = 'RUN echo $NONCE; for i in $(seq 1 12); do echo "step $i of 12"; sleep 1; done\n'


@contextlib.contextmanager
def database_locked():
    """Another process's write lock on the database file (a separate connection, as sqlite3's
    shell or a backup tool would hold it): every other writer waits until it is released."""
    db = sqlite3.connect(settings.DATABASES["default"]["NAME"], isolation_level=None, timeout=60)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def wait_log(api, job_id: str, text: str, timeout: float = 60) -> None:
    wait_for(lambda: text in log_text(api, job_id), timeout, f"{text!r} in the log of {job_id}")


@pytest.mark.e2e
def test_a_database_locked_for_a_few_seconds_stops_no_build(api, worker, git_server):
    repo = git_server.repo("db-locked-briefly")
    repo.commit({"Dockerfile": BASE + STEPS})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    wait_building(job_id)
    wait_log(api, job_id, "step 2 of 12")
    with database_locked():
        time.sleep(4)
    job = wait_final(job_id, timeout=90)
    text = log_text(api, job_id)
    assert job.status == "success" and job.attempts == 1 and job.retry_count == 0, (job.error_code, job.error, text)
    # Every line, the ones printed while the database was locked too, is in the log, in order.
    positions = [text.index(f"step {i} of 12") for i in range(1, 13)]
    assert positions == sorted(positions)
    assert "build succeeded" in text


@pytest.mark.e2e
@pytest.mark.waits
def test_a_database_locked_for_longer_than_any_wait_hands_the_job_over_cleanly(api, worker, git_server):
    """Locked past the lease: the attempt stops its buildctl before the reaper could give the
    job to another attempt, so no two builds of it ever run at once; the job is built again
    once the database is back. Earlier code failed the job with INTERNAL_ERROR."""
    repo = git_server.repo("db-locked-long")
    repo.commit({"Dockerfile": BASE + STEPS})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    watch = BuildctlWatch(job_id)
    wait_building(job_id)
    wait_log(api, job_id, "step 2 of 12")
    with database_locked():
        time.sleep(35)  # longer than SQLite's busy timeout (30 s) and than LEASE_SECONDS (8 s)
    job = wait_final(job_id, timeout=120)
    text = log_text(api, job_id)
    assert job.status == "success", (job.error_code, job.error, text)
    assert job.attempts == 2 and job.retry_count == 1, text
    assert "INTERNAL_ERROR" not in text and "the database was unavailable" in text
    assert watch.stop() == 1, ("two buildctl processes built the job at the same time", watch.seen)


@pytest.mark.e2e
def test_an_error_of_ours_that_is_not_transient_still_fails_the_job(api, worker, git_server):
    """A trigger refuses the heartbeat's update of this one job (as a broken query would fail):
    not a lock or a lost connection, so no waiting it out."""
    repo = git_server.repo("db-refuses")
    repo.commit({"Dockerfile": BASE + STEPS})
    job_id = new_id("refused")
    trigger = f"test_refuse_{job_id.replace('-', '_')}"
    with connection.cursor() as cursor:
        cursor.execute(f"""CREATE TRIGGER {trigger} BEFORE UPDATE OF heartbeat_at ON builds_job
                           WHEN OLD.id = '{job_id}' AND OLD.status = 'building' AND NEW.status = 'building'
                           BEGIN SELECT RAISE(ABORT, 'test: this heartbeat is refused'); END""")
    try:
        submit(api, repo.url, job_id=job_id, env={"NONCE": new_id()})
        job = wait_final(job_id, timeout=90)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER {trigger}")
    assert job.status == "failed" and job.error_code == "INTERNAL_ERROR", (job.status, job.error_code, job.error)
    assert job.attempts == 1
    assert "this heartbeat is refused" in log_text(api, job_id)


def test_log_lines_wait_for_a_locked_database_within_a_bounded_buffer(monkeypatch):
    """The build's log writer keeps lines while the database is locked and writes them later;
    past its buffer's size the oldest give way to the newest, with a marker."""
    job = Job.objects.create(id=new_id("buffer"), project_id="faults", user_id="tester",
                             source_info={"gitRepository": "http://127.0.0.1:9/none.git"}, request_fingerprint="t")
    monkeypatch.setattr(writer.LogWriter, "MAX_BUFFER_BYTES", 20_000, raising=False)
    log = writer.LogWriter(job.id, masking.Masker())
    log.line("before the lock")
    log.flush()
    with database_locked():
        started = time.monotonic()
        for index in range(1000):
            log.line(f"line {index:04d} " + "x" * 40)
            if index % 100 == 0:
                time.sleep(log.FLUSH_SECONDS)
                log.tick()  # fails at once (a short wait), keeps the lines
        assert time.monotonic() - started < 15
        assert writer.log_end(job.id) == len(b"".join(reader.read_from(job.id, 0, 10**6)))
    log.flush()
    text = b"".join(reader.read_from(job.id, 0, writer.log_end(job.id))).decode()
    assert text.count("\n") < 400 and "before the lock" in text
    assert "bytes of build output dropped: the database was unavailable" in text
    assert "line 0999" in text and "line 0000" not in text
