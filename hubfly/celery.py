"""The Celery app. The broker message only says "look at job X"; the Job row decides."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")

app = Celery("hubfly")
app.config_from_object("django.conf:settings", namespace="CELERY")


def _tune_sqla_polling() -> None:
    # kombu forwards every transport option to create_engine(), so polling_interval cannot be
    # passed as an option (platform notes A1, pitfall 1); it is a class attribute instead.
    from django.conf import settings

    if settings.BROKER_IS_SQLA:
        from kombu.transport import sqlalchemy as kombu_sqla

        kombu_sqla.Transport.polling_interval = settings.BROKER_POLL_SECONDS


app.autodiscover_tasks(["builds"])
app.on_after_configure.connect(lambda sender, **kw: _tune_sqla_polling(), weak=False)
