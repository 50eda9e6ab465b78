"""/metrics (issue 4 item 5): Prometheus text computed from the database, so the real web
process reports jobs, queue, running builds, durations, callback failures and reaper marks
written by other processes. The values are refreshed in the background (issue 11 item 8), so
a test reads a scrape computed after its writes."""

import time
import uuid
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from builds.models import CallbackAttempt, CallbackEvent, Job, ServiceCounter
from builds.services.state import reaper
from tests.conftest import TEST_ROOT, wait_for
from tests.support.jobs import new_id
from tests.support.webserver import WebServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def web(django_db_setup):
    server = WebServer(TEST_ROOT / "log" / f"web-metrics-{time.time_ns()}.log", env={"PROBE_REFRESH_SECONDS": "0.2"})
    yield server
    server.stop()


def job(status: str, *, seconds: float | None = None, error_code: str = "") -> Job:
    now = timezone.now()
    started = now - timedelta(seconds=seconds) if seconds is not None else None
    return Job.objects.create(
        id=new_id("metrics"), project_id="p", user_id="u", source_info={}, request_fingerprint="-", status=status,
        started_at=started, finished_at=now if seconds is not None else None, error_code=error_code,
    )


def scrape_once(web) -> dict:
    response = httpx.get(f"{web.url}/metrics", timeout=10)  # no token: like /healthz
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(web) -> dict:
    """The first scrape computed after this call (so after the test's writes)."""
    since = time.time()
    return wait_for(lambda: (m := scrape_once(web))[("hubfly_metrics_computed_timestamp_seconds", ())] > since and m,
                    30, "/metrics computed after the writes")


def test_metrics_report_jobs_queue_running_and_durations(web):
    Job.objects.all().delete()
    for status in ("pending", "pending", "pending", "claimed", "building", "canceled"):
        job(status)
    for seconds in (3, 20, 20, 700):
        job("success", seconds=seconds)
    job("failed", seconds=40)
    job("failed", seconds=5000, error_code="WORKER_LOST")
    job("pending", error_code="WORKER_LOST")

    m = scrape(web)
    assert m[("hubfly_jobs", (("status", "pending"),))] == 4
    assert m[("hubfly_jobs", (("status", "success"),))] == 4
    assert m[("hubfly_queue_depth", ())] == 4
    assert m[("hubfly_builds_running", ())] == 2
    assert m[("hubfly_oldest_pending_job_age_seconds", ())] >= 0

    def bucket(status, le):
        return m[("hubfly_build_duration_seconds_bucket", (("le", le), ("status", status)))]

    assert bucket("success", "5.0") == 1
    assert bucket("success", "30.0") == 3
    assert bucket("success", "600.0") == 3
    assert bucket("success", "900.0") == 4
    assert bucket("success", "+Inf") == 4
    assert m[("hubfly_build_duration_seconds_count", (("status", "success"),))] == 4
    assert m[("hubfly_build_duration_seconds_sum", (("status", "success"),))] == pytest.approx(743, abs=1)
    assert bucket("failed", "3600.0") == 1 and bucket("failed", "+Inf") == 2
    assert m[("hubfly_reaper_actions_total", (("action", "requeued"),))] == 0


def test_metrics_have_phase_times_and_the_cache_hit_ratio(web):
    Job.objects.all().delete()
    for fetch, build, push, steps, cached in ((0.5, 3, 0.2, 3, 0), (2, 40, 7, 3, 2)):
        done = job("success", seconds=60)
        Job.objects.filter(pk=done.pk).update(report={"phases": {"fetch": fetch, "build": build, "push": push},
                                                      "cache": {"steps": steps, "cached": cached}})
    job("success", seconds=5)  # a job of a release before reports: not counted

    m = scrape(web)

    def bucket(phase, le):
        return m[("hubfly_build_phase_seconds_bucket", (("le", le), ("phase", phase)))]

    assert bucket("fetch", "1.0") == 1 and bucket("fetch", "5.0") == 2
    assert bucket("build", "5.0") == 1 and bucket("build", "60.0") == 2
    assert bucket("push", "1.0") == 1 and bucket("push", "10.0") == 2
    assert m[("hubfly_build_phase_seconds_count", (("phase", "queued"),))] == 2
    assert m[("hubfly_build_phase_seconds_sum", (("phase", "build"),))] == pytest.approx(43)
    assert m[("hubfly_build_cache_hit_ratio", ())] == pytest.approx(2 / 6)


