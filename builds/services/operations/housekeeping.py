"""Periodic clean-up, safe to run twice: old logs with their jobs' secret values and callback
bodies, orphaned workspaces, delivered broker rows."""

import logging
import shutil
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from builds.models import ACTIVE_STATUSES, FINAL_STATUSES, CallbackEvent, Job, LogChunk
from builds.services.steps import naming

log = logging.getLogger(__name__)


# Rows deleted or cleared per statement: on SQLite each statement holds the one write lock,
# so a prune of millions of rows is many short statements, never one that blocks builds.
BATCH_ROWS = 500


def _old_jobs():
    cutoff = timezone.now() - timedelta(days=settings.LOG_RETENTION_DAYS)
    return Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff).values("pk")


def _in_batches(query: QuerySet, act) -> int:
    """Apply `act` (delete, or an update that takes rows out of `query`) to BATCH_ROWS rows at a
    time until none is left; each batch is a statement of its own."""
    done = 0
    while pks := list(query.values_list("pk", flat=True)[:BATCH_ROWS]):
        done += act(query.model.objects.filter(pk__in=pks))
    return done


def prune_logs() -> int:
    return _in_batches(LogChunk.objects.filter(job__in=_old_jobs()), lambda rows: rows.delete()[0])


def prune_secrets() -> int:
    """Old jobs' secret values, and the bodies of their callbacks once no longer due."""
    cleared = _in_batches(Job.objects.filter(pk__in=_old_jobs()).exclude(secret_values=""),
                          lambda rows: rows.update(secret_values=""))
    cleared += _in_batches(
        CallbackEvent.objects.filter(job__in=_old_jobs()).exclude(state=CallbackEvent.State.PENDING).exclude(body=""),
        lambda rows: rows.update(body=""),
    )
    return cleared


def prune_workspaces(min_age_seconds: float = 60) -> int:
    """Remove the workspace directories on this host that no active attempt is using. Each
    host runs this for its own WORKSPACE_DIR, at worker start and every
    WORKSPACE_PRUNE_INTERVAL_SECONDS (builds.workerstart)."""
    root = settings.WORKSPACE_DIR
    if not root.is_dir():
        return 0
    # Listed before the active jobs are read: an attempt creates its workspace after its claim
    # is committed, so every directory listed here whose attempt is alive is in `in_use`.
    entries = list(root.iterdir())
    in_use = {
        naming.workspace_name(job_id, lease.hex)
        for job_id, lease in Job.objects.filter(status__in=ACTIVE_STATUSES, lease__isnull=False).values_list("pk", "lease")
    }
    removed = 0
    for entry in entries:
        try:
            if entry.name in in_use or time.time() - entry.stat().st_mtime < min_age_seconds:
                continue
        except FileNotFoundError:  # its attempt removed it meanwhile
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def prune_broker() -> int:
    """kombu's SQLAlchemy transport never deletes fetched messages: it only marks them
    invisible, and the table grows without end."""
    if not settings.BROKER_IS_SQLA:
        return 0
    # Here: only the SQLite broker's processes load SQLAlchemy.
    import sqlalchemy

    engine = sqlalchemy.create_engine(settings.BROKER_SQLALCHEMY_URL, **settings.CELERY_BROKER_TRANSPORT_OPTIONS)
    try:
        with engine.begin() as conn:
            tables = sqlalchemy.inspect(conn).get_table_names()
            if "kombu_message" not in tables:
                return 0
            return conn.execute(sqlalchemy.text("DELETE FROM kombu_message WHERE visible = 0")).rowcount
    finally:
        engine.dispose()


def prune() -> dict:
    result = {"log_chunks": prune_logs(), "secrets": prune_secrets(), "workspaces": prune_workspaces(),
              "broker_rows": prune_broker()}
    if any(result.values()):
        log.info("housekeeping: %s", result)
    return result
