"""kombu's SQLAlchemy transport with a doorbell, so the SQLite broker wakes workers at once.

kombu's virtual transports find new messages by polling: after an empty poll the worker sleeps
`polling_interval`. A short interval costs an idle worker CPU, a long one delays every build
(kombu's default for it is 1 s). Here every process that consumes binds a UNIX datagram socket in a directory
next to the SQLite broker file, named after the queues it consumes; a publisher sends an empty
datagram to the sockets of the message's queue once the message is committed, and the consumer
waits on its socket instead of sleeping. Polling stays as the safety net: a lost ring costs one
poll interval, never a message. Only for a broker that is a local SQLite file: the doorbell
reaches processes on this host alone, and other SQLAlchemy databases keep plain polling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import socket
import threading
from json import dumps
from pathlib import Path
from queue import Empty
from time import monotonic

from django.conf import settings
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from hubfly.env import sqlite_path

log = logging.getLogger(__name__)

# Linux's sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SEPARATOR = ","
_ALL_QUEUES = "*"


def doorbell_directory(sqlalchemy_url: str) -> Path | None:
    """`<broker file>.doorbell` for a SQLite file URL; None for anything else."""
    path = sqlite_path(sqlalchemy_url)
    return Path(path + ".doorbell") if path else None


class Doorbell:
    """One process's end of a doorbell directory: its own socket to wait on (once it consumes),
    and an unbound socket to ring the others with."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._listener: socket.socket | None = None
        self._path: Path | None = None
        self._queues: frozenset[str] | None = None
        self._ringer: socket.socket | None = None
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._off = False  # could not listen once: poll from then on, without retrying each drain

    # --- the consumer's side -----------------------------------------------------------------

    def listen(self, queues: frozenset[str]) -> bool:
        """Bind (or rename) this process's socket for `queues`; False if it cannot, and the
        caller polls."""
        if self._listener is not None and queues == self._queues:
            return True
        if self._off:
            return False
        name = self._socket_name(queues)
        path = self.directory / name
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            path = self.directory / f"{name.split(_SEPARATOR, 1)[0]}{_SEPARATOR}{_ALL_QUEUES}"
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            log.warning("broker doorbell off: %s is too long a path for a socket; polling", self.directory)
            self._off = True
            return False
        try:
            if self._listener is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                listener.bind(os.fspath(path))
                self._listener, self._owner = listener, os.getpid()
            else:
                os.rename(self._path, path)
        except OSError as exc:
            log.warning("broker doorbell off (%s); polling", exc)
            self.close()
            self._off = True
            return False
        self._path, self._queues = path, queues
        return True

    def wait(self, seconds: float) -> bool:
        """Sleep until rung or `seconds` pass; True if rung. Rings that arrived since the last
        wait count, so a ring between an empty poll and this call is not missed."""
        if self._listener is None:
            return False
        readable, _, _ = select.select([self._listener], [], [], max(seconds, 0.0))
        if not readable:
            return False
        try:
            while True:
                self._listener.recv(16)
        except (BlockingIOError, InterruptedError):
            pass
        return True

    def ring_self(self) -> None:
        """Wake this process's own wait: a slot became free (a message was acknowledged)."""
        if self._path is not None:
            self._send(self._path)

    def close(self) -> None:
        listener, path = self._listener, self._path
        self._listener = self._path = self._queues = None
        if listener is not None:
            listener.close()
        # A forked child holds a copy of its parent's socket; the file is the parent's.
        if path is not None and os.getpid() == self._owner:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # --- the publisher's side ----------------------------------------------------------------

    def ring(self, queue: str) -> None:
        """Wake every process on this host that consumes `queue`. Best effort."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            queues = entry.name.split(_SEPARATOR)[1:]
            if queue in queues or _ALL_QUEUES in queues:
                self._send(Path(entry.path))

    def _send(self, path: Path) -> None:
        with self._lock:
            if self._ringer is None:
                self._ringer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            ringer = self._ringer
        try:
            ringer.sendto(b"", os.fspath(path))
        except ConnectionRefusedError:
            # Nobody bound: its process died without cleaning up (kill -9).
            try:
                path.unlink()
            except OSError:
                pass
        except OSError:
            pass  # full (already rung), just removed, or not a socket: the poll covers it

    @staticmethod
    def _socket_name(queues: frozenset[str]) -> str:
        token = secrets.token_hex(4)
        plain = all(q and _SEPARATOR not in q and "/" not in q and q != _ALL_QUEUES for q in queues)
        names = sorted(queues) if plain and queues else [_ALL_QUEUES]
        return _SEPARATOR.join([token, *names])


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL (set on the file by init_broker) with synchronous=NORMAL: no fsync per publish. A
    # message lost to a power cut is re-sent by the reaper; the job itself is in the database.
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class Channel(kombu_sqla.Channel):
    def __init__(self, connection, **kwargs):
        self._queue_ids: dict[str, int] = {}
        self._batch: set[str] | None = None  # while batched: the queues written to, uncommitted
        super().__init__(connection, **kwargs)

    def _engine_from_config(self):
        engine = super()._engine_from_config()
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _put(self, queue, payload, **kwargs):
        # One INSERT with the queue's id remembered, rather than kombu's queue lookup and ORM
        # unit of work per message: the publish was most of a job creation's cost.
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            queue_id = self._queue_ids[queue] = self._get_or_create(queue).id
        insert = self.message_cls.__table__.insert().values(payload=dumps(payload), queue_id=queue_id)
        if self._batch is not None:
            self.session.execute(insert)
            self._batch.add(queue)
            return
        try:
            self.session.execute(insert)
            self.session.commit()
        except OperationalError:
            self.session.rollback()
            raise
        self._ring(queue)

    def _ring(self, queue: str) -> None:
        if self.connection.doorbell is not None:
            self.connection.doorbell.ring(queue)

    # A settled message frees a slot: wake this process's own wait to take the next one.
    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple=multiple)
        self._ring_self()

    def basic_reject(self, delivery_tag, requeue=False):
        super().basic_reject(delivery_tag, requeue=requeue)
        self._ring_self()

    def _ring_self(self) -> None:
        if self.connection.doorbell is not None:
            self.connection.doorbell.ring_self()


@contextlib.contextmanager
def batched(channel):
    """The messages published on `channel` inside the block written in one transaction,
    committed (and their queues rung once) when it ends; nothing of them if it raises. Any
    other transport's channel publishes as it always does."""
    if not isinstance(channel, Channel) or channel._batch is not None:
        yield
        return
    channel._batch = set()
    try:
        yield
        channel.session.commit()
    except BaseException:
        channel.session.rollback()
        raise
    finally:
        queues, channel._batch = channel._batch, None
    for queue in queues:
        channel._ring(queue)


class Transport(kombu_sqla.Transport):
    """Selected by `broker_transport` for `sqla+` broker URLs (see hubfly/settings.py)."""

    Channel = Channel
    polling_interval = 1.0

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)

        self.polling_interval = settings.BROKER_POLL_SECONDS
        directory = doorbell_directory(client.hostname)
        self.doorbell = Doorbell(directory) if directory is not None else None

    def drain_events(self, connection, timeout=None):
        # kombu's virtual Transport.drain_events, with the sleep after an empty poll replaced
        # by a wait on the doorbell.
        if self.doorbell is None or not self.doorbell.listen(self._consumed_queues()):
            return super().drain_events(connection, timeout=timeout)
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
            except Empty:
                elapsed = monotonic() - started
                if timeout is not None and elapsed >= timeout:
                    raise socket.timeout()
                wait = self.polling_interval if timeout is None else min(self.polling_interval, timeout - elapsed)
                self.doorbell.wait(wait)
            else:
                return

    def close_connection(self, connection):
        if self.doorbell is not None:
            self.doorbell.close()
        super().close_connection(connection)

    def _consumed_queues(self) -> frozenset[str]:
        return frozenset(q for channel in self.channels for q in channel._active_queues)
