"""The unauthenticated probes are cheap (issue 11 item 8), against the real web process: /readyz
and /metrics answer from values refreshed in the background, so a flood of requests starts no
buildctl and runs no table scan per request, and /readyz's errors name no internal host or user.

buildctl is a stand-in script here (BUILDCTL_BIN): it counts its runs, which is what is tested,
and answers as a failing or a healthy buildkitd would."""

import json
import socket
import stat
import time

import httpx
import pytest

from builds.models import Job
from tests.conftest import TEST_ROOT, wait_for
from tests.support.jobs import new_id
from tests.support.webserver import WebServer

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_HOST = "buildkitd-7.corp-internal.example"
SECRET_USER = "svc-builder-admin"
WORKERS = [{"id": "w1", "labels": {"org.mobyproject.buildkit.worker.network": "cni"}}]


@pytest.fixture(scope="module")
def probes(django_db_setup):
    root = TEST_ROOT / f"probes-{time.time_ns()}"
    root.mkdir(parents=True)
    runs, healthy = root / "runs", root / "healthy"
    script = root / "buildctl"
    script.write_text(
        "#!/bin/sh\n"
        f"echo run >> {runs}\n"
        f"if [ -e {healthy} ]; then echo '{json.dumps(WORKERS)}'; exit 0; fi\n"
        f"echo 'error: dial tcp {SECRET_HOST}:1234 as {SECRET_USER}: connect: connection refused' >&2\n"
        "exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with socket.socket() as sock:  # a loopback port where no registry listens
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    server = WebServer(TEST_ROOT / "log" / f"web-probes-{time.time_ns()}.log", workers=1, env={
        "BUILDCTL_BIN": str(script), "REGISTRY_URL": f"127.0.0.1:{closed_port}", "PROBE_REFRESH_SECONDS": "1",
    })
    yield server, runs, healthy, closed_port
    server.stop()


def buildctl_runs(runs) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_readyz_flood_starts_buildctl_only_on_refresh(probes):
    web, runs, _, _ = probes
    assert httpx.get(f"{web.url}/readyz", timeout=30).status_code == 503
    before, started = buildctl_runs(runs), time.monotonic()
    for _ in range(50):
        assert httpx.get(f"{web.url}/readyz", timeout=30).status_code == 503
    seconds = time.monotonic() - started
    # Refreshed once a second (PROBE_REFRESH_SECONDS=1), with one buildctl run per refresh.
    assert buildctl_runs(runs) - before <= seconds + 2, f"{buildctl_runs(runs) - before} runs in {seconds:.1f} s"


def test_readyz_errors_name_no_internal_host_or_user(probes):
    web, _, _, closed_port = probes
    body = httpx.get(f"{web.url}/readyz", timeout=30).text
    assert json.loads(body)["status"] == "unavailable"
    for secret in (SECRET_HOST, SECRET_USER, "127.0.0.1", str(closed_port)):
        assert secret not in body, body
    # The detail is for the operator: in the web process's log.
    wait_for(lambda: SECRET_HOST in web.log(), 10, "the web process to log buildctl's error")


def test_readyz_follows_a_recovery_in_the_background(probes):
    web, _, healthy, _ = probes
    healthy.touch()
    try:
        wait_for(lambda: httpx.get(f"{web.url}/readyz", timeout=30).json()["buildkitd"] == "ok", 30,
                 "/readyz to see buildkitd answer")
        assert httpx.get(f"{web.url}/readyz", timeout=30).json()["buildNetwork"] == "ok"
    finally:
        healthy.unlink()


def computed_at(text: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith("hubfly_metrics_computed_timestamp_seconds ")]
    return float(line.split()[1])


def test_metrics_flood_is_served_from_a_refreshed_value(probes):
    web, _, _, _ = probes
    scrape = lambda: httpx.get(f"{web.url}/metrics", timeout=30)  # noqa: E731
    assert scrape().status_code == 200
    started = time.monotonic()
    computed = {computed_at(scrape().text) for _ in range(50)}
    seconds = time.monotonic() - started
    # Refreshed once a second (PROBE_REFRESH_SECONDS=1): 50 answers, few computations.
    assert len(computed) <= seconds + 2, f"{len(computed)} computations in {seconds:.1f} s"
    # ... and a change in the tables shows within a refresh or two.
    Job.objects.create(id=new_id("probe"), project_id="p", user_id="u", source_info={}, request_fingerprint="-",
                       status="pending")
    pending = Job.objects.filter(status="pending").count()
    wait_for(lambda: f'hubfly_jobs{{status="pending"}} {float(pending)}' in scrape().text, 30,
             "/metrics to show the new job")