def test_metrics_count_failed_callback_deliveries(web):
    target = job("success", seconds=1)
    event = CallbackEvent.objects.create(id=uuid.uuid4(), job=target, url="http://127.0.0.1:9/hook", body="{}",
                                         next_attempt_at=timezone.now(), attempts=3)
    for status, error in ((None, "ConnectionRefusedError"), (500, "HTTP 500"), (204, "")):
        CallbackAttempt.objects.create(event=event, http_status=status, error=error)
    CallbackEvent.objects.filter(pk=event.pk).update(state=CallbackEvent.State.DELIVERED)

    m = scrape(web)
    assert m[("hubfly_callback_attempts_total", ())] == 3
    assert m[("hubfly_callback_delivery_failures_total", ())] == 2
    assert m[("hubfly_callback_events", (("state", "delivered"),))] == 1
    assert m[("hubfly_callback_events", (("state", "gave_up"),))] == 0


def test_metrics_count_reaper_actions(web):
    stale = timezone.now() - timedelta(hours=1)
    job_id = new_id("lost")
    Job.objects.create(id=job_id, project_id="p", user_id="u", source_info={"gitRepository": "http://127.0.0.1:9/x"},
                       request_fingerprint="x", status="building", lease=uuid.uuid4(), worker="gone:1",
                       heartbeat_at=stale)
    before = ServiceCounter.objects.filter(pk="reaper_requeued").values_list("value", flat=True).first() or 0
    reaper.reap()
    assert scrape(web)[("hubfly_reaper_actions_total", (("action", "requeued"),))] == before + 1


@pytest.mark.usefixtures("no_build_worker")
def test_oldest_pending_age_is_measured_by_the_database_clock(tmp_path):
    """Fake: this web process's clock runs an hour ahead (the sitecustomize shim of
    test_lifecycle_faults); the database's clock is the true one. A job waiting for its retry's
    backoff is not waiting for a worker yet. The waiting job's age stays under
    REQUEUE_AFTER_SECONDS (20 s in the tests): the session's reaper re-sends an older one and
    moves its enqueued_at to now."""
    from django.db.models.functions import Now

    from tests.test_lifecycle_faults import SKEWED_CLOCK

    (tmp_path / "sitecustomize.py").write_text(SKEWED_CLOCK)
    server = WebServer(TEST_ROOT / "log" / f"web-metrics-skewed-{time.time_ns()}.log",
                       env={"PROBE_REFRESH_SECONDS": "0.2", "PYTHONPATH": str(tmp_path),
                            "HUBFLY_TEST_CLOCK_SKEW_SECONDS": "3600"})
    try:
        assert "clock skewed by +3600 s" in server.log()
        Job.objects.all().delete()
        waiting, backing_off = job("pending"), job("pending", error_code="GIT_UNAVAILABLE")
        Job.objects.filter(pk=waiting.pk).update(enqueued_at=Now() - timedelta(seconds=10))
        Job.objects.filter(pk=backing_off.pk).update(enqueued_at=Now() + timedelta(seconds=1000))
        age = wait_for(lambda: (a := scrape_once(server)[("hubfly_oldest_pending_job_age_seconds", ())]) >= 10 and a,
                       30, "the waiting job in /metrics")
    finally:
        server.stop()
    assert 10 <= age < 20, age  # an hour off if the web process's clock were used
