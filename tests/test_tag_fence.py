"""The image tag is a fence (issue 11, item 3): buildctl pushes by digest only, and the tag is
written by the attempt that holds the job's lease at that moment, so a worker paused past its
lease can never move the tag of the attempt that took its job over."""

import base64
import hashlib
import json
import os
import signal
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from builds import errors
from builds.errors import LeaseLost, TransientError
from builds.models import Job
from builds.services import pipeline
from builds.services.state import lifecycle
from builds.services.steps.registry import TagWriter
from tests.conftest import REGISTRY_ADDR, wait_for
from tests.support import registry
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.test_recovery import buildctl_pids, delivered, wait_building

pytestmark = [pytest.mark.usefixtures("live_db")]

BASE = "FROM debian:bookworm-slim\nARG NONCE\n"


def _take_over_with_a_newer_commit(repo, job_id: str, stale_worker: str) -> Job:
    """Push a newer commit while the first attempt is paused; the reaper hands the job back and
    another attempt builds that commit to the end."""
    newer = repo.commit({"Dockerfile": BASE + "RUN echo $NONCE > /second.txt\n"})
    wait_for(lambda: Job.objects.get(pk=job_id).attempts == 2, 60, "the reaper to hand the job back")
    job = wait_final(job_id, timeout=90)
    assert job.status == "success", job.error
    assert job.commit_sha == newer and job.worker != stale_worker and job.image_digest
    return job


@pytest.mark.e2e
def test_paused_worker_cannot_move_the_tag_of_the_attempt_that_took_over(api, worker, git_server, receiver):
    """Only the pool process is stopped: its buildctl keeps building the old commit and finishes
    after the second attempt did, which used to push the tag over the second attempt's image."""
    repo = git_server.repo("fence-paused-pool")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE first; sleep 25\n"})
    job_id = submit(api, repo.url, env={"NONCE": new_id()})
    first = wait_building(job_id)
    pool_pid = int(first.worker.rsplit(":", 1)[1])
    stale = set(buildctl_pids(job_id))
    os.kill(pool_pid, signal.SIGSTOP)
    try:
        job = _take_over_with_a_newer_commit(repo, job_id, first.worker)
        # The stale buildctl carries on meanwhile; let it end (and push whatever it pushes).
        wait_for(lambda: not stale & set(buildctl_pids(job_id)), 90, "the stale buildctl to end")
    finally:
        os.kill(pool_pid, signal.SIGCONT)
    tag = registry.manifest_digest(REGISTRY_ADDR, "tester/demo-project", job_id)
    assert tag == job.image_digest, ("the tag points at another image than the job reports", log_text(api, job_id))
    wait_for(lambda: "lease was lost" in log_text(api, job_id), 15, "the stale attempt to stop")
    time.sleep(1.5)
    (callback,) = delivered(receiver, job_id)
    assert callback.json["imageDigest"] == job.image_digest
    assert registry.manifest_digest(REGISTRY_ADDR, "tester/demo-project", job_id) == job.image_digest


