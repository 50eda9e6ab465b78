"""Taking back jobs whose worker is gone, and re-sending lost queue messages.

A building job renews its lease every HEARTBEAT_SECONDS. Once a lease is LEASE_SECONDS old
(by the database's clock) the job is handed back to the queue (counting a retry) or failed
when retries are used up; `lifecycle.job_take_back` writes it, conditional on the lease the
reaper saw and on the heartbeat being expired still, so a worker that heartbeats at the same
moment keeps its job, and two reapers running at once act once.
"""

import logging

import psutil

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Now

from builds.joblog import writer
from builds.models import ACTIVE_STATUSES, Job, ServiceCounter, Status
from builds.services.state import dispatch, lifecycle, queue

log = logging.getLogger(__name__)


def reap(*, batch: int = 100) -> dict[str, int]:
    expired = Job.objects.filter(lifecycle.lease_expired(), status__in=ACTIVE_STATUSES)
    counts = {"requeued": 0, "failed": 0, "canceled": 0, "skipped": 0, "resent": 0}
    for job in expired.order_by("heartbeat_at")[:batch]:
        counts[take_back(job, reason=f"worker {job.worker} stopped renewing its lease")] += 1
    stale = lifecycle.seconds_ago(settings.REQUEUE_AFTER_SECONDS)
    stale_pending = Job.objects.filter(status=Status.PENDING, enqueued_at__lt=stale)
    for job_id, cancel_requested_at in stale_pending.values_list("pk", "cancel_requested_at")[:batch]:
        if cancel_requested_at:  # no worker may claim it: end it instead of re-sending it forever
            _, accepted = lifecycle.job_cancel(job_id=job_id)
            counts["canceled" if accepted else "skipped"] += 1
        # Still stale in the update: another reaper that re-sent it meanwhile moved enqueued_at.
        elif Job.objects.filter(pk=job_id, status=Status.PENDING, enqueued_at__lt=stale).update(enqueued_at=Now()):
            dispatch.publish(job_id)
            counts["resent"] += 1
    # The safety net of the fair queue: a message owed to a job that may start now.
    counts["resent"] += queue.kick()
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


def take_back(job: Job, *, reason: str, worker_gone: bool = False) -> str:
    """Requeue, fail or cancel one job whose lease is dead; returns what was done."""
    done = lifecycle.job_take_back(job_id=job.pk, lease=job.lease, reason=reason, worker_gone=worker_gone)
    if done == "requeued":
        writer.append_text(job.pk, f"{reason}; job handed back to the queue")
    elif done == "failed":
        writer.append_text(job.pk, f"{reason}; no retries left, job failed")
    return done


def reap_dead_local_workers() -> int:
    """At worker start: jobs leased to processes of this host that no longer exist are taken
    back at once instead of after the lease expires."""
    prefix = f"{settings.WORKER_NAME}:"
    taken = 0
    for job in Job.objects.filter(status__in=ACTIVE_STATUSES, worker__startswith=prefix):
        pid = job.worker[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            count_action(take_back(job, reason=f"worker process {job.worker} is gone", worker_gone=True))
            taken += 1
    return taken


def _alive(pid: int) -> bool:
    """A live Celery process: not a zombie, and not a reused pid of some other program."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and any("celery" in part for part in process.cmdline())
    except psutil.AccessDenied:
        return True
    except psutil.Error:  # gone (or gone while we looked)
        return False
