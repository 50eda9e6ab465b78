"""Database errors that pass by themselves, and how a running build waits them out.

A locked SQLite file ("database is locked") or a dropped PostgreSQL connection (a restart, a
failover, a terminated backend) is transient: the same statement succeeds a moment later, on a
new connection for PostgreSQL. A build must not fail for it. Anything else (a bad query, a
constraint) is an error of ours and still fails the job visibly.
"""

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection

log = logging.getLogger(__name__)
T = TypeVar("T")

# A full disk passes too, once space is freed: waiting or retrying is right, failing is not.
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy", "database or disk is full")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, InterfaceError):  # the connection is closed or broken
        return True
    if not isinstance(exc, OperationalError):
        return False
    if connection.vendor == "sqlite":
        # Other OperationalErrors of SQLite ("no such table") do not pass by waiting.
        return any(text in str(exc).lower() for text in _SQLITE_TRANSIENT)
    # PostgreSQL's OperationalError: connection lost, server restarting, disk full,
    # serialization failure or deadlock; each is worth another try.
    return True


def is_disk_full(exc: BaseException) -> bool:
    """Transient, but not in seconds: space comes back when somebody frees it."""
    if connection.vendor == "sqlite":
        return "disk is full" in str(exc).lower()
    return getattr(exc.__cause__, "sqlstate", None) == "53100"  # PostgreSQL's disk_full


def is_outage(exc: BaseException) -> bool:
    """The database unreachable, restarting or locked for a moment: worth waiting a few seconds."""
    return isinstance(exc, DatabaseError) and is_transient(exc) and not is_disk_full(exc)


def recover() -> None:
    """After a transient error: close a connection that is broken, so the next statement opens
    a new one (Django does this only between requests and between tasks)."""
    if connection.in_atomic_block:
        return
    try:
        connection.close_if_unusable_or_obsolete()
    except DatabaseError:
        pass
    if connection.vendor != "sqlite" and connection.errors_occurred:
        with contextlib.suppress(DatabaseError):
            connection.close()


@contextlib.contextmanager
def short_lock_wait(seconds: float):
    """On SQLite, wait at most `seconds` for another writer's lock instead of the connection's
    long busy timeout, so a locked file stalls the build's output loop for a moment only; the
    caller tries again later. Nothing to do on other databases (a lost server fails at once)."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        yield
        return
    connection.ensure_connection()
    full_ms = int(settings.DATABASES["default"].get("OPTIONS", {}).get("timeout", 5) * 1000)
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")
    try:
        yield
    finally:
        with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {full_ms}")


def retrying(call: Callable[[], T], *, seconds: float, what: str) -> T:
    """`call()`, tried again with backoff through transient errors for up to `seconds`; the last
    error is raised after that. Only for calls that are safe to repeat (conditional updates)."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return call()
        except DatabaseError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: transient database error, trying again in %.1f s: %s", what, delay, exc)
            recover()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