@pytest.mark.e2e
def test_worker_that_finds_its_lease_lost_kills_its_buildctl_within_a_heartbeat(
    api, worker, git_server, receiver, settings
):
    """The pool process and its buildctl are both stopped. When the pool process runs again, its
    first heartbeat finds the lease lost and kills buildctl at once (no cancel grace): a stopped
    buildctl cannot act on SIGINT, and anything it still did could only push by digest."""
    repo = git_server.repo("fence-paused-both")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE first; sleep 25\n"})
    nonce = new_id()
    job_id = submit(api, repo.url, env={"NONCE": nonce})
    first = wait_building(job_id)
    # Paused in its RUN step, not while it resolves the base image: BuildKit resolves an image
    # once for all the builds that ask at the same time, with the credentials of the session
    # that asked first, so a client stopped there holds the other attempt's resolution until
    # BuildKit gives up on that session (about two minutes; that attempt then fails
    # BUILDKIT_UNAVAILABLE and is retried).
    wait_for(lambda: f"{nonce} first" in log_text(api, job_id), 60, "the RUN step to be under way")
    pool_pid = int(first.worker.rsplit(":", 1)[1])
    stale = set(buildctl_pids(job_id))
    for pid in (pool_pid, *stale):
        os.kill(pid, signal.SIGSTOP)
    try:
        job = _take_over_with_a_newer_commit(repo, job_id, first.worker)
        assert stale <= set(buildctl_pids(job_id))
        os.kill(pool_pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: not stale & set(buildctl_pids(job_id)), 30, "the stale buildctl to be killed")
        killed_after = time.monotonic() - resumed
    finally:
        for pid in (pool_pid, *stale):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert killed_after < settings.HEARTBEAT_SECONDS + 1, f"buildctl was killed {killed_after:.1f}s after the resume"
    time.sleep(1.5)
    assert registry.manifest_digest(REGISTRY_ADDR, "tester/demo-project", job_id) == job.image_digest
    (callback,) = delivered(receiver, job_id)
    assert callback.json["imageDigest"] == job.image_digest


# --- the tag writer --------------------------------------------------------------------------

