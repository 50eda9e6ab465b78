"""Nothing lost, nothing built twice (issue 5): real worker processes killed with real signals,
buildkitd and the registry stopped and started, a webhook that fails for minutes, cancel in
every state."""

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest

from builds.models import CallbackAttempt, CallbackEvent, Job
from infra import localservices
from tests.conftest import BUILDKIT_ADDR, REGISTRY_ADDR, TEST_ROOT, Worker, wait_for
from tests.support.jobs import log_text, new_id, submit, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]

BASE = "FROM debian:bookworm-slim\nARG NONCE\n"


def buildctl_pids(job_id: str) -> list[int]:
    """buildctl processes working on this job (its workspace path is in their argv)."""
    marker = hashlib.sha256(job_id.encode()).hexdigest()[:16].encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"buildctl") and any(marker in arg for arg in argv):
            pids.append(int(entry))
    return pids


class BuildctlWatch(threading.Thread):
    """Samples the job's buildctl processes every 20 ms; `most` is the largest count seen."""

    def __init__(self, job_id: str):
        super().__init__(daemon=True)
        self.job_id, self.most, self.done = job_id, 0, False
        self.start()

    def run(self):
        while not self.done:
            pids = buildctl_pids(self.job_id)
            if len(pids) > self.most:
                self.most = len(pids)
                self.seen = [open(f"/proc/{pid}/cmdline", "rb").read()[:300] for pid in pids
                             if os.path.exists(f"/proc/{pid}/cmdline")]
            time.sleep(0.02)

    def stop(self) -> int:
        self.done = True
        self.join()
        return self.most


def wait_building(job_id: str, timeout: float = 60) -> Job:
    wait_for(lambda: Job.objects.get(pk=job_id).status == "building" and buildctl_pids(job_id), timeout,
             f"{job_id} to be building")
    return Job.objects.get(pk=job_id)


def delivered(receiver, job_id: str) -> list:
    return [r for r in receiver.for_job(job_id) if r.answered == 200]


@contextlib.contextmanager
def worker_with(worker, **env):
    """Replace the session's build worker by one with other settings, for one test."""
    worker.stop()
    special = Worker("special", concurrency=2, extra_env={k: str(v) for k, v in env.items()})
    try:
        yield special
    finally:
        special.stop(signal.SIGKILL)
        worker.start()


def test_worker_main_process_killed_mid_build_is_built_again_once(api, worker, git_server, receiver):
    repo = git_server.repo("kill-main")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 20\n"})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    watch = BuildctlWatch(job_id)
    first = wait_building(job_id)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    # The pool process and its buildctl die with the worker (PR_SET_PDEATHSIG).
    wait_for(lambda: not buildctl_pids(job_id), 10, "the first buildctl to die")
    lost_at = time.monotonic()
    worker.start()
    wait_for(lambda: Job.objects.get(pk=job_id).attempts == 2, 30, "the job to be claimed again")
    picked_up_after = time.monotonic() - lost_at
    job = wait_final(job_id)
    assert job.status == "success", job.error
    assert job.retry_count == 1 and job.attempts == 2 and first.worker != job.worker
    assert watch.stop() == 1, ("two buildctl processes built the job at the same time", watch.seen, log_text(api, job_id))
    time.sleep(1.5)
    assert len(delivered(receiver, job_id)) == 1
    print(f"lost job picked up again {picked_up_after:.1f}s after the worker restarted")


def test_pool_process_killed_mid_build_is_built_again_once(api, worker, git_server, receiver):
    repo = git_server.repo("kill-child")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 20\n"})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    watch = BuildctlWatch(job_id)
    first = wait_building(job_id)
    pool_pid = int(first.worker.rsplit(":", 1)[1])
    assert pool_pid in worker.children()
    os.kill(pool_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not buildctl_pids(job_id), 10, "the first buildctl to die")
    wait_for(lambda: Job.objects.get(pk=job_id).attempts == 2, 60, "the reaper to hand the job back")
    picked_up_after = time.monotonic() - killed_at
    job = wait_final(job_id)
    assert job.status == "success", job.error
    assert job.retry_count == 1 and job.attempts == 2
    assert watch.stop() == 1
    time.sleep(1.5)
    assert len(delivered(receiver, job_id)) == 1
    assert picked_up_after < 60
    print(f"lost job picked up again {picked_up_after:.1f}s after its pool process died")


