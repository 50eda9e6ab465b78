"""The Celery app. The broker message only says "there is work"; the job table decides.

Periodic tasks that found nothing to do leave no line in the log (hubfly.logformat)."""

import logging
import os

import click
from celery import Celery, bootsteps
from django.conf import settings

from hubfly import logformat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
# Celery's Django fixup runs Django's system checks when a worker starts, which loads the URL
# configuration and with it the API, the admin and DRF: ~30 MB a worker keeps for nothing.
# `manage.py migrate` runs the same checks before the workers start (scripts/run, compose);
# CELERY_SKIP_CHECKS= (empty) brings them back.
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

app = Celery("hubfly")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["builds"])


def _periodic_task_names() -> set[str]:
    """The tasks whose idle runs leave no line; none with LOG_IDLE_PERIODIC_TASKS."""
    if settings.LOG_IDLE_PERIODIC_TASKS:
        return set()
    return {entry["task"] for entry in (app.conf.beat_schedule or {}).values()}


_quiet = logformat.QuietPeriodicTasks(_periodic_task_names)
for _name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(_quiet)


class BeatThread(bootsteps.StartStopStep):
    """`celery worker --beat-thread`: the beat scheduler as a thread of this worker. Celery's own
    `--beat` forks a process for it; a thread costs no second copy of Django and Celery, and
    goes with the worker however the worker ends (a forked beat outlives a SIGKILLed worker,
    and the restarted worker would start a second one). Exactly one per deployment, like beat."""

    label = "BeatThread"
    conditional = True

    def __init__(self, worker, beat_thread=False, **kwargs):
        self.enabled = bool(beat_thread)
        self.service = None
        super().__init__(worker, **kwargs)

    def create(self, worker):
        # Here: only a worker started with --beat-thread loads the beat scheduler.
        from celery.beat import EmbeddedService

        self.service = EmbeddedService(worker.app, thread=True, schedule_filename=worker.schedule_filename,
                                       scheduler_cls=worker.scheduler)
        return self.service


app.user_options["worker"].add(click.Option(
    ["--beat-thread"], is_flag=True, default=False,
    help="Also run the beat scheduler, in a thread of this worker (one per deployment).",
))
app.steps["worker"].add(BeatThread)
