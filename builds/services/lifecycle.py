"""Every change of a job's status, as conditional updates.

Each function moves a job only from the states it names, and a worker's writes also match
its lease, so a second claim, a zombie worker or a racing cancel changes nothing: the update
matches zero rows and the caller learns it lost. Nothing here holds a transaction open across
a subprocess or a network call.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from builds.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, Status
from builds.services import callbacks, logs

# Which status may follow which; the functions below are the only writers of `status`.
TRANSITIONS = {
    Status.PENDING: {Status.CLAIMED, Status.CANCELED},
    Status.CLAIMED: {Status.BUILDING, Status.PENDING, Status.SUCCESS, Status.FAILED, Status.CANCELED},
    Status.BUILDING: {Status.PENDING, Status.SUCCESS, Status.FAILED, Status.CANCELED},
}


def job_claim(*, job_id: str, worker: str) -> uuid.UUID | None:
    """pending -> claimed with a fresh lease; None when the job is not (or no longer) ours to take."""
    lease = uuid.uuid4()
    now = timezone.now()
    won = Job.objects.filter(pk=job_id, status=Status.PENDING, cancel_requested_at__isnull=True).update(
        status=Status.CLAIMED, lease=lease, worker=worker, claimed_at=now, heartbeat_at=now, updated_at=now,
        attempts=F("attempts") + 1,
    )
    return lease if won == 1 else None


def job_start_building(*, job_id: str, lease: uuid.UUID, commit_sha: str, image_tag: str) -> bool:
    now = timezone.now()
    return (
        Job.objects.filter(pk=job_id, lease=lease, status=Status.CLAIMED, cancel_requested_at__isnull=True).update(
            status=Status.BUILDING, commit_sha=commit_sha, image_tag=image_tag, heartbeat_at=now, updated_at=now
        )
        == 1
    )


def job_heartbeat(*, job_id: str, lease: uuid.UUID, progress: dict | None = None) -> bool:
    """Renew the lease. False means stop: the job was canceled or is not ours any more."""
    fields = {"heartbeat_at": timezone.now()}
    if progress is not None:
        fields["progress"] = progress
    return (
        Job.objects.filter(pk=job_id, lease=lease, status__in=ACTIVE_STATUSES, cancel_requested_at__isnull=True)
        .update(**fields)
        == 1
    )


def job_fence(*, job_id: str, lease: uuid.UUID) -> bool:
    """Prove, immediately before a write outside the database (the image tag), that this lease
    still holds the building job, and renew it: the reaper cannot hand the job to another
    attempt for LEASE_SECONDS after this returns True. False: canceled or taken away."""
    return (
        Job.objects.filter(pk=job_id, lease=lease, status=Status.BUILDING, cancel_requested_at__isnull=True)
        .update(heartbeat_at=timezone.now())
        == 1
    )


def job_set_started(*, job_id: str, lease: uuid.UUID) -> None:
    """First claim sets startedAt; retries keep it, so durationSeconds covers all attempts."""
    Job.objects.filter(pk=job_id, lease=lease, started_at__isnull=True).update(started_at=timezone.now())


def cancel_requested(job_id: str) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()


def job_finish(
    *,
    job_id: str,
    lease: uuid.UUID | None,
    status: str,
    error_code: str = "",
    error: str = "",
    image_digest: str = "",
    from_statuses=ACTIVE_STATUSES,
) -> bool:
    """Move the job to a final status and queue its one callback, in one transaction."""
    assert status in FINAL_STATUSES
    now = timezone.now()
    with transaction.atomic():
        query = Job.objects.filter(pk=job_id, status__in=from_statuses)
        if lease is not None:
            query = query.filter(lease=lease)
        fields = dict(
            status=status, error_code=error_code, error=error[:2000], finished_at=now, updated_at=now,
            lease=None, progress=None,
        )
        if image_digest:
            fields["image_digest"] = image_digest
        if query.update(**fields) != 1:
            return False
        callbacks.enqueue_outcome(Job.objects.get(pk=job_id))
    return True


def job_retry_later(*, job_id: str, lease: uuid.UUID, error_code: str, error: str, delay_seconds: float) -> bool:
    """Hand a job that failed for infrastructure reasons back to the queue, counting a retry."""
    now = timezone.now()
    return (
        Job.objects.filter(pk=job_id, lease=lease, status__in=ACTIVE_STATUSES).update(
            status=Status.PENDING, lease=None, worker="", retry_count=F("retry_count") + 1,
            error_code=error_code, error=error[:2000], enqueued_at=now + timedelta(seconds=delay_seconds),
            updated_at=now, progress=None,
        )
        == 1
    )


def retry_delay(retry_count: int) -> float:
    """Exponential backoff for the next attempt after `retry_count` earlier retries."""
    return min(settings.RETRY_BACKOFF_MAX_SECONDS, settings.RETRY_BACKOFF_SECONDS * (2**retry_count))


def job_cancel(*, job_id: str) -> tuple[Job | None, bool]:
    """Cancel a job in any non-final state. Returns (job, accepted); accepted is False when the
    job was already final. A pending job is canceled at once; a claimed or building one is
    flagged, and its worker stops the build within a heartbeat and writes `canceled`."""
    now = timezone.now()
    with transaction.atomic():
        canceled_pending = Job.objects.filter(pk=job_id, status=Status.PENDING).update(
            status=Status.CANCELED, cancel_requested_at=now, finished_at=now, updated_at=now,
            error_code="CANCELED", error="canceled before it started", lease=None,
        )
        if canceled_pending:
            callbacks.enqueue_outcome(Job.objects.get(pk=job_id))
    if canceled_pending:
        logs.append_text(job_id, "job canceled before a worker took it")
        return Job.objects.get(pk=job_id), True
    flagged = Job.objects.filter(
        pk=job_id, status__in=ACTIVE_STATUSES, cancel_requested_at__isnull=True
    ).update(cancel_requested_at=now, updated_at=now)
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return None, False
    if flagged:
        logs.append_text(job_id, "cancel requested; stopping the build")
    return job, not job.is_final
