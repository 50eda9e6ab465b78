"""Publishing "look at job X" messages. A lost publish is harmless: the reaper re-sends
messages for pending jobs that no worker took in time, and the claim makes duplicates no-ops."""

import logging

from django.db import transaction

log = logging.getLogger(__name__)


def publish(job_id: str, countdown: float | None = None) -> None:
    from builds.tasks import run_job

    try:
        run_job.apply_async((job_id,), countdown=countdown)
    except Exception:  # broker down: the job is safe in the database; the reaper re-sends
        log.exception("could not publish job %s; the reaper will re-send it", job_id)


def publish_on_commit(job_id: str) -> None:
    transaction.on_commit(lambda: publish(job_id))
