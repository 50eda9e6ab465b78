"""Prometheus metrics, computed from the database.

The web process has no in-memory view of the workers (they may run on other hosts), so every
number here is read from the tables all processes share: any web process answers the same.
/metrics needs no token, so a scrape does not compute them: `latest()` answers what a
background thread computed last (health.Refreshed, at most every PROBE_REFRESH_SECONDS), and
`hubfly_metrics_computed_timestamp_seconds` says when that was.
Counters derived from rows (finished builds, callback attempts) only grow while rows are
kept; deleting old rows looks to Prometheus like a counter reset, which rate() handles.
"""

import time
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import Now
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from builds.models import ACTIVE_STATUSES, FINAL_STATUSES, PRIORITIES, CallbackAttempt, CallbackEvent, Job, ServiceCounter, Status
from builds.services.operations.health import Refreshed

DURATION_BUCKETS_SECONDS = (5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600)


def _jobs_by_status() -> dict[str, int]:
    counts = dict.fromkeys(Status.values, 0)
    for status, count in Job.objects.values_list("status").annotate(n=Count("pk")).order_by():
        counts[status] = count
    return counts


def _duration_histogram() -> HistogramMetricFamily:
    """Time from a job's first start to its end (retries included), by final status."""
    histogram = HistogramMetricFamily(
        "hubfly_build_duration_seconds",
        "Duration of finished builds from first start to end, by final status",
        labels=["status"],
    )
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    buckets = {f"le_{i}": Count("pk", filter=Q(d__lte=timedelta(seconds=b))) for i, b in enumerate(DURATION_BUCKETS_SECONDS)}
    rows = {
        row["status"]: row
        for row in Job.objects.filter(status__in=FINAL_STATUSES, started_at__isnull=False, finished_at__isnull=False)
        .annotate(d=duration)
        .values("status")
        .annotate(total=Count("pk"), sum=Sum("d"), **buckets)
        .order_by()
    }
    for status in FINAL_STATUSES:
        row = rows.get(status, {})
        total = row.get("total", 0)
        cumulative = [(str(float(b)), row.get(f"le_{i}", 0)) for i, b in enumerate(DURATION_BUCKETS_SECONDS)]
        seconds = row["sum"].total_seconds() if row.get("sum") else 0.0
        histogram.add_metric([status], cumulative + [("+Inf", total)], seconds)
    return histogram


def _longest_wait_seconds() -> float:
    """By the database's clock, which every host shares: this host's clock may be off. A job
    waiting for its retry's backoff (enqueued_at ahead) is not waiting for a worker yet."""
    oldest = (
        Job.objects.filter(status=Status.PENDING, enqueued_at__lte=Now()).order_by("enqueued_at")
        .annotate(db_now=Now()).values_list("enqueued_at", "db_now").first()
    )
    return max(0.0, (oldest[1] - oldest[0]).total_seconds()) if oldest else 0.0


QUEUE_WAIT_BUCKETS_SECONDS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _queue_wait_histogram() -> HistogramMetricFamily:
    """Time from a job's creation to its first start, by priority."""
    histogram = HistogramMetricFamily(
        "hubfly_queue_wait_seconds", "Time jobs waited from creation to their first start, by priority",
        labels=["priority"],
    )
    wait = ExpressionWrapper(F("started_at") - F("created_at"), output_field=DurationField())
    buckets = {f"le_{i}": Count("pk", filter=Q(w__lte=timedelta(seconds=b))) for i, b in enumerate(QUEUE_WAIT_BUCKETS_SECONDS)}
    rows = {
        row["priority"]: row
        for row in Job.objects.filter(started_at__isnull=False).annotate(w=wait)
        .values("priority").annotate(total=Count("pk"), sum=Sum("w"), **buckets).order_by()
    }
    for name, rank in PRIORITIES.items():
        row = rows.get(rank, {})
        cumulative = [(str(float(b)), row.get(f"le_{i}", 0)) for i, b in enumerate(QUEUE_WAIT_BUCKETS_SECONDS)]
        seconds = max(0.0, row["sum"].total_seconds()) if row.get("sum") else 0.0
        histogram.add_metric([name], cumulative + [("+Inf", row.get("total", 0))], seconds)
    return histogram


PHASE_BUCKETS_SECONDS = (1, 5, 10, 30, 60, 120, 300, 600, 1800)
PHASES = ("queued", "fetch", "build", "push")


