"""What a platform reads about a build's end (issue 15, items 4-6), from real builds through a
real worker, buildkitd, registry, git servers and callback receivers: the failure type of each
kind of failed build, the webhook delivery log and a redelivery, a job's own callbackUrl, and
logs without alarming lines for expected, handled conditions."""

import contextlib
import functools
import hashlib
import hmac
import re
import signal
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from builds.models import CallbackAttempt, Job
from tests.conftest import CALLBACK_SECRET, TEST_ROOT, Worker, wait_for
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.support.receiver import CallbackReceiver

BASE = "FROM debian:bookworm-slim\n"
ALARM = re.compile(r"fatal|ERROR")


def alarming(text: str) -> list[str]:
    return [line for line in text.splitlines() if ALARM.search(line)]


def signed(received) -> bool:
    message = f"{received.headers['x-hubfly-timestamp']}.{received.headers['x-hubfly-event-id']}.".encode() + received.body
    expected = "v1=" + hmac.new(CALLBACK_SECRET.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers["x-hubfly-signature"], expected)


# --- failure types ------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_failed_run_step_is_a_build_step_failure_naming_the_step(api, worker, git_server, receiver):
    repo = git_server.repo("ft-step")
    repo.commit({"Dockerfile": BASE + "RUN echo before\nRUN exit 3\n"})
    job_id = submit(api, repo.url)
    job = wait_final(job_id)
    expected = {"type": "build_step", "step": "RUN exit 3", "retryable": False}
    assert job.status == "failed" and api.get(f"/api/v1/jobs/{job_id}").json()["failure"] == expected
    (callback,) = receiver.wait_for(job_id)
    assert callback.json["failure"] == expected
    # A real error keeps buildctl's own error line.
    assert any("ERROR" in line and "exit code: 3" in line for line in log_text(api, job_id).splitlines())


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_missing_repository_is_a_source_failure(api, worker, git_server):
    job = wait_final(submit(api, f"{git_server.url}/no-such-repository.git"))
    assert job.status == "failed" and job.error_code == "SOURCE_NOT_FOUND"
    assert api.get(f"/api/v1/jobs/{job.id}").json()["failure"] == {"type": "source", "step": None, "retryable": False}


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_unknown_instruction_is_a_dockerfile_failure(api, worker, git_server):
    repo = git_server.repo("ft-dockerfile")
    repo.commit({"Dockerfile": BASE + "FROOM nothing\n"})
    job = wait_final(submit(api, repo.url))
    assert job.status == "failed" and job.error_code == "DOCKERFILE_INVALID", (job.error_code, job.error)
    failure = api.get(f"/api/v1/jobs/{job.id}").json()["failure"]
    assert failure["type"] == "dockerfile" and failure["retryable"] is False


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_copy_of_a_path_the_repository_lacks_is_a_dockerfile_failure_naming_the_copy(api, worker, git_server):
    """Not a missing base image: BuildKit's "not found" here is about the build context."""
    repo = git_server.repo("ft-copy")
    repo.commit({"Dockerfile": BASE + "COPY missing.txt /\n", "present.txt": "here\n"})
    job = wait_final(submit(api, repo.url))
    assert job.status == "failed" and job.error_code == "COPY_SOURCE_NOT_FOUND", (job.error_code, job.error)
    assert "missing.txt" in job.error
    failure = api.get(f"/api/v1/jobs/{job.id}").json()["failure"]
    assert failure == {"type": "dockerfile", "step": "COPY missing.txt /", "retryable": False}


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_missing_base_image_is_a_base_image_failure_naming_the_from(api, worker, git_server):
    repo = git_server.repo("ft-base")
    repo.commit({"Dockerfile": "FROM debian:no-such-tag-hubfly\nRUN true\n"})
    job = wait_final(submit(api, repo.url))
    assert job.status == "failed" and job.error_code == "BASE_IMAGE_NOT_FOUND", (job.error_code, job.error)
    failure = api.get(f"/api/v1/jobs/{job.id}").json()["failure"]
    assert failure == {"type": "base_image", "step": "FROM docker.io/library/debian:no-such-tag-hubfly",
                       "retryable": False}


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_timed_out_build_is_a_timeout_failure_naming_the_running_step(api, worker, git_server):
    repo = git_server.repo("ft-timeout")
    repo.commit({"Dockerfile": BASE + "ARG NONCE\nRUN echo $NONCE; sleep 60\n"})
    nonce = new_id()
    # Long enough for the RUN step to start on a busy machine.
    job = wait_final(submit(api, repo.url, timeoutSeconds=12, env={"NONCE": nonce}), timeout=60)
    assert job.status == "failed" and job.error_code == "TIMEOUT"
    failure = api.get(f"/api/v1/jobs/{job.id}").json()["failure"]
    # BuildKit names the step with its build arguments expanded.
    assert failure == {"type": "timeout", "step": f"RUN echo {nonce}; sleep 60", "retryable": False}


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_canceled_build_is_a_canceled_failure(api, worker, git_server):
    repo = git_server.repo("ft-cancel")
    repo.commit({"Dockerfile": BASE + "ARG NONCE\nRUN echo $NONCE; sleep 60\n"})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    wait_for(lambda: Job.objects.get(pk=job_id).status == "building", 60, "the build to start")
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
    job = wait_final(job_id, timeout=60)
    assert job.status == "canceled"
    assert api.get(f"/api/v1/jobs/{job_id}").json()["failure"] == {"type": "canceled", "step": None, "retryable": True}


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_unreachable_buildkitd_is_an_infrastructure_failure(api, worker, git_server):
    """A worker whose buildkitd address leads nowhere (a socket path that does not exist), with
    no retries left to hide it."""
    repo = git_server.repo("ft-infra")
    repo.commit({"Dockerfile": BASE + "RUN true\n"})
    worker.stop()
    broken = Worker("no-buildkitd", concurrency=1, extra_env={
        "BUILDKIT_ADDR": f"unix://{TEST_ROOT}/no-buildkitd/buildkitd.sock", "MAX_RETRIES": "0"})
    try:
        job = wait_final(submit(api, repo.url), timeout=90)
    finally:
        broken.stop(signal.SIGKILL)
        worker.start()
    assert job.status == "failed" and job.error_code == "BUILDKIT_UNAVAILABLE", (job.error_code, job.error)
    failure = api.get(f"/api/v1/jobs/{job.id}").json()["failure"]
    assert failure == {"type": "infrastructure", "step": None, "retryable": True}


