"""The source rules hold all the way to the fetch (issue 10, item 4): no redirect is followed,
git connects only to the address that was checked, IPv6 literals are judged by the IPv4
address they carry, and a fetch is bounded in time, in bytes and by the disk's free space."""

import os
import shutil
import socket
import sys
import types
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from builds import errors
from builds.errors import TransientError
from builds.models import Job
from builds.services import pipeline
from builds.services.state import lifecycle
from builds.services.steps import source_rules
from tests.conftest import TEST_ROOT, Worker, wait_for
from tests.support.gitserver import Repo
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.support.redirector import LoopbackGitServer, servers_on_one_port

BASE = "FROM debian:bookworm-slim\n"


# --- addresses -------------------------------------------------------------------------------

REFUSED_LITERALS = [
    "64:ff9b::a00:1",        # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",       # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",    # NAT64 of 169.254.169.254
    "64:ff9b:1::808:808",    # local-use NAT64 (RFC 8215): never public
    "2002:a00:1::1",         # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::",      # 6to4 of 169.254.169.254
    "2002:7f00:1::",         # 6to4 of 127.0.0.1
    "::a00:1",               # IPv4-compatible 10.0.0.1
    "::7f00:1",              # IPv4-compatible 127.0.0.1
    "::ffff:10.0.0.1",       # IPv4-mapped 10.0.0.1
    "fec0::1",               # site-local
    "fec0:1234::5",          # site-local
]
ACCEPTED_LITERALS = ["64:ff9b::808:808", "2002:808:808::1", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", REFUSED_LITERALS)
def test_ipv6_literal_carrying_or_being_an_internal_address_is_refused(settings, address):
    settings.GIT_ALLOWED_HOSTS = []
    with pytest.raises(source_rules.SourceError, match="non-public"):
        source_rules.check_host_allowed(source_rules.parse_repository(f"https://[{address}]/team/app.git"))


@pytest.mark.parametrize("address", ACCEPTED_LITERALS)
def test_ipv6_literal_carrying_a_public_address_is_accepted(settings, address):
    settings.GIT_ALLOWED_HOSTS = []
    repo = source_rules.parse_repository(f"https://[{address}]/team/app.git")
    assert source_rules.check_host_allowed(repo) == (address,)


def test_allowed_network_admits_the_ipv6_forms_that_carry_its_addresses(settings):
    settings.GIT_ALLOWED_HOSTS = ["10.1.0.0/16"]
    for address in ("10.1.2.3", "[::ffff:10.1.2.3]", "[64:ff9b::a01:203]", "[2002:a01:203::]"):
        assert source_rules.check_host_allowed(source_rules.parse_repository(f"https://{address}/x.git"))
    with pytest.raises(source_rules.SourceError):
        source_rules.check_host_allowed(source_rules.parse_repository("https://[64:ff9b::a02:203]/x.git"))


@pytest.mark.parametrize("url", [
    "https://exämple.com/x.git", "https://example.com./x.git", "https://ex%61mple.com/x.git",
    "https://[fe80::1%25eth0]/x.git",
])
def test_host_git_could_resolve_differently_from_the_check_is_refused(url):
    with pytest.raises(source_rules.SourceError):
        source_rules.parse_repository(url)


# --- in the worker, in-process (the resolver is the test's) ----------------------------------


def fake_resolver(monkeypatch, answers: dict[str, str], *, then_real: bool):
    """socket.getaddrinfo answering `answers` (name -> address): once each when then_real, so
    the name resolves otherwise (here: as the system says) by the time anyone asks again."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers and not (then_real and host in asked):
            asked.append(host)
            family = socket.AF_INET6 if ":" in answers[host] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answers[host], port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def claimed_job(url: str) -> tuple[Job, uuid.UUID]:
    """A job row claimed by this test process (never published, so no worker takes it)."""
    job = Job.objects.create(
        id=new_id("rules"), project_id="demo-project", user_id="tester", source_type="git",
        source_info={"gitRepository": url}, build_config={}, request_fingerprint="test",
        enqueued_at=timezone.now(),
    )
    lease = lifecycle.job_claim(job_id=job.id, worker="test-source-rules")
    return Job.objects.get(pk=job.id), lease


def fetch_in_process(url: str) -> str:
    job, lease = claimed_job(url)
    director = pipeline.BuildDirector(job, lease)
    try:
        return director.fetch_source()
    finally:
        director.log.flush()
        lifecycle.job_finish(job_id=job.id, lease=lease, status="failed", error_code="TEST", error="test only")
        shutil.rmtree(director.workspace, ignore_errors=True)


def test_submit_check_reuses_a_dns_answer_briefly_and_judges_it_anew(settings, monkeypatch):
    """A burst of creations naming one host asks DNS once; the worker's check asks again."""
    monkeypatch.setattr(source_rules, "_resolved", {})
    settings.GIT_ALLOWED_HOSTS = ["127.0.0.2"]
    asked = fake_resolver(monkeypatch, {"localhost": "127.0.0.2"}, then_real=True)
    repo = source_rules.parse_repository("http://localhost:8418/app.git")
    for _ in range(3):
        assert source_rules.check_host_allowed(repo, max_age_seconds=10) == ("127.0.0.2",)
    assert asked == ["localhost"]
    settings.GIT_ALLOWED_HOSTS = []  # the rules apply to a reused answer as to a new one
    with pytest.raises(source_rules.SourceError, match="non-public address"):
        source_rules.check_host_allowed(repo, max_age_seconds=10)
    settings.GIT_ALLOWED_HOSTS = ["127.0.0.2"]
    # The worker's check (no reuse) asks again: the system's answer, 127.0.0.1, is refused here.
    with pytest.raises(source_rules.SourceError, match=r"non-public address \(127\.0\.0\.1\)"):
        source_rules.check_host_allowed(repo)


@pytest.mark.usefixtures("live_db")
def test_name_rebound_between_check_and_fetch_is_fetched_from_the_checked_address(settings, monkeypatch):
    """'localhost' answers 127.0.0.2 (allowed) to the check and then resolves as the system says,
    127.0.0.1 (refused here), where another server holds another commit on the same port."""
    checked, other = servers_on_one_port(TEST_ROOT / "rebind-http", ("127.0.0.2", "127.0.0.1"))
    try:
        wanted = checked.repo("app").commit({"Dockerfile": BASE + "RUN echo checked\n"})
        other.repo("app").commit({"Dockerfile": BASE + "RUN echo other\n"})
        settings.GIT_ALLOWED_HOSTS = ["127.0.0.2"]
        asked = fake_resolver(monkeypatch, {"localhost": "127.0.0.2"}, then_real=True)

        sha = fetch_in_process(f"http://localhost:{checked.port}/app.git")

        assert asked == ["localhost"]
        assert sha == wanted
        assert other.requests == []
    finally:
        checked.close()
        other.close()


@pytest.mark.usefixtures("live_db")
def test_ssh_fetch_connects_to_the_checked_address(settings, monkeypatch, tmp_path):
    """ssh is tests/support/fakessh.py (no sshd here): it serves the repository of the address
    it is told to connect to, or of the name's fetch-time DNS answer (127.0.0.3) if not told."""
    roots = tmp_path / "roots"
    shas = {}
    for address in ("127.0.0.2", "127.0.0.3"):
        holder = types.SimpleNamespace(root=roots / address / "team", url="")
        shas[address] = Repo(holder, "app").commit({"Dockerfile": BASE + f"RUN echo {address}\n"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = Path(__file__).parent / "support" / "fakessh.py"
    (bin_dir / "ssh").write_text(
        f'#!/bin/sh\nexec {sys.executable} {fake} {roots} git.rebind.test=127.0.0.3 "$@"\n'
    )
    (bin_dir / "ssh").chmod(0o755)
    settings.INHERITED_ENV = {**settings.INHERITED_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    settings.GIT_ALLOWED_HOSTS = ["127.0.0.2"]
    fake_resolver(monkeypatch, {"git.rebind.test": "127.0.0.2"}, then_real=False)

    sha = fetch_in_process("ssh://git@git.rebind.test/team/app.git")

    assert sha == shas["127.0.0.2"]
    assert set((roots / "connections").read_text().splitlines()) == {"git.rebind.test 127.0.0.2"}


@pytest.mark.usefixtures("live_db")
def test_min_free_disk_above_free_space_is_a_retried_infrastructure_error_before_any_fetch(settings):
    server = LoopbackGitServer(TEST_ROOT / "disk-full")
    try:
        server.repo("app").commit({"Dockerfile": BASE})
        settings.MIN_FREE_DISK = 2**60
        job, lease = claimed_job(f"{server.url}/app.git")
        director = pipeline.BuildDirector(job, lease)
        with pytest.raises(TransientError) as raised:
            director.fetch_source()
        assert raised.value.code == errors.DISK_SPACE_LOW and raised.value.retryable
        assert server.requests == []
        assert not (director.workspace / "src").exists()
        lifecycle.job_finish(job_id=job.id, lease=lease, status="failed", error_code="TEST", error="test only")
        shutil.rmtree(director.workspace, ignore_errors=True)

        # And through the attempt: the job goes back to the queue with the code, retry counted.
        job = Job.objects.create(
            id=new_id("rules"), project_id="demo-project", user_id="tester", source_type="git",
            source_info={"gitRepository": f"{server.url}/app.git"}, build_config={},
            request_fingerprint="test", enqueued_at=timezone.now(),
        )
        outcome = pipeline.run_job(job.id)
        job.refresh_from_db()
        assert outcome.retry_in is not None
        assert (job.status, job.error_code, job.retry_count) == ("pending", errors.DISK_SPACE_LOW, 1)
        assert server.requests == []
        lifecycle.job_cancel(job_id=job.id)
    finally:
        server.close()


# --- through the API and a real worker -------------------------------------------------------

@pytest.fixture(scope="module")
def limited_worker(worker):
    """The session's build worker replaced, for this module, by one with small source limits
    (the shared one keeps the defaults the other tests rely on)."""
    worker.stop()
    limited = Worker("source-rules", concurrency=2, extra_env={"GIT_MAX_BYTES": "2MiB", "GIT_TIMEOUT_SECONDS": "5"})
    try:
        yield limited
    finally:
        limited.stop()
        worker.start()


def workspaces() -> set[str]:
    root = Path(django_settings.WORKSPACE_DIR)
    return set(os.listdir(root)) if root.exists() else set()


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_redirect_to_a_refused_host_fails_source_refused_and_fetches_nothing(api, limited_worker):
    target = LoopbackGitServer(TEST_ROOT / "redirect-target", "127.0.0.2")
    redirector = LoopbackGitServer(TEST_ROOT / "redirector", "127.0.0.1", redirect_to=target.url)
    try:
        target.repo("app").commit({"Dockerfile": BASE})
        job = wait_final(submit(api, f"{redirector.url}/app.git"))
        assert (job.status, job.error_code) == ("failed", errors.SOURCE_REFUSED), job.error
        assert "redirect" in job.error
        assert redirector.requests and target.requests == []
    finally:
        target.close()
        redirector.close()


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_repository_larger_than_git_max_bytes_fails_and_leaves_no_workspace(api, limited_worker, git_server):
    repo = git_server.repo("too-large")
    repo.commit({"Dockerfile": BASE, "blob.bin": os.urandom(6 * 1024 * 1024)})
    before = workspaces()
    job_id = submit(api, repo.url)
    job = wait_final(job_id)
    assert (job.status, job.error_code) == ("failed", errors.SOURCE_TOO_LARGE), job.error
    assert "GIT_MAX_BYTES" in job.error
    wait_for(lambda: workspaces() <= before, 10, "the workspace to be removed")


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_small_pack_that_expands_past_git_max_bytes_is_never_checked_out(api, limited_worker, git_server):
    repo = git_server.repo("expands")
    repo.commit({"Dockerfile": BASE, "zeros.bin": bytes(20 * 1024 * 1024)})
    before = workspaces()
    job_id = submit(api, repo.url)
    job = wait_final(job_id)
    assert (job.status, job.error_code) == ("failed", errors.SOURCE_TOO_LARGE), job.error
    assert "nothing was checked out" in log_text(api, job_id)
    wait_for(lambda: workspaces() <= before, 10, "the workspace to be removed")


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_fetch_longer_than_git_timeout_seconds_fails_source_timeout(api, limited_worker, git_server):
    repo = git_server.repo("tarpit")
    repo.commit({"Dockerfile": BASE})
    git_server.slow_down("tarpit", 120)
    job = wait_final(submit(api, repo.url, timeoutSeconds=600), timeout=30)
    assert (job.status, job.error_code) == ("failed", errors.SOURCE_TIMEOUT), job.error
    assert "GIT_TIMEOUT_SECONDS (5 s)" in job.error
