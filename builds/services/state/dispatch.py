"""The one module that sends Celery messages, by task name: the services never import the
tasks (builds.tasks), which import the services.

A build message says "there is work" (it names a job, which is only a hint: the slot that gets
it starts the job the fair queue picks, builds.services.state.queue). A lost publish is harmless: the
reaper re-sends messages for pending jobs that no worker took in time, and a message that finds
nothing to start is owed back to the queue."""

import logging

from django.db import transaction

from hubfly.broker import batched
from hubfly.celery import app

log = logging.getLogger(__name__)

RUN_JOB = "builds.tasks.run_job"
DELIVER_CALLBACK = "builds.tasks.deliver_callback"


def send(task: str, *args, countdown: float | None = None) -> None:
    """Send one message (routed by name, CELERY_TASK_ROUTES); raises if the broker is down."""
    app.send_task(task, args=args, countdown=countdown)


def publish(job_id: str, countdown: float | None = None) -> None:
    try:
        send(RUN_JOB, job_id, countdown=countdown)
    except Exception:  # broker down: the job is safe in the database; the reaper re-sends
        log.exception("could not publish job %s; the reaper will re-send it", job_id)


def publish_many(job_ids: list[str]) -> None:
    """One message per job, written to the broker together: on the SQLite broker one
    transaction and one ring for all of them (hubfly.broker.batched)."""
    try:
        with app.producer_or_acquire() as producer, batched(producer.channel):
            for job_id in job_ids:
                app.send_task(RUN_JOB, args=(job_id,), producer=producer)
    except Exception:  # as publish's
        log.exception("could not publish jobs %s; the reaper will re-send them", ", ".join(job_ids))


def warm_up(celery_app=None) -> bool:
    """Open the broker connection a publish needs (~0.5 s the first time in a process: engine,
    tables, producer pool), so the first job after a start is accepted as fast as the rest.
    Called when a web worker or a pool process starts; False if the broker did not answer, in
    which case the first publish connects as it always could."""
    try:
        with (celery_app or app).producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
        return True
    except Exception as exc:
        log.warning("broker not reachable at start-up (%s); connecting on the first publish", exc)
        return False


def publish_on_commit(job_id: str) -> None:
    transaction.on_commit(lambda: publish(job_id))


def publish_many_on_commit(job_ids: list[str]) -> None:
    if job_ids:
        transaction.on_commit(lambda: publish_many(job_ids))
