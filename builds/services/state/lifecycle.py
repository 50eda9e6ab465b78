"""Every change of a job's status, as conditional updates.

Each function moves a job only from the states it names, and a worker's writes also match
its lease, so a second claim, a zombie worker or a racing cancel changes nothing: the update
matches zero rows and the caller learns it lost. Nothing here holds a transaction open across
a subprocess or a network call.

Every time a lease or an age depends on (heartbeats, claims, queue times, startedAt) is the
database's clock (`Now()`), never a host's: workers whose clocks disagree still agree on who
holds a lease. A cancel, once accepted, always wins: whatever the attempt ends with, and
whoever writes the end (worker or reaper), a job whose cancel was requested ends `canceled`.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.db.models.functions import Now

from builds import errors
from builds.joblog import writer
from builds.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, Status
from builds.services import callbacks
from builds.services.state import dispatch, queue

# Every move of `status`, by the function that writes it: (the states it takes a job from, the
# states it may leave it in). The functions below are the only writers of `status` and read
# their start states here; TRANSITIONS (which status may follow which) is made from this table,
# and docs/architecture.md's state table says the same (tests/test_lifecycle.py).
MOVES = {
    "job_claim": ((Status.PENDING,), (Status.CLAIMED,)),
    "job_start_building": ((Status.CLAIMED,), (Status.BUILDING,)),
    "job_finish": (ACTIVE_STATUSES, FINAL_STATUSES),
    "job_retry_later": (ACTIVE_STATUSES, (Status.PENDING, Status.CANCELED)),
    "job_take_back": (ACTIVE_STATUSES, (Status.PENDING, Status.FAILED, Status.CANCELED)),
    "job_cancel": ((Status.PENDING,), (Status.CANCELED,)),
    "job_supersede": ((Status.PENDING,), (Status.CANCELED,)),
}


def _transitions() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for sources, targets in MOVES.values():
        for source in sources:
            table.setdefault(source, set()).update(targets)
    return table


TRANSITIONS = _transitions()


def _from(move: str) -> tuple[str, ...]:
    return MOVES[move][0]


_CANCEL_REQUESTED = Q(cancel_requested_at__isnull=False)


def seconds_ago(seconds: float):
    """The database's clock, `seconds` back: what ages are compared with."""
    return Now() - timedelta(seconds=seconds)


def lease_expired() -> Q:
    return Q(heartbeat_at__lt=seconds_ago(settings.LEASE_SECONDS))


def job_claim(*, job_id: str, worker: str) -> uuid.UUID | None:
    """pending -> claimed with a fresh lease; None when the job is not (or no longer) ours to take."""
    lease = uuid.uuid4()
    won = Job.objects.filter(pk=job_id, status__in=_from("job_claim"), cancel_requested_at__isnull=True).update(
        status=Status.CLAIMED, lease=lease, worker=worker, claimed_at=Now(), heartbeat_at=Now(), updated_at=Now(),
        attempts=F("attempts") + 1,
    )
    return lease if won == 1 else None


def job_claim_next(*, worker: str) -> tuple[str, uuid.UUID] | None:
    """The job the fair queue starts next (builds.services.state.queue), pending -> claimed with a
    fresh lease: (job id, lease), or None when no job may start now. Picked and claimed under
    the queue's lock, so tenant limits hold with any number of workers; the claim is still
    conditional, since a cancel takes no lock."""
    for _ in range(10):
        with transaction.atomic():
            queue.lock()
            job_id = queue.pick()
            if job_id is None:
                return None
            lease = job_claim(job_id=job_id, worker=worker)
        if lease is not None:
            return job_id, lease
    return None


def job_start_building(*, job_id: str, lease: uuid.UUID, commit_sha: str, image_tag: str) -> bool:
    return (
        Job.objects.filter(pk=job_id, lease=lease, status__in=_from("job_start_building"),
                           cancel_requested_at__isnull=True).update(
            status=Status.BUILDING, commit_sha=commit_sha, image_tag=image_tag, heartbeat_at=Now(), updated_at=Now()
        )
        == 1
    )


