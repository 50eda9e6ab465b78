"""Faults of the job lifecycle (issue 11): a cancel that meets an infrastructure failure, a
worker whose clock is behind, a reaper that races a heartbeat, and the timeout across retries."""

import os
import shutil
import signal
import textwrap
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.conf import settings
from django.db.models.functions import Now

from builds.models import Job
from builds.services.state import lifecycle, reaper
from builds.services.steps import naming
from tests.conftest import API_TOKEN, TEST_ROOT, wait_for
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.support.webserver import WebServer
from tests.test_recovery import BASE, buildctl_pids, delivered, wait_building, worker_with

pytestmark = pytest.mark.usefixtures("live_db")


class FailingGitHost:
    """A git host that holds every request until `release()`, then answers 503: an outage that
    begins while a fetch is under way."""

    def __init__(self):
        self.arrived = threading.Event()
        self.released = threading.Event()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                host.arrived.set()
                host.released.wait(60)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/outage.git"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()


@pytest.mark.e2e
def test_cancel_then_an_infrastructure_failure_ends_canceled(api, worker, receiver):
    """The cancel lands between two heartbeats and the git host fails before the next one: the
    attempt ends with a retryable error, not with the cancel it has not noticed yet."""
    host = FailingGitHost()
    try:
        # One heartbeat when the fetch starts, the next long after this test is over.
        with worker_with(worker, HEARTBEAT_SECONDS=60):
            job_id = submit(api, host.url)
            assert host.arrived.wait(30), "the fetch never reached the git host"
            assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
            host.release()
            job = wait_final(job_id, timeout=30)
            wait_for(lambda: not workspaces(job_id), 10, "the attempt to end")
    finally:
        host.close()
    assert job.status == "canceled" and job.error_code == "CANCELED", (job.status, job.error_code, job.error)
    assert job.attempts == 1 and job.lease is None
    (callback,) = wait_for(lambda: delivered(receiver, job_id), 10, "the canceled callback")
    assert callback.json["status"] == "canceled"
    time.sleep(1.5)  # a second callback would have come by now (CALLBACK_FLUSH_SECONDS=1)
    assert len(delivered(receiver, job_id)) == 1


def test_cancel_requested_before_a_retry_ends_canceled():
    """The same race without processes in between: the worker hands the job back after the
    cancel was flagged. It ends canceled, with one outcome queued."""
    job = _claimed_job()
    lease = job.lease
    _, accepted = lifecycle.job_cancel(job_id=job.pk)
    assert accepted
    requeued = lifecycle.job_retry_later(job_id=job.pk, lease=lease, error_code="GIT_UNAVAILABLE",
                                         error="the git host could not be reached", delay_seconds=1)
    assert not requeued
    job = Job.objects.get(pk=job.pk)
    assert job.status == "canceled" and job.error_code == "CANCELED" and job.lease is None
    assert job.callback_events.count() == 1


def test_reaper_ends_a_flagged_pending_job_instead_of_resending_it():
    """Earlier code left such jobs behind: pending, flagged, refused by every claim."""
    job = _claimed_job()
    long_ago = job.heartbeat_at.replace(year=2000)
    Job.objects.filter(pk=job.pk).update(status="pending", lease=None, cancel_requested_at=long_ago,
                                         enqueued_at=long_ago)
    reaper.reap()
    job = Job.objects.get(pk=job.pk)
    assert job.status == "canceled" and job.error_code == "CANCELED"
    assert job.callback_events.count() == 1


def test_reaper_keeps_a_job_whose_heartbeat_just_succeeded():
    """The reaper read the job while its lease looked expired; the worker renewed the lease
    before the reaper wrote. Interleaved by hand: the two writes race in two processes."""
    job = _claimed_job()
    seen_by_reaper = Job.objects.get(pk=job.pk)
    assert lifecycle.job_heartbeat(job_id=job.pk, lease=job.lease)
    assert reaper.take_back(seen_by_reaper, reason="test: lease looked expired") == "skipped"
    after = Job.objects.get(pk=job.pk)
    assert after.status == "claimed" and after.lease == job.lease and after.retry_count == 0
    assert lifecycle.job_heartbeat(job_id=job.pk, lease=job.lease)
    lifecycle.job_finish(job_id=job.pk, lease=job.lease, status="failed", error_code="TEST", error="test only")


def test_reaper_takes_back_a_job_whose_lease_did_expire():
    job = _claimed_job()
    Job.objects.filter(pk=job.pk).update(heartbeat_at=Job.objects.get(pk=job.pk).heartbeat_at.replace(year=2000))
    assert reaper.take_back(Job.objects.get(pk=job.pk), reason="test: lease expired") == "requeued"
    after = Job.objects.get(pk=job.pk)
    assert after.status == "pending" and after.lease is None and after.retry_count == 1
    lifecycle.job_cancel(job_id=job.pk)


def test_a_later_attempt_gets_only_the_time_left():
    """The attempt's deadline is the job's first start plus its timeout, by the database's clock."""
    job = _claimed_job()
    assert lifecycle.job_set_started(job_id=job.pk, lease=job.lease) < 5
    started = Job.objects.get(pk=job.pk).started_at
    Job.objects.filter(pk=job.pk).update(started_at=started - timedelta(seconds=100))
    assert 100 <= lifecycle.job_set_started(job_id=job.pk, lease=job.lease) < 105
    lifecycle.job_finish(job_id=job.pk, lease=job.lease, status="failed", error_code="TEST", error="test only")


