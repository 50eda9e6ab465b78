"""The Celery app. The broker message only says "there is work"; the job table decides."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")

app = Celery("hubfly")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["builds"])
