"""The Celery app. The broker message only says "there is work"; the job table decides.

Periodic tasks that found nothing to do leave no line in the log (hubfly.logformat)."""

import logging
import os

from celery import Celery

from hubfly import logformat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")

app = Celery("hubfly")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["builds"])


def _periodic_task_names() -> set[str]:
    return {entry["task"] for entry in (app.conf.beat_schedule or {}).values()}


_quiet = logformat.QuietPeriodicTasks(_periodic_task_names)
for _name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(_quiet)
