"""End-to-end builds of repositories that carry a Dockerfile (issue 2), through a real Celery
worker, buildkitd, registry, git server and callback receiver."""

import hashlib
import hmac
import subprocess
import time

import pytest
from django.conf import settings

from builds.models import Job
from tests.conftest import CALLBACK_SECRET, wait_for
from tests.support import registry
from tests.support.jobs import log_text, most_building_at_once, new_id, submit, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]

BASE = "FROM debian:bookworm-slim\n"


def test_job_accepted_while_no_worker_runs_is_built_when_one_starts(api, worker, git_server):
    repo = git_server.repo("restart")
    repo.commit({"Dockerfile": BASE + "RUN echo restart > /r.txt\n"})
    worker.stop()
    job_id = submit(api, repo.url)
    time.sleep(1.5)  # long enough for an idle worker to have taken it, had one been running
    assert Job.objects.get(pk=job_id).status == "pending"
    worker.start()
    assert wait_final(job_id).status == "success"


def test_repository_dockerfile_is_built_pushed_and_reported(api, worker, git_server, receiver, infra):
    repo = git_server.repo("hello")
    sha = repo.commit({
        "Dockerfile": BASE + "RUN echo built > /built.txt\nCOPY app.txt /app/app.txt\nCMD [\"cat\", \"/app/app.txt\"]\n",
        "app.txt": "hello\n",
    })
    job_id = submit(api, repo.url)
    job = wait_final(job_id)
    assert job.status == "success", (job.error_code, job.error, log_text(api, job_id))
    assert job.commit_sha == sha
    assert job.image_tag == f"{infra['registry']}/tester/demo-project:{job_id}"
    assert job.image_digest == registry.manifest_digest(infra["registry"], "tester/demo-project", job_id)
    assert job.started_at and job.finished_at and job.duration_seconds > 0

    (callback,) = receiver.wait_for(job_id)
    payload = callback.json
    assert set(payload) >= {"id", "projectId", "userId", "status", "imageTag", "imageDigest", "commitSha", "startedAt",
                            "finishedAt", "durationSeconds", "logPath", "errorCode", "error", "retryCount"}
    assert payload["status"] == "success" and payload["imageDigest"] == job.image_digest
    assert payload["commitSha"] == sha and payload["logPath"] == f"/api/v1/jobs/{job_id}/logs"
    signed = f"{callback.headers['x-hubfly-timestamp']}.{callback.headers['x-hubfly-event-id']}.".encode() + callback.body
    expected = "v1=" + hmac.new(CALLBACK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(callback.headers["x-hubfly-signature"], expected)

    text = log_text(api, job_id)
    assert "RUN echo built" in text and "pushed" in text
    # The worker removes the workspace right after it records the result, which the callback may beat.
    wait_for(lambda: not any(settings.WORKSPACE_DIR.iterdir()), 10, "the workspace to be removed")


def test_failing_run_step_fails_once_naming_the_step(api, worker, git_server, receiver):
    repo = git_server.repo("exit3")
    repo.commit({"Dockerfile": BASE + "RUN echo before\nRUN exit 3\n"})
    job_id = submit(api, repo.url)
    job = wait_final(job_id)
    assert job.status == "failed"
    assert job.error_code == "BUILD_STEP_FAILED"
    assert "RUN exit 3" in job.error and "3" in job.error
    assert job.retry_count == 0 and job.attempts == 1
    assert "did not complete successfully: exit code: 3" in log_text(api, job_id)
    (callback,) = receiver.wait_for(job_id)
    assert callback.json["errorCode"] == "BUILD_STEP_FAILED" and "RUN exit 3" in callback.json["error"]
    time.sleep(1)
    assert len(receiver.for_job(job_id)) == 1


def test_older_commit_is_built_rather_than_the_branch_tip(api, worker, git_server, infra):
    repo = git_server.repo("history")
    old = repo.commit({"Dockerfile": BASE + 'LABEL revision="one"\n'})
    repo.commit({"Dockerfile": BASE + 'LABEL revision="two"\n'})
    job_id = submit(api, repo.url, source={"commitSha": old})
    job = wait_final(job_id)
    assert job.status == "success", job.error
    assert job.commit_sha == old
    config = registry.get_image_config(infra["registry"], "tester/demo-project", job_id)
    assert config["config"]["Labels"]["revision"] == "one"


def test_branch_and_tag_refs_are_built(api, worker, git_server, infra):
    repo = git_server.repo("refs")
    repo.commit({"Dockerfile": BASE + 'LABEL revision="main"\n'})
    feature = repo.commit({"Dockerfile": BASE + 'LABEL revision="feature"\n'}, branch="feature")
    repo.tag("v1")
    for ref in ("feature", "v1", "refs/heads/feature"):
        job = wait_final(submit(api, repo.url, source={"ref": ref}))
        assert job.status == "success", (ref, job.error)
        assert job.commit_sha == feature


def test_unknown_commit_fails_clearly(api, worker, git_server):
    repo = git_server.repo("nocommit")
    repo.commit({"Dockerfile": BASE})
    job = wait_final(submit(api, repo.url, source={"commitSha": "0123456789abcdef0123456789abcdef01234567"}))
    assert job.status == "failed" and job.error_code in ("COMMIT_NOT_FOUND", "SOURCE_NOT_FOUND")
    assert job.retry_count == 0


def test_repository_without_dockerfile_or_runtime_fails_clearly(api, worker, git_server):
    repo = git_server.repo("nodockerfile")
    repo.commit({"README.md": "nothing to build\n"})
    job = wait_final(submit(api, repo.url))
    assert job.status == "failed" and job.error_code == "DOCKERFILE_NOT_FOUND"


def test_at_most_max_concurrent_builds_run_at_once(api, worker, git_server):
    repo = git_server.repo("concurrency")
    repo.commit({"Dockerfile": BASE + "ARG JOB\nRUN echo $JOB && sleep 3\n"})
    ids = [new_id("conc") for _ in range(5)]
    for job_id in ids:
        submit(api, repo.url, job_id=job_id, env={"JOB": job_id})
    assert most_building_at_once(ids) == 2
    assert set(Job.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"success"}


def test_timeout_fails_the_job_and_leaves_no_build_running(api, worker, git_server):
    repo = git_server.repo("slow")
    repo.commit({"Dockerfile": BASE + "ARG NONCE\nRUN echo $NONCE; sleep 61\n"})
    started = time.monotonic()
    job = wait_final(submit(api, repo.url, timeoutSeconds=5, env={"NONCE": new_id()}), timeout=60)
    elapsed = time.monotonic() - started
    assert job.status == "failed" and job.error_code == "TIMEOUT"
    assert elapsed < 5 + settings.CANCEL_GRACE_SECONDS + 8
    wait_for(lambda: subprocess.run(["pgrep", "-f", "sleep 61"], capture_output=True).returncode == 1, 10,
             "the RUN step's process to go")
    assert subprocess.run(["pgrep", "-f", f"buildctl.*{job.id}"], capture_output=True).returncode == 1


def test_memory_limit_reaches_the_run_step(api, worker, git_server):
    repo = git_server.repo("memory")
    # cgroup v2 names the limit memory.max; v1 (as on these machines) memory.limit_in_bytes.
    repo.commit({"Dockerfile": BASE + "ARG NONCE\nRUN echo $NONCE; cat /sys/fs/cgroup/memory.max 2>/dev/null"
                 " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes\n"})
    job_id = submit(api, repo.url, resourceLimits={"memoryMB": 256, "cpu": 0.5}, env={"NONCE": new_id()})
    job = wait_final(job_id)
    assert job.status == "success", job.error
    assert str(256 * 1024 * 1024) in log_text(api, job_id)


def test_secret_values_reach_the_build_but_never_the_log(api, worker, git_server):
    repo = git_server.repo("secrets")
    repo.commit({"Dockerfile": BASE + "ARG NONCE\nRUN --mount=type=secret,id=API_KEY echo $NONCE && cat /run/secrets/API_KEY && echo\n"})
    job_id = submit(api, repo.url, env={"API_KEY": "sup3r-s3cret-value", "NONCE": new_id()}, secrets=["API_KEY"])
    job = wait_final(job_id)
    assert job.status == "success", job.error
    text = log_text(api, job_id)
    assert "sup3r-s3cret-value" not in text and "***" in text


def test_progress_shows_the_running_step(api, worker, git_server):
    repo = git_server.repo("progress")
    repo.commit({"Dockerfile": BASE + "ARG NONCE\nRUN echo $NONCE\nRUN echo $NONCE; sleep 4\n"})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    seen = wait_for(
        lambda: (api.get(f"/api/v1/jobs/{job_id}").json().get("progress") or {}).get("name", "").endswith("sleep 4")
        and api.get(f"/api/v1/jobs/{job_id}").json()["progress"], 60, "the progress of the sleeping step")
    assert seen["step"] == 3 and seen["total"] == 3
    job = wait_final(job_id)
    assert job.status == "success" and job.progress is None
