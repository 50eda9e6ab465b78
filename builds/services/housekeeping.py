"""Periodic clean-up, safe to run twice: old logs with their jobs' secret values and callback
bodies, orphaned workspaces, delivered broker rows."""

import logging
import shutil
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from builds.models import ACTIVE_STATUSES, FINAL_STATUSES, CallbackEvent, Job, LogChunk

log = logging.getLogger(__name__)


def _old_jobs():
    cutoff = timezone.now() - timedelta(days=settings.LOG_RETENTION_DAYS)
    return Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff).values("pk")


def prune_logs() -> int:
    deleted, _ = LogChunk.objects.filter(job__in=_old_jobs()).delete()
    return deleted


def prune_secrets() -> int:
    """Old jobs' secret values, and the bodies of their callbacks once no longer due."""
    cleared = Job.objects.filter(pk__in=_old_jobs()).exclude(secret_values="").update(secret_values="")
    cleared += (
        CallbackEvent.objects.filter(job__in=_old_jobs()).exclude(state=CallbackEvent.State.PENDING).exclude(body="")
        .update(body="")
    )
    return cleared


def prune_workspaces(min_age_seconds: float = 3600) -> int:
    """Remove workspace directories that no active job on this host is using."""
    root = settings.WORKSPACE_DIR
    if not root.is_dir():
        return 0
    from builds.services import naming

    in_use = {
        naming.workspace_name(job_id, lease.hex)
        for job_id, lease in Job.objects.filter(status__in=ACTIVE_STATUSES, lease__isnull=False).values_list("pk", "lease")
    }
    removed = 0
    for entry in root.iterdir():
        if entry.name in in_use or time.time() - entry.stat().st_mtime < min_age_seconds:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def prune_broker() -> int:
    """kombu's SQLAlchemy transport never deletes fetched messages (platform notes A1, 8)."""
    if not settings.BROKER_IS_SQLA:
        return 0
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
    log.info("housekeeping: %s", result)
    return result