def job_heartbeat(*, job_id: str, lease: uuid.UUID, progress: dict | None = None) -> bool:
    """Renew the lease. False means stop: the job was canceled or is not ours any more."""
    fields = {"heartbeat_at": Now()}
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
        .update(heartbeat_at=Now())
        == 1
    )


def job_set_started(*, job_id: str, lease: uuid.UUID) -> float:
    """First claim sets startedAt; retries keep it, so durationSeconds and the job's timeout
    cover all attempts. Returns the seconds since that first start."""
    Job.objects.filter(pk=job_id, lease=lease, started_at__isnull=True).update(started_at=Now())
    started_at, now = Job.objects.filter(pk=job_id).annotate(db_now=Now()).values_list("started_at", "db_now").get()
    return max(0.0, (now - started_at).total_seconds())


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
    failure_step: str = "",
    report: dict | None = None,
    warnings: list[str] | None = None,
) -> bool:
    """Move the job to a final status and queue its one callback, in one transaction. A job
    whose cancel was requested ends `canceled` whatever `status` says."""
    query = Job.objects.filter(pk=job_id, status__in=_from("job_finish"))
    if lease is not None:
        query = query.filter(lease=lease)
    return _finish(job_id, query, status=status, error_code=error_code, error=error, image_digest=image_digest,
                   failure_step=failure_step, report=report, warnings=warnings)


def _finish(job_id: str, query: QuerySet, *, status: str, error_code: str, error: str, image_digest: str = "",
            failure_step: str = "", report: dict | None = None,
            warnings: list[str] | None = None) -> bool:
    assert status in FINAL_STATUSES
    fields = dict(
        status=Value(status), error_code=Value(error_code), error=Value(error[:2000]), finished_at=Now(),
        updated_at=Now(), lease=None, progress=None, failure_step=Value(failure_step[:512]),
    )
    if image_digest:
        fields["image_digest"] = Value(image_digest)
    if report is not None:
        fields["report"] = Value(report, output_field=Job._meta.get_field("report"))
    if warnings:
        fields["warnings"] = list(warnings)
    if status != Status.CANCELED:
        # Decided in the update itself: a cancel flagged a moment ago still counts.
        overrides = {"status": Status.CANCELED, "error_code": errors.CANCELED, "error": "canceled by request",
                     "image_digest": "", "failure_step": ""}
        for name in list(fields):
            if name in overrides:
                fields[name] = Case(When(_CANCEL_REQUESTED, then=Value(overrides[name])), default=fields[name])
    # A job canceled because a newer one superseded it says so, whoever ends it.
    superseded = _CANCEL_REQUESTED & Q(error_code=errors.SUPERSEDED)
    for name in ("error_code", "error"):
        fields[name] = Case(When(superseded, then=F(name)), default=fields[name],
                            output_field=Job._meta.get_field(name))
    with transaction.atomic():
        if query.update(**fields) != 1:
            return False
        callbacks.enqueue_outcome(Job.objects.get(pk=job_id))
    return True


def job_retry_later(*, job_id: str, lease: uuid.UUID, error_code: str, error: str, delay_seconds: float) -> bool:
    """Hand a job that failed for infrastructure reasons back to the queue, counting a retry.
    False when it was not handed back: the lease is lost, or a cancel was requested, in which
    case the job ends `canceled` here (its worker had not noticed the cancel yet)."""
    ours = Job.objects.filter(pk=job_id, lease=lease, status__in=_from("job_retry_later"))
    if ours.filter(cancel_requested_at__isnull=True).update(
        status=Status.PENDING, lease=None, worker="", retry_count=F("retry_count") + 1,
        error_code=error_code, error=error[:2000], enqueued_at=Now() + timedelta(seconds=delay_seconds),
        updated_at=Now(), progress=None,
    ):
        return True
    _finish(job_id, ours.filter(_CANCEL_REQUESTED), status=Status.CANCELED, error_code=errors.CANCELED, error="canceled by request")
    return False