# --- the webhook: a job's own URL, the delivery log, redelivery ----------------------------------

@pytest.fixture
def own_receiver():
    server = CallbackReceiver()
    yield server
    server.close()


def submit_with_callback(api, repo_url: str, callback_url: str) -> str:
    job_id = new_id()
    response = api.post("/api/v1/jobs", {
        "id": job_id, "projectId": "demo-project", "userId": "tester", "sourceInfo": {"gitRepository": repo_url},
        "callbackUrl": callback_url,
    }, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["callbackUrl"] == callback_url
    return job_id


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_redeliver_makes_exactly_one_new_signed_attempt_of_the_same_event(api, worker, git_server, receiver,
                                                                          own_receiver):
    repo = git_server.repo("hook-own")
    repo.commit({"Dockerfile": BASE + "RUN exit 4\n"})
    job_id = submit_with_callback(api, repo.url, own_receiver.url)
    assert wait_final(job_id).status == "failed"
    (first,) = own_receiver.wait_for(job_id)
    assert signed(first) and first.json["failure"]["type"] == "build_step"
    assert receiver.for_job(job_id) == []  # the job's own URL replaces CALLBACK_URL
    # The receiver has the POST before the sender has its answer and records the delivery.
    wait_for(lambda: Job.objects.get(pk=job_id).callback_events.filter(state="delivered").exists(), 30,
             "the first delivery recorded")

    listed = api.get(f"/api/v1/jobs/{job_id}/deliveries").json()
    (event,) = listed["results"]
    assert event["eventId"] == first.headers["x-hubfly-event-id"] and event["state"] == "delivered"
    (attempt,) = event["attempts"]
    assert attempt["httpStatus"] == 200 and attempt["error"] is None and attempt["requestedBy"] is None

    redone = api.post(f"/api/v1/jobs/{job_id}/deliveries/redeliver")
    assert redone.status_code == 200, redone.content
    assert redone.json()["attempt"]["httpStatus"] == 200
    assert redone.json()["attempt"]["requestedBy"].startswith("api token ")
    got = own_receiver.for_job(job_id)
    assert len(got) == 2
    second = got[1]
    assert second.headers["x-hubfly-event-id"] == event["eventId"] and second.body == first.body and signed(second)
    time.sleep(2)  # the outbox runs every second here: it must not send the delivered event again
    assert len(own_receiver.for_job(job_id)) == 2
    attempts = api.get(f"/api/v1/jobs/{job_id}/deliveries").json()["results"][0]["attempts"]
    assert len(attempts) == 2 and attempts[1]["requestedBy"] == redone.json()["attempt"]["requestedBy"]
    assert CallbackAttempt.objects.filter(event_id=event["eventId"]).count() == 2


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_failed_redelivery_is_recorded_with_its_status(api, worker, git_server, own_receiver):
    repo = git_server.repo("hook-500")
    repo.commit({"Dockerfile": BASE + "RUN exit 5\n"})
    job_id = submit_with_callback(api, repo.url, own_receiver.url)
    wait_final(job_id)
    own_receiver.wait_for(job_id)
    wait_for(lambda: Job.objects.get(pk=job_id).callback_events.filter(state="delivered").exists(), 30,
             "the first delivery")
    own_receiver.status = 503
    redone = api.post(f"/api/v1/jobs/{job_id}/deliveries/redeliver").json()
    assert redone["attempt"]["httpStatus"] == 503 and redone["attempt"]["error"] == "HTTP 503"
    assert redone["state"] == "delivered"  # it was delivered once: a failed extra attempt changes nothing
    assert [r.answered for r in own_receiver.for_job(job_id)] == [200, 503]


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.2:9/hook", "non-public address"),      # loopback, not listed
    ("http://10.1.2.3/hook", "non-public address"),         # private
    ("http://169.254.169.254/latest", "non-public address"),  # link-local (cloud metadata)
    ("http://[::1]:9/hook", "non-public address"),
    ("http://user:pw@127.0.0.1:9/hook", "credentials"),
    ("ftp://127.0.0.1/hook", "http:// or https://"),
])
@pytest.mark.django_db
def test_callback_url_follows_the_source_host_rules(api, url, reason):
    """Checked at submit: only name resolution of literal addresses, no connection is made."""
    response = api.post("/api/v1/jobs", {
        "id": new_id(), "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": "http://127.0.0.1:9/r.git"},
        "callbackUrl": url,
    }, format="json")
    assert response.status_code == 400, response.content
    assert reason in str(response.json()["fields"]["callbackUrl"])