SKEWED_CLOCK = textwrap.dedent('''
    """Test shim: this process's wall clock runs HUBFLY_TEST_CLOCK_SKEW_SECONDS off (time.time and
    django.utils.timezone.now), as on a host whose clock drifted. Monotonic time is untouched."""
    import importlib.abc
    import importlib.util
    import os
    import sys
    import time

    _skew = float(os.environ.get("HUBFLY_TEST_CLOCK_SKEW_SECONDS") or 0)
    if _skew:
        _real_time = time.time
        time.time = lambda: _real_time() + _skew

        class _SkewTimezone(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "django.utils.timezone":
                    return None
                sys.meta_path.remove(self)
                spec = importlib.util.find_spec(name)
                load = spec.loader.exec_module

                def exec_module(module):
                    from datetime import timedelta

                    load(module)
                    real_now = module.now
                    module.now = lambda: real_now() + timedelta(seconds=_skew)

                spec.loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, _SkewTimezone())
        sys.stderr.write(f"clock skewed by {_skew:+.0f} s\\n")
''')


@pytest.mark.e2e
def test_worker_whose_clock_is_30_seconds_behind_keeps_its_jobs(api, worker, git_server, tmp_path):
    """Fake: the skewed clock is a sitecustomize shim in the worker processes (the host's clock
    cannot be changed here); the reaper (maintenance worker) runs on the true clock."""
    (tmp_path / "sitecustomize.py").write_text(SKEWED_CLOCK)
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    repo = git_server.repo("skewed-clock")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 12\n"})
    with worker_with(worker, PYTHONPATH=pythonpath, HUBFLY_TEST_CLOCK_SKEW_SECONDS=-30) as behind:
        assert "clock skewed by -30 s" in behind.log()
        job_id = submit(api, repo.url, env={"NONCE": new_id()})
        job = wait_final(job_id, timeout=90)
        wait_for(lambda: not workspaces(job_id), 10, "the attempt to end")
    assert job.status == "success", (job.status, job.error_code, job.error)
    assert job.attempts == 1 and job.retry_count == 0, log_text(api, job_id)


def test_a_job_accepted_by_a_web_host_whose_clock_is_ahead_is_queued_by_the_database_clock(tmp_path):
    """Fake: the web process's clock runs an hour ahead (the shim above). The reaper re-sends a
    pending job's message once its enqueued_at is REQUEUE_AFTER_SECONDS old by the database's
    clock: stamped by this host's clock, a lost message would wait an hour for that."""
    (tmp_path / "sitecustomize.py").write_text(SKEWED_CLOCK)
    web = WebServer(TEST_ROOT / "log" / f"web-skewed-{time.time_ns()}.log",
                    env={"PYTHONPATH": str(tmp_path), "HUBFLY_TEST_CLOCK_SKEW_SECONDS": "3600"})
    job_id = new_id("skewed-web")
    try:
        assert "clock skewed by +3600 s" in web.log()
        response = httpx.post(f"{web.url}/api/v1/jobs", headers={"Authorization": f"Bearer {API_TOKEN}"}, json={
            "id": job_id, "projectId": "faults", "userId": "tester",
            "sourceInfo": {"gitRepository": "http://127.0.0.1:9/none.git"}}, timeout=30)
        assert response.status_code == 201, response.text
        enqueued_at, db_now = Job.objects.filter(pk=job_id).annotate(db_now=Now()).values_list(
            "enqueued_at", "db_now").get()
    finally:
        web.stop()
        lifecycle.job_cancel(job_id=job_id)
    assert abs((db_now - enqueued_at).total_seconds()) < 60, (enqueued_at, db_now)


@pytest.mark.e2e
def test_timeout_is_one_deadline_for_the_whole_job(api, worker, git_server):
    """timeoutSeconds counts from the job's first start across every attempt: an attempt after
    a lost worker gets what is left, not a fresh timeout."""
    timeout = 30
    repo = git_server.repo("deadline")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 60\n"})
    job_id = submit(api, repo.url, timeoutSeconds=timeout, env={"NONCE": new_id()})
    first = wait_building(job_id)
    os.kill(int(first.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    wait_for(lambda: Job.objects.get(pk=job_id).attempts == 2, 60, "the reaper to hand the job back")
    job = wait_final(job_id, timeout=60)
    assert job.status == "failed" and job.error_code == "TIMEOUT", (job.status, job.error_code, job.error)
    assert job.attempts == 2
    # The second attempt stopped at the job's deadline (buildctl is given a few seconds to stop),
    # not a whole timeout after it began (the first attempt and the reaper took about ten).
    assert timeout <= job.duration_seconds < timeout + 6, job.duration_seconds
    wait_for(lambda: not buildctl_pids(job_id), 15, "buildctl to stop")
    # The SIGKILLed attempt could not remove its workspace (housekeeping would, an hour later).
    shutil.rmtree(settings.WORKSPACE_DIR / naming.workspace_name(job_id, first.lease.hex))
    wait_for(lambda: not workspaces(job_id), 10, "the second attempt's workspace to be removed")


def workspaces(job_id: str) -> list:
    """Workspaces of the job's attempts; each attempt removes its own as its last act."""
    prefix = naming.workspace_name(job_id, "")
    return list(settings.WORKSPACE_DIR.glob(prefix + "*")) if settings.WORKSPACE_DIR.is_dir() else []


def _claimed_job() -> Job:
    job = Job.objects.create(id=new_id("lifecycle"), project_id="faults", user_id="tester",
                             source_info={"gitRepository": "http://127.0.0.1:9/none.git"},
                             request_fingerprint="test")
    lease = lifecycle.job_claim(job_id=job.pk, worker="test-lifecycle-faults:0")
    assert lease is not None
    return Job.objects.get(pk=job.pk)
