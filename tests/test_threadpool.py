"""The worker as configs/Procfile runs it (issue 17): build slots are threads of one process
(`--pool threads`), and the maintenance worker runs beat in a thread (`--beat-thread`).

A command's PR_SET_PDEATHSIG fires when the *thread* that started it exits: the slot's thread
starts the command and waits for it in the same call (builds.services.process.run), so the
command dies with its slot or with the process, never while its build still runs. Real
workers, real buildctl, real signals."""

import contextlib
import os
import signal
import subprocess
import threading
import time

import pytest

from builds.models import Job
from builds.services.steps import buildkit
from tests.conftest import TEST_ROOT, Worker, wait_for
from tests.support.jobs import most_building_at_once, new_id, submit, wait_final
from tests.test_recovery import BASE, BuildctlWatch, buildctl_pids, delivered, wait_building

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]
PROCFILE_ENTRY = ("-m", "hubfly.worker")


@contextlib.contextmanager
def threads_worker(worker, concurrency: int = 3):
    """The session's build worker replaced by the Procfile's kind (hubfly.worker, threads), for one test."""
    worker.stop()
    threaded = Worker("threads", concurrency=concurrency, args=("--pool", "threads"), entry=PROCFILE_ENTRY)
    try:
        yield threaded
    finally:
        threaded.stop(signal.SIGKILL)
        worker.start()


def test_registry_config_written_by_slots_at_once_is_written(settings, tmp_path):
    """Slots of one process that write the registry credentials at the same moment (the first
    builds after a start) each get the file, and none fails on another's temporary file."""
    settings.DATA_DIR, settings.REGISTRY_USERNAME, settings.REGISTRY_PASSWORD = tmp_path, "u", "p"
    errors = []

    def write(barrier):
        try:
            barrier.wait()
            assert buildkit.docker_config_dir() == tmp_path / "docker"
        except Exception as exc:
            errors.append(exc)

    for _ in range(100):
        buildkit._written_config = None
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=write, args=(barrier,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
    assert (tmp_path / "docker" / "config.json").read_text().startswith('{"auths"')
    assert [p.name for p in (tmp_path / "docker").iterdir()] == ["config.json"]


def test_threads_pool_runs_as_many_builds_at_once_as_it_has_slots(api, worker, git_server):
    repo = git_server.repo("threads-concurrency")
    repo.commit({"Dockerfile": BASE + "ARG JOB\nRUN echo $JOB && sleep 3\n"})
    with threads_worker(worker, concurrency=3) as threaded:
        ids = [new_id("thr") for _ in range(4)]
        for job_id in ids:
            submit(api, repo.url, job_id=job_id, env={"JOB": job_id, "NONCE": new_id()})
        most = most_building_at_once(ids)
        pid = threaded.proc.pid
    assert most == 3
    jobs = Job.objects.filter(pk__in=ids)
    assert {j.status for j in jobs} == {"success"}, [(j.status, j.error) for j in jobs]
    assert {j.worker.rsplit(":", 1)[1] for j in jobs} == {str(pid)}  # one process: the slots are its threads


def test_cancel_on_a_threads_pool_stops_the_whole_build(api, worker, git_server, receiver):
    repo = git_server.repo("threads-cancel")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 67\n"})
    with threads_worker(worker):
        job_id = submit(api, repo.url, env={"NONCE": new_id()})
        wait_building(job_id)
        assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_final(job_id, timeout=30)
        assert job.status == "canceled", (job.status, job.error)
        wait_for(lambda: not buildctl_pids(job_id), 10, "buildctl to go")
        wait_for(lambda: subprocess.run(["pgrep", "-f", "sleep 67"], capture_output=True).returncode == 1, 15,
                 "the RUN step's process to go")
        (callback,) = wait_for(lambda: delivered(receiver, job_id), 10, "the canceled callback")
        assert callback.json["status"] == "canceled"


def test_threads_worker_killed_mid_build_is_built_again_once(api, worker, git_server, receiver):
    repo = git_server.repo("threads-kill")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 20\n"})
    with threads_worker(worker) as threaded:
        job_id = submit(api, repo.url, env={"NONCE": new_id()})
        watch = BuildctlWatch(job_id)
        first = wait_building(job_id)
        assert first.worker.endswith(f":{threaded.proc.pid}")
        os.kill(threaded.proc.pid, signal.SIGKILL)
        threaded.proc.wait()
        # The slot's thread is gone with its process: the kernel kills its buildctl.
        wait_for(lambda: not buildctl_pids(job_id), 10, "the first buildctl to die")
        threaded.start()  # takes back the jobs of the dead process at once
        job = wait_final(job_id)
    assert job.status == "success", job.error
    assert job.attempts == 2 and job.retry_count == 1 and job.worker != first.worker
    assert watch.stop() == 1
    time.sleep(1.5)
    assert len(delivered(receiver, job_id)) == 1


def test_sigterm_lets_the_builds_of_a_threads_pool_finish(api, worker, git_server):
    repo = git_server.repo("threads-sigterm")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 4\n"})
    with threads_worker(worker) as threaded:
        job_id = submit(api, repo.url, env={"NONCE": new_id()})
        wait_building(job_id)
        os.kill(threaded.proc.pid, signal.SIGTERM)
        threaded.proc.wait(timeout=60)
        job = Job.objects.get(pk=job_id)
    assert job.status == "success" and job.attempts == 1, (job.status, job.error)


def test_maintenance_worker_runs_beat_in_a_thread_that_dies_with_it():
    schedule = TEST_ROOT / f"beat-thread-{time.time_ns()}"
    # The periodic tasks find nothing to do here, and such runs leave no line unless asked for.
    maintenance = Worker("beat-thread", concurrency=1, queue="maintenance", entry=PROCFILE_ENTRY,
                         args=("--pool", "threads", "--beat-thread", "--schedule-filename", str(schedule)),
                         extra_env={"LOG_IDLE_PERIODIC_TASKS": "true"})
    try:
        wait_for(lambda: "Scheduler: Sending due task" in maintenance.log(), 60, "beat to send a task")
        wait_for(lambda: "succeeded" in maintenance.log(), 60, "the worker to run a scheduled task")
        assert maintenance.children() == []  # no forked beat process
    finally:
        maintenance.stop(signal.SIGKILL)
    assert subprocess.run(["pgrep", "-f", "beat-thread@"], capture_output=True).returncode == 1
