"""Celery tasks: thin wrappers that take ids and call one service each."""

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError

from builds.services import callbacks, pipeline
from builds.services.operations import dbfaults, housekeeping
from builds.services.state import reaper


@shared_task(bind=True, acks_late=True, max_retries=None, ignore_result=True)
def run_job(self, job_id: str) -> None:
    # The message says "there is work": the fair queue decides which job this slot starts.
    try:
        outcome = pipeline.run_next(hint=job_id)
    except DatabaseError as exc:
        if not dbfaults.is_transient(exc):
            raise
        # The database is away (a restart, a failover). Acknowledged as a failure, this
        # message would be gone and the job it stands for would wait for the reaper
        # (REQUEUE_AFTER_SECONDS); sent again, it starts a job once the database is back.
        dbfaults.recover()
        raise self.retry(countdown=max(1.0, settings.RETRY_BACKOFF_SECONDS)) from exc
    if outcome.retry_in is not None:
        # The job row is already back to pending with its retry counted; this message is its
        # next attempt. Should it be lost, the reaper re-sends it.
        raise self.retry(countdown=outcome.retry_in)


@shared_task(ignore_result=True)
def deliver_callback(event_id: str) -> bool:
    return callbacks.deliver(event_id)


@shared_task(ignore_result=True)
def deliver_callbacks() -> int:
    return callbacks.deliver_due()


@shared_task(ignore_result=True)
def reap_jobs() -> dict:
    return reaper.reap()


@shared_task(ignore_result=True)
def prune() -> dict:
    return housekeeping.prune()
