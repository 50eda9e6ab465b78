"""Taking back jobs whose worker is gone, and re-sending lost queue messages.

A building job renews its lease every HEARTBEAT_SECONDS. Once a lease is LEASE_SECONDS old
the job is handed back to the queue (counting a retry) or failed when retries are used up.
Every write is conditional on the lease the reaper saw, so a worker that heartbeats at the
same moment keeps its job, and two reapers running at once act once.
"""

import logging
import os
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from builds import errors
from builds.models import ACTIVE_STATUSES, Job, ServiceCounter, Status
from builds.services import dispatch, lifecycle, logs

log = logging.getLogger(__name__)


def reap(*, batch: int = 100) -> dict[str, int]:
    now = timezone.now()
    expired = Job.objects.filter(
        status__in=ACTIVE_STATUSES, heartbeat_at__lt=now - timedelta(seconds=settings.LEASE_SECONDS)
    )
    counts = {"requeued": 0, "failed": 0, "canceled": 0, "skipped": 0, "resent": 0}
    for job in expired.order_by("heartbeat_at")[:batch]:
        counts[take_back(job, reason=f"worker {job.worker} stopped renewing its lease")] += 1
    stale_pending = Job.objects.filter(
        status=Status.PENDING, enqueued_at__lt=now - timedelta(seconds=settings.REQUEUE_AFTER_SECONDS)
    )
    for job_id, enqueued_at in stale_pending.values_list("pk", "enqueued_at")[:batch]:
        if Job.objects.filter(pk=job_id, status=Status.PENDING, enqueued_at=enqueued_at).update(enqueued_at=now):
            dispatch.publish(job_id)
            counts["resent"] += 1
    if any(counts.values()):
        log.info("reaper: %s", counts)
        for action, count in counts.items():
            if count:
                count_action(action, count)
    return counts


def count_action(action: str, count: int = 1) -> None:
    name = f"reaper_{action}"
    if not ServiceCounter.objects.filter(pk=name).update(value=F("value") + count):
        try:
            with transaction.atomic():
                ServiceCounter.objects.create(name=name, value=count)
        except IntegrityError:  # created meanwhile by another reaper
            ServiceCounter.objects.filter(pk=name).update(value=F("value") + count)


def take_back(job: Job, *, reason: str) -> str:
    """Requeue, fail or cancel one job whose lease is dead; returns what was done."""
    if job.cancel_requested_at:
        done = lifecycle.job_finish(
            job_id=job.pk, lease=job.lease, status=Status.CANCELED, error_code="CANCELED", error="canceled by request"
        )
        return "canceled" if done else "skipped"
    if job.retry_count >= settings.MAX_RETRIES:
        if not lifecycle.job_finish(
            job_id=job.pk, lease=job.lease, status=Status.FAILED, error_code=errors.WORKER_LOST,
            error=f"{reason}; no retries left",
        ):
            return "skipped"
        logs.append_text(job.pk, f"{reason}; no retries left, job failed")
        return "failed"
    with transaction.atomic():
        moved = Job.objects.filter(pk=job.pk, lease=job.lease, status__in=ACTIVE_STATUSES).update(
            status=Status.PENDING, lease=None, worker="", retry_count=F("retry_count") + 1,
            error_code=errors.WORKER_LOST, error=reason, enqueued_at=timezone.now(), progress=None,
        )
        if moved:
            dispatch.publish_on_commit(job.pk)
    if moved:
        logs.append_text(job.pk, f"{reason}; job handed back to the queue")
        return "requeued"
    return "skipped"


def reap_dead_local_workers() -> int:
    """At worker start: jobs leased to processes of this host that no longer exist are taken
    back at once instead of after the lease expires."""
    prefix = f"{settings.WORKER_NAME}:"
    taken = 0
    for job in Job.objects.filter(status__in=ACTIVE_STATUSES, worker__startswith=prefix):
        pid = job.worker[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            count_action(take_back(job, reason=f"worker process {job.worker} is gone"))
            taken += 1
    return taken


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie or a reused pid of some other program does not count as our worker
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"celery" in fh.read()
    except OSError:
        return False