def test_sigterm_lets_a_running_build_finish(api, worker, git_server):
    repo = git_server.repo("sigterm")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 4\n"})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    wait_building(job_id)
    os.kill(worker.proc.pid, signal.SIGTERM)
    try:
        worker.proc.wait(timeout=60)
        job = Job.objects.get(pk=job_id)
        assert job.status == "success", (job.status, job.error)
        assert job.attempts == 1
    finally:
        worker.start()


@pytest.fixture
def buildkitd(infra):
    yield infra
    if infra["buildkitd_proc"].poll() is not None:
        infra["buildkitd_proc"] = localservices.start_buildkitd(
            infra["state_dir"], BUILDKIT_ADDR, REGISTRY_ADDR, TEST_ROOT / "log" / "buildkitd.log")


def test_buildkitd_down_then_back_is_retried_and_succeeds(api, worker, git_server, buildkitd):
    repo = git_server.repo("bk-back")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE\n"})
    localservices.stop(buildkitd["buildkitd_proc"])
    with worker_with(worker, RETRY_BACKOFF_SECONDS=4):
        job_id = submit(api, repo.url, env={"NONCE": new_id()})
        wait_for(lambda: Job.objects.get(pk=job_id).retry_count >= 1, 30, "a first failed attempt")
        time.sleep(20)
        buildkitd["buildkitd_proc"] = localservices.start_buildkitd(
            buildkitd["state_dir"], BUILDKIT_ADDR, REGISTRY_ADDR, TEST_ROOT / "log" / "buildkitd.log")
        job = wait_final(job_id, timeout=90)
    assert job.status == "success", job.error
    assert job.retry_count >= 1
    assert "BUILDKIT_UNAVAILABLE" in log_text(api, job_id)


def test_buildkitd_down_for_good_fails_after_max_retries(api, worker, git_server, buildkitd, receiver, settings):
    repo = git_server.repo("bk-gone")
    repo.commit({"Dockerfile": BASE})
    localservices.stop(buildkitd["buildkitd_proc"])
    with worker_with(worker, RETRY_BACKOFF_SECONDS=0.5):
        job = wait_final(submit(api, repo.url), timeout=60)
    assert job.status == "failed" and job.error_code == "BUILDKIT_UNAVAILABLE"
    assert job.retry_count == settings.MAX_RETRIES and job.attempts == settings.MAX_RETRIES + 1
    time.sleep(1.5)
    (callback,) = delivered(receiver, job.id)
    assert callback.json["status"] == "failed" and callback.json["retryCount"] == settings.MAX_RETRIES


def test_registry_down_during_push_is_retried(api, worker, git_server, infra):
    repo = git_server.repo("registry-down")
    repo.commit({"Dockerfile": "FROM scratch\nCOPY data.txt /\n", "data.txt": new_id()})
    localservices.stop(infra["registry_proc"])
    try:
        with worker_with(worker, RETRY_BACKOFF_SECONDS=3):
            job_id = submit(api, repo.url)
            wait_for(lambda: Job.objects.get(pk=job_id).retry_count >= 1, 30, "a failed push")
            infra["registry_proc"] = localservices.start_registry(infra["state_dir"], REGISTRY_ADDR,
                                                                  TEST_ROOT / "log" / "registry.log")
            job = wait_final(job_id, timeout=60)
    finally:
        if infra["registry_proc"].poll() is not None:
            infra["registry_proc"] = localservices.start_registry(infra["state_dir"], REGISTRY_ADDR)
    assert job.status == "success", job.error
    assert "REGISTRY_UNAVAILABLE" in log_text(api, job_id)