def _phases_and_cache() -> tuple[HistogramMetricFamily, GaugeMetricFamily]:
    """Per-phase times and the share of Dockerfile steps the build cache answered, over the
    jobs whose attempt wrote a report (builds.services.pipeline). The report is JSON, read
    here rather than in SQL so that SQLite and PostgreSQL answer alike."""
    observed = {phase: [] for phase in PHASES}
    steps = cached = 0
    rows = Job.objects.filter(report__isnull=False, started_at__isnull=False)
    for report, started_at, created_at in rows.values_list("report", "started_at", "created_at").iterator():
        phases = (report or {}).get("phases") or {}
        observed["queued"].append(max((started_at - created_at).total_seconds(), 0.0))
        for phase in ("fetch", "build", "push"):
            if isinstance(phases.get(phase), (int, float)):
                observed[phase].append(float(phases[phase]))
        cache = (report or {}).get("cache") or {}
        steps += cache.get("steps") or 0
        cached += cache.get("cached") or 0
    histogram = HistogramMetricFamily(
        "hubfly_build_phase_seconds", "Time builds spent per phase: queued, fetch, build, push", labels=["phase"]
    )
    for phase, values in observed.items():
        cumulative = [(str(float(b)), sum(1 for v in values if v <= b)) for b in PHASE_BUCKETS_SECONDS]
        histogram.add_metric([phase], cumulative + [("+Inf", len(values))], sum(values))
    ratio = GaugeMetricFamily("hubfly_build_cache_hit_ratio",
                              "Share of Dockerfile steps the build cache answered, over all reported builds",
                              value=cached / steps if steps else 0.0)
    return histogram, ratio


class DatabaseCollector:
    def collect(self):
        yield GaugeMetricFamily("hubfly_metrics_computed_timestamp_seconds",
                                "When these values were read from the database (Unix time)", value=time.time())
        by_status = _jobs_by_status()
        jobs = GaugeMetricFamily("hubfly_jobs", "Jobs in the database, by status", labels=["status"])
        for status, count in by_status.items():
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily("hubfly_queue_depth", "Jobs waiting for a worker (pending)",
                                value=by_status[Status.PENDING])
        yield GaugeMetricFamily("hubfly_builds_running", "Jobs claimed or building, on all workers",
                                value=sum(by_status[s] for s in ACTIVE_STATUSES))
        yield GaugeMetricFamily("hubfly_oldest_pending_job_age_seconds",
                                "How long the longest-waiting pending job has waited for a worker since it was queued "
                                "or due for a retry (0 if none)", value=_longest_wait_seconds())
        yield _duration_histogram()
        yield _queue_wait_histogram()
        yield from _phases_and_cache()

        # Callback deliveries: every attempt is a CallbackAttempt row.
        failed = Q(http_status__isnull=True) | Q(http_status__lt=200) | Q(http_status__gte=300)
        attempts = CallbackAttempt.objects.aggregate(total=Count("pk"), failed=Count("pk", filter=failed))
        yield CounterMetricFamily("hubfly_callback_attempts", "Callback delivery attempts", value=attempts["total"])
        yield CounterMetricFamily("hubfly_callback_delivery_failures",
                                  "Callback delivery attempts that failed (network error or non-2xx answer)",
                                  value=attempts["failed"])
        events = GaugeMetricFamily("hubfly_callback_events", "Callback events, by delivery state", labels=["state"])
        event_counts = dict(CallbackEvent.objects.values_list("state").annotate(n=Count("pk")).order_by())
        for state in CallbackEvent.State.values:
            events.add_metric([state], event_counts.get(state, 0))
        yield events

        reaper = CounterMetricFamily("hubfly_reaper_actions", "Jobs the reaper acted on, by action",
                                     labels=["action"])
        counted = dict(ServiceCounter.objects.filter(name__startswith="reaper_").values_list("name", "value"))
        for action in ("requeued", "failed", "canceled", "resent"):
            reaper.add_metric([action], counted.get(f"reaper_{action}", 0))
        yield reaper


def render() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format 0.0.4 (which every Prometheus reads), and its
    content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


_latest = Refreshed("metrics", render)


def latest() -> tuple[bytes, str] | None:
    """render()'s last result, refreshed in the background (None if it could not be computed)."""
    return _latest.get()