@pytest.mark.django_db
def test_deliveries_of_unknown_job_and_of_job_without_event(api):
    assert api.get("/api/v1/jobs/no-such-job/deliveries").status_code == 404
    job = Job.objects.create(id=new_id(), project_id="p", user_id="u", request_fingerprint="-")
    assert api.get(f"/api/v1/jobs/{job.id}/deliveries").json() == {"jobId": job.id, "results": []}
    response = api.post(f"/api/v1/jobs/{job.id}/deliveries/redeliver")
    assert response.status_code == 404 and response.json()["error"] == "CALLBACK_EVENT_NOT_FOUND"


# --- logs people read -----------------------------------------------------------------------------

@contextlib.contextmanager
def dumb_http_server(root):
    """`python3 -m http.server`, as the README's "Try it" serves its repository: git's dumb HTTP."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_readme_example_first_build_log_has_no_fatal_or_error_line(api, worker):
    """The README's "Try it" repository (FROM scratch, COPY hello.txt), served the same way, built
    as the first build of a new project: no build cache and a server without shallow fetches,
    both expected and handled."""
    root = TEST_ROOT / f"dumb-{new_id()}"
    work = root / "hello"
    work.mkdir(parents=True)
    git = ["git", "-c", "user.name=me", "-c", "user.email=me@example.com"]
    (work / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
    (work / "hello.txt").write_text("hi\n")
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "hello"],
                 ["clone", "-q", "--bare", ".", str(root / "hello.git")]):
        subprocess.run([*git, *argv], cwd=work, check=True, capture_output=True)
    subprocess.run(["git", "-C", str(root / "hello.git"), "update-server-info"], check=True)
    with dumb_http_server(root) as url:
        job_id = new_id("hello")
        response = api.post("/api/v1/jobs", {"id": job_id, "projectId": new_id("first"), "userId": "me",
                                             "sourceType": "git", "sourceInfo": {"gitRepository": f"{url}/hello.git"}},
                            format="json")
        assert response.status_code == 201, response.content
        job = wait_final(job_id)
    text = log_text(api, job_id)
    assert job.status == "success", (job.error_code, job.error, text)
    assert alarming(text) == [], text
    assert "the server cannot send shallow history; fetching it whole" in text
    assert "no build cache yet for this project" in text


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_service_log_has_no_line_for_periodic_tasks_that_found_nothing_to_do(maintenance, receiver):
    """The real beat and maintenance worker, which run the periodic tasks every second here."""
    from datetime import timedelta

    from django.utils import timezone

    from builds.models import CallbackEvent

    beat_log = TEST_ROOT / "log" / "beat.log"
    beat_from, worker_from = beat_log.stat().st_size, maintenance.log_path.stat().st_size
    time.sleep(4)  # four rounds of each periodic task, with (most likely) nothing to do
    job = Job.objects.create(id=new_id("quiet"), project_id="p", user_id="u", request_fingerprint="-",
                             status="success")
    CallbackEvent.objects.create(job=job, url=receiver.url, body=f'{{"id": "{job.id}"}}',
                                 next_attempt_at=timezone.now() - timedelta(seconds=1))
    receiver.wait_for(job.id)
    # The run that delivered it did something: that one is logged.
    wait_for(lambda: re.search(r"deliver_callbacks\[.*succeeded in .*s: [1-9]",
                               maintenance.log_path.read_bytes()[worker_from:].decode()), 10,
             "the outbox's run that delivered the event to be logged")
    beat_lines = beat_log.read_bytes()[beat_from:].decode().splitlines()
    worker_lines = maintenance.log_path.read_bytes()[worker_from:].decode().splitlines()
    periodic = re.compile(r"builds\.tasks\.(deliver_callbacks|reap_jobs|prune)\b")
    assert [line for line in beat_lines if periodic.search(line)] == []
    quiet = [line for line in worker_lines if periodic.search(line) and
             ("received" in line or re.search(r"succeeded in \S+s: (0|None|\{('\w+': 0(, )?)*\})$", line))]
    assert quiet == []