@pytest.mark.waits
def test_callback_failing_for_two_minutes_is_delivered_once_later(api, worker, git_server, receiver):
    outage = float(os.environ.get("HUBFLY_TEST_CALLBACK_OUTAGE_SECONDS", 120))
    repo = git_server.repo("hook-down")
    repo.commit({"Dockerfile": "FROM scratch\nCOPY data.txt /\n", "data.txt": new_id()})
    receiver.status = 500
    try:
        job_id = submit(api, repo.url)
        assert wait_final(job_id).status == "success"
        # Meanwhile build slots are free: other builds run and finish.
        others = [submit(api, repo.url) for _ in range(2)]
        assert all(wait_final(other).status == "success" for other in others)
        wait_for(lambda: len(receiver.for_job(job_id)) >= 3, 30, "failed attempts")
        remaining = outage - (time.time() - receiver.for_job(job_id)[0].at)
        time.sleep(max(0, remaining))
    finally:
        receiver.status = 200
    wait_for(lambda: delivered(receiver, job_id), 60, "the delivery after the outage")
    # The receiver has the request before the worker has its answer and records it.
    wait_for(lambda: CallbackEvent.objects.get(job_id=job_id).state == "delivered", 30, "the event marked delivered")
    event = CallbackEvent.objects.get(job_id=job_id)
    attempts = CallbackAttempt.objects.filter(event=event)
    assert attempts.filter(http_status=500).count() >= 4 and attempts.filter(http_status=200).count() == 1
    ids = {r.headers["x-hubfly-event-id"] for r in receiver.for_job(job_id)}
    assert ids == {str(event.id)}
    time.sleep(2)
    assert len(delivered(receiver, job_id)) == 1


def test_cancel_of_a_pending_job(api, worker, git_server, receiver):
    repo = git_server.repo("cancel-pending")
    repo.commit({"Dockerfile": BASE})
    worker.stop()
    try:
        job_id = submit(api, repo.url)
        response = api.post(f"/api/v1/jobs/{job_id}/cancel")
        assert response.status_code == 202 and response.json()["status"] == "canceled"
    finally:
        worker.start()
    time.sleep(1.5)
    job = Job.objects.get(pk=job_id)
    assert job.status == "canceled" and job.attempts == 0
    (callback,) = delivered(receiver, job_id)
    assert callback.json["status"] == "canceled"


def test_cancel_of_a_claimed_job_stops_its_fetch(api, worker, git_server, receiver):
    repo = git_server.repo("cancel-claimed")
    repo.commit({"Dockerfile": BASE})
    git_server.slow_down("cancel-claimed", 30)
    job_id = submit(api, repo.url)
    wait_for(lambda: Job.objects.get(pk=job_id).status == "claimed", 20, "the claim")
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
    job = wait_final(job_id, timeout=15)
    assert job.status == "canceled"
    wait_for(lambda: delivered(receiver, job_id), 10, "the canceled callback")


def test_cancel_of_a_building_job_stops_buildctl(api, worker, git_server, receiver):
    repo = git_server.repo("cancel-building")
    nonce = new_id()
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 45\n"})
    job_id = submit(api, repo.url, env={"NONCE": nonce})
    wait_building(job_id)
    started = time.monotonic()
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
    job = wait_final(job_id, timeout=30)
    assert job.status == "canceled" and job.error_code == "CANCELED"
    assert time.monotonic() - started < 10
    assert not buildctl_pids(job_id)
    wait_for(lambda: subprocess.run(["pgrep", "-f", "sleep 45"], capture_output=True).returncode == 1, 15,
             "the RUN step to be stopped")
    (callback,) = wait_for(lambda: delivered(receiver, job_id), 10, "the canceled callback")
    assert callback.json["status"] == "canceled"
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409