def _push_by_digest(repo: str) -> str:
    """An image in the real registry under its digest only, as buildctl now pushes it."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {"Env": [f"NONCE={new_id()}"]}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    registry.push_blob(REGISTRY_ADDR, repo, config_digest, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": registry.OCI_MANIFEST, "layers": [],
                           "config": {"mediaType": registry.OCI_CONFIG, "digest": config_digest,
                                      "size": len(config)}}).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    registry.push_manifest(REGISTRY_ADDR, repo, digest, manifest, registry.OCI_MANIFEST)
    return digest


@pytest.mark.e2e
def test_tag_is_put_with_the_builders_credentials(infra):
    digest = _push_by_digest("tester/tag-writer")
    writer = TagWriter(f"{REGISTRY_ADDR}/tester/tag-writer", timeout_seconds=10)
    manifest, media_type = writer.read_manifest(digest)
    assert media_type == registry.OCI_MANIFEST
    writer.put("v1", manifest, media_type)
    assert registry.manifest_digest(REGISTRY_ADDR, "tester/tag-writer", "v1") == digest
    assert registry.get_manifest(REGISTRY_ADDR, "tester/tag-writer", "v1")[0] == registry.OCI_MANIFEST


@pytest.mark.e2e
def test_without_credentials_the_operators_docker_config_is_used(infra, settings, tmp_path):
    digest = _push_by_digest("tester/tag-writer")
    settings.REGISTRY_USERNAME = settings.REGISTRY_PASSWORD = ""
    settings.DOCKER_CONFIG = tmp_path
    with pytest.raises(TransientError) as refused:
        TagWriter(f"{REGISTRY_ADDR}/tester/tag-writer", timeout_seconds=10).read_manifest(digest)
    assert refused.value.code == errors.REGISTRY_UNAVAILABLE and "401" in refused.value.message
    auth = registry.auth_header()["Authorization"].removeprefix("Basic ")
    (tmp_path / "config.json").write_text(json.dumps({"auths": {REGISTRY_ADDR: {"auth": auth}}}))
    writer = TagWriter(f"{REGISTRY_ADDR}/tester/tag-writer", timeout_seconds=10)
    writer.put("from-docker-config", *writer.read_manifest(digest))
    assert registry.manifest_digest(REGISTRY_ADDR, "tester/tag-writer", "from-docker-config") == digest


class FakeRegistry(ThreadingHTTPServer):
    """A fake: just the manifest endpoints of the registry API, optionally behind a bearer-token
    challenge (the real registry needs a token server that signs JWTs to do that), and able to
    fail manifest PUTs, which the real one cannot be made to do on demand."""

    USER, PASSWORD, TOKEN = "builder", "s3cret", "token-for-push"

    def __init__(self, *, bearer: bool = False, put_status: int = 201):
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.bearer, self.put_status = bearer, put_status
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.seen: list[tuple[str, str, str, float]] = []  # method, path, authorization, time
        self.address = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def add(self, body: bytes, media_type: str = registry.OCI_MANIFEST) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[digest] = (body, media_type)
        return digest

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()

    def methods(self, prefix: str = "/v2/") -> list[str]:
        return [method for method, path, _, _ in self.seen if path.startswith(prefix)]


class _FakeHandler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        server, auth = self.server, self.headers.get("Authorization", "")
        server.seen.append((self.command, self.path, auth, time.time()))
        if auth == (f"Bearer {server.TOKEN}" if server.bearer else server.basic()):
            return True
        challenge = (f'Bearer realm="http://{server.address}/token",service="fake",'
                     f'scope="repository:team/app:pull"' if server.bearer else 'Basic realm="fake"')
        self._answer(401, b"{}", {"WWW-Authenticate": challenge})
        return False

    def do_GET(self):
        if self.path.startswith("/token"):
            self.server.seen.append(("GET", self.path, self.headers.get("Authorization", ""), time.time()))
            if self.headers.get("Authorization") != self.server.basic():
                return self._answer(401)
            return self._answer(200, json.dumps({"token": self.server.TOKEN}).encode())
        if not self._authorized():
            return
        reference = self.path.rsplit("/", 1)[-1]
        if reference not in self.server.manifests:
            return self._answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        body, media_type = self.server.manifests[reference]
        self._answer(200, body, {"Content-Type": media_type,
                                 "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._authorized():
            return
        if self.server.put_status != 201:
            return self._answer(self.server.put_status, b'{"errors":[{"code":"UNAVAILABLE"}]}')
        self.server.manifests[self.path.rsplit("/", 1)[-1]] = (body, self.headers["Content-Type"])
        self._answer(201, b"", {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})


@pytest.fixture
def fake_registry(settings):
    servers = []

    def start(**options) -> FakeRegistry:
        server = FakeRegistry(**options)
        servers.append(server)
        settings.REGISTRY_USERNAME, settings.REGISTRY_PASSWORD = server.USER, server.PASSWORD
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


INDEX = json.dumps({"schemaVersion": 2, "mediaType": registry.OCI_INDEX, "manifests": []}).encode()


def test_bearer_challenge_gets_a_push_token_with_the_builders_credentials(fake_registry):
    fake = fake_registry(bearer=True)
    digest = fake.add(INDEX, registry.OCI_INDEX)
    writer = TagWriter(f"{fake.address}/team/app", timeout_seconds=5)
    manifest, media_type = writer.read_manifest(digest)
    assert (manifest, media_type) == (INDEX, registry.OCI_INDEX)
    writer.put("v2", manifest, media_type)
    assert fake.manifests["v2"] == (INDEX, registry.OCI_INDEX)
    (token_request,) = [entry for entry in fake.seen if entry[1].startswith("/token")]
    assert "scope=repository%3Ateam%2Fapp%3Apull%2Cpush" in token_request[1] and "service=fake" in token_request[1]
    assert token_request[2] == fake.basic()
    puts = [entry for entry in fake.seen if entry[0] == "PUT"]
    assert [auth for _, _, auth, _ in puts] == [f"Bearer {fake.TOKEN}"]  # one PUT, no second challenge


def test_failed_put_is_a_transient_registry_error(fake_registry):
    fake = fake_registry(put_status=503)
    digest = fake.add(b'{"schemaVersion":2}')
    writer = TagWriter(f"{fake.address}/team/app", timeout_seconds=5)
    with pytest.raises(TransientError) as failed:
        writer.put("v1", *writer.read_manifest(digest))
    assert failed.value.retryable and failed.value.code == errors.REGISTRY_UNAVAILABLE
    assert "HTTP 503" in failed.value.message and "v1" not in fake.manifests


# --- the fence, in the director ----------------------------------------------------------------

def _building_job(settings, registry_address: str) -> tuple[Job, uuid.UUID]:
    """A job in `building` whose lease this test holds, its heartbeat a while ago."""
    settings.REGISTRY_URL = registry_address
    job = Job.objects.create(id=new_id("fence"), project_id="app", user_id="team",
                             source_info={"gitRepository": "http://127.0.0.1:1/none.git"}, request_fingerprint="x")
    lease = lifecycle.job_claim(job_id=job.id, worker="test:1")
    assert lifecycle.job_start_building(job_id=job.id, lease=lease, commit_sha="0" * 40, image_tag="x")
    Job.objects.filter(pk=job.id).update(heartbeat_at=timezone.now() - timedelta(seconds=5))
    return Job.objects.get(pk=job.id), lease


def test_tag_is_put_only_after_the_fence_renewed_the_lease(fake_registry, settings):
    fake = fake_registry()
    digest = fake.add(INDEX, registry.OCI_INDEX)
    job, lease = _building_job(settings, fake.address)
    before = timezone.now()
    pipeline.BuildDirector(job, lease, secrets={}).publish_tag(f"{fake.address}/team/app", job.id, digest)
    assert fake.methods() == ["GET", "PUT"] and fake.manifests[job.id] == (INDEX, registry.OCI_INDEX)
    fenced_at = Job.objects.get(pk=job.id).heartbeat_at
    put_at = [at for method, _, _, at in fake.seen if method == "PUT"][0]
    assert before <= fenced_at and fenced_at.timestamp() <= put_at


def test_attempt_that_lost_its_lease_never_puts_the_tag(fake_registry, settings):
    fake = fake_registry()
    digest = fake.add(INDEX, registry.OCI_INDEX)
    job, lease = _building_job(settings, fake.address)
    Job.objects.filter(pk=job.id).update(lease=uuid.uuid4())  # the reaper and another attempt took it
    with pytest.raises(LeaseLost):
        pipeline.BuildDirector(job, lease, secrets={}).publish_tag(f"{fake.address}/team/app", job.id, digest)
    assert "PUT" not in fake.methods() and job.id not in fake.manifests


def test_failed_put_hands_the_job_back_for_a_retry(fake_registry, settings):
    """The director's other steps are replaced (no git, no buildkitd): this is about what it
    does with the error of the tag step."""
    fake = fake_registry(put_status=500)
    digest = fake.add(INDEX, registry.OCI_INDEX)
    settings.REGISTRY_URL = fake.address
    job = Job.objects.create(id=new_id("fence"), project_id="app", user_id="team",
                             source_info={"gitRepository": "http://127.0.0.1:1/none.git"}, request_fingerprint="x")
    lease = lifecycle.job_claim(job_id=job.id, worker="test:1")
    director = pipeline.BuildDirector(Job.objects.get(pk=job.id), lease, secrets={})
    director.fetch_source = lambda: "1" * 40
    director.prepare = lambda: None
    director.build_and_push = lambda inputs, repository, sha: digest
    outcome = director.run()
    job = Job.objects.get(pk=job.id)
    assert outcome.retry_in is not None
    assert (job.status, job.retry_count, job.error_code) == ("pending", 1, errors.REGISTRY_UNAVAILABLE)
    assert fake.methods() == ["GET", "PUT"] and job.id not in fake.manifests


def test_an_image_summary_the_registry_cannot_give_does_not_stop_the_tag(fake_registry, settings):
    """The job's `image` (size, layers, platform) is read before the fence; the index names a
    manifest the registry does not have, so that read fails: the tag is written all the same."""
    fake = fake_registry()
    missing = "sha256:" + "0" * 64
    index = json.dumps({"schemaVersion": 2, "mediaType": registry.OCI_INDEX, "manifests": [
        {"mediaType": registry.OCI_MANIFEST, "digest": missing, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    digest = fake.add(index, registry.OCI_INDEX)
    job, lease = _building_job(settings, fake.address)
    director = pipeline.BuildDirector(job, lease, secrets={})
    director.publish_tag(f"{fake.address}/team/app", job.id, digest)
    assert fake.manifests[job.id] == (index, registry.OCI_INDEX)
    assert "image" not in director.report