def job_take_back(*, job_id: str, lease: uuid.UUID | None, reason: str, worker_gone: bool = False) -> str:
    """A job whose worker is gone: back to `pending` (a retry), or `failed` with WORKER_LOST when
    retries are used up, or `canceled` when a cancel was requested. One conditional update on
    the lease the caller saw and on the heartbeat being expired still, so a worker that renewed
    its lease since the caller looked keeps its job; `worker_gone` (the caller saw the worker
    process is dead) takes it back without waiting for the lease to expire.
    Returns "requeued", "failed", "canceled" or "skipped"."""
    lost = Job.objects.filter(pk=job_id, lease=lease, status__in=_from("job_take_back"))
    if not worker_gone:
        lost = lost.filter(lease_expired())
    with transaction.atomic():
        if lost.filter(cancel_requested_at__isnull=True, retry_count__lt=settings.MAX_RETRIES).update(
            status=Status.PENDING, lease=None, worker="", retry_count=F("retry_count") + 1,
            error_code=errors.WORKER_LOST, error=reason, enqueued_at=Now(), updated_at=Now(), progress=None,
        ):
            dispatch.publish_on_commit(job_id)
            return "requeued"
    ends = lost.filter(_CANCEL_REQUESTED | Q(retry_count__gte=settings.MAX_RETRIES))
    if not _finish(job_id, ends, status=Status.FAILED, error_code=errors.WORKER_LOST, error=f"{reason}; no retries left"):
        return "skipped"
    return "canceled" if Job.objects.filter(pk=job_id, status=Status.CANCELED).exists() else "failed"


def retry_delay(retry_count: int) -> float:
    """Exponential backoff for the next attempt after `retry_count` earlier retries."""
    return min(settings.RETRY_BACKOFF_MAX_SECONDS, settings.RETRY_BACKOFF_SECONDS * (2**retry_count))


def job_supersede(*, job_id: str, by: str, running: bool) -> bool:
    """Cancel an older job that the newer job `by` made pointless: pending at once, and with
    `running` a claimed or building one too (its worker stops it within a heartbeat); either
    ends `canceled` with errorCode SUPERSEDED and the newer job's id in `error`."""
    message = f"superseded by job {by}"
    statuses = (Status.PENDING, *ACTIVE_STATUSES) if running else (Status.PENDING,)
    if not Job.objects.filter(pk=job_id, status__in=statuses, cancel_requested_at__isnull=True).update(
        cancel_requested_at=Now(), updated_at=Now(), error_code=errors.SUPERSEDED, error=message,
    ):
        return False
    if _finish(job_id, Job.objects.filter(pk=job_id, status__in=_from("job_supersede")), status=Status.CANCELED,
               error_code=errors.SUPERSEDED, error=message):
        writer.append_text(job_id, f"{message}; canceled before a worker took it")
    else:
        writer.append_text(job_id, f"{message}; stopping the build")
    return True


def job_cancel(*, job_id: str) -> tuple[Job | None, bool]:
    """Cancel a job in any non-final state. Returns (job, accepted); accepted is False when the
    job was already final. The request is flagged first, then a pending job is canceled at
    once; a claimed or building one is stopped by its worker within a heartbeat, and whoever
    ends it after the flag (worker, retry, reaper) ends it `canceled`. In this order a job that
    goes back to the queue between the two steps is canceled too."""
    flagged = Job.objects.filter(
        pk=job_id, status__in=(Status.PENDING, *ACTIVE_STATUSES), cancel_requested_at__isnull=True
    ).update(cancel_requested_at=Now(), updated_at=Now())
    canceled_pending = _finish(
        job_id, Job.objects.filter(pk=job_id, status__in=_from("job_cancel")), status=Status.CANCELED,
        error_code=errors.CANCELED,
        error="canceled before it started",
    )
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return None, False
    if canceled_pending:
        writer.append_text(job_id, "job canceled before a worker took it")
        return job, True
    if flagged:
        writer.append_text(job_id, "cancel requested; stopping the build")
    return job, not job.is_final
