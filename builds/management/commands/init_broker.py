"""Create the SQLite broker's tables once and switch the file to WAL, before several workers
start (concurrent first starts of kombu's transport race on CREATE TABLE; WAL makes publishing
several times faster). Does nothing for other brokers."""

import sqlite3

from django.conf import settings
from django.core.management.base import BaseCommand

from hubfly.celery import app


class Command(BaseCommand):
    help = "Prepare the SQLite broker file (tables, WAL)."

    def handle(self, *args, **options):
        if not settings.BROKER_IS_SQLA:
            return
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)
            conn.default_channel.session  # the channel's first session creates kombu's tables
        path = settings.BROKER_SQLITE_PATH
        if path is None:  # a server database: nothing more to prepare
            return
        with sqlite3.connect(path, timeout=60) as db:
            db.execute("PRAGMA journal_mode=WAL")
        self.stdout.write(f"broker ready: {path}")
