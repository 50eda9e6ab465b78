"""The SQLite broker's doorbell (hubfly/broker.py): consumers wake when a message is published,
not at their next poll, and nothing depends on a ring arriving."""

import os
import socket
import threading
import time

import pytest
from django.test import override_settings
from kombu import Connection, Exchange, Queue

from hubfly.broker import Doorbell, doorbell_directory
from hubfly.env import ConfigError, sqlite_path


def test_sqlite_path_reads_sqlalchemy_urls(tmp_path):
    assert sqlite_path("sqlite:////srv/data/broker.sqlite3") == "/srv/data/broker.sqlite3"
    assert sqlite_path("sqlite+pysqlite:////srv/b.db?timeout=5") == "/srv/b.db"
    assert sqlite_path("sqlite:///relative.db") == os.path.abspath("relative.db")
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://u@db/hubfly") is None
    with pytest.raises(ConfigError):
        sqlite_path("broker.sqlite3")


def test_doorbell_is_only_for_sqlite_files():
    assert str(doorbell_directory("sqlite:////srv/b.sqlite3")) == "/srv/b.sqlite3.doorbell"
    assert doorbell_directory("postgresql://u@db/hubfly") is None


def test_a_ring_for_a_queue_wakes_its_consumers_only(tmp_path):
    builds, maintenance, publisher = Doorbell(tmp_path), Doorbell(tmp_path), Doorbell(tmp_path)
    assert builds.listen(frozenset({"builds"}))
    assert maintenance.listen(frozenset({"maintenance"}))
    publisher.ring("builds")
    assert builds.wait(30) is True
    assert maintenance.wait(0) is False
    # Rings are drained by a wait: the next one sleeps until the next ring.
    assert builds.wait(0) is False
    builds.close()
    maintenance.close()
    assert list(tmp_path.iterdir()) == []


def test_a_ring_before_the_wait_is_not_lost(tmp_path):
    consumer = Doorbell(tmp_path)
    consumer.listen(frozenset({"builds"}))
    Doorbell(tmp_path).ring("builds")
    assert consumer.wait(30) is True
    consumer.close()


def test_consumed_queues_can_change(tmp_path):
    consumer = Doorbell(tmp_path)
    consumer.listen(frozenset({"builds"}))
    consumer.listen(frozenset({"builds", "maintenance"}))
    Doorbell(tmp_path).ring("maintenance")
    assert consumer.wait(30) is True
    assert len(list(tmp_path.iterdir())) == 1
    consumer.close()


def test_a_dead_consumers_socket_is_removed_by_the_next_ring(tmp_path):
    dead = tmp_path / "deadbeef,builds"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dead))
    sock.close()  # as after kill -9: the file stays, nobody reads it
    Doorbell(tmp_path).ring("builds")
    assert not dead.exists()


def test_a_path_too_long_for_a_socket_falls_back_to_polling(tmp_path, caplog):
    deep = tmp_path / ("d" * 120)
    consumer = Doorbell(deep)
    assert consumer.listen(frozenset({"builds"})) is False
    assert consumer.wait(0) is False
    # Every drain asks again; the answer stays no, and the warning is not repeated.
    assert consumer.listen(frozenset({"builds"})) is False
    assert len([r for r in caplog.records if "doorbell off" in r.getMessage()]) == 1
    Doorbell(deep).ring("builds")  # no directory, no error


def test_a_ring_to_a_missing_directory_is_harmless(tmp_path):
    Doorbell(tmp_path / "nowhere").ring("builds")


@override_settings(BROKER_POLL_SECONDS=60)
def test_a_waiting_consumer_gets_a_message_long_before_its_next_poll(tmp_path):
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    exchange = Exchange("test", type="direct")
    queue = Queue("builds", exchange, routing_key="builds")
    received = []
    with Connection(url, transport="hubfly.broker:Transport") as consumer_conn:
        consumer = consumer_conn.Consumer([queue], callbacks=[lambda body, msg: (received.append(body), msg.ack())])
        consumer.consume()
        with pytest.raises(socket.timeout):  # binds the consumer's socket; the queue is empty
            consumer_conn.drain_events(timeout=0.2)

        def publish():
            time.sleep(0.3)
            with Connection(url, transport="hubfly.broker:Transport") as producer_conn:
                producer_conn.Producer().publish({"job": "x"}, exchange=exchange, routing_key="builds",
                                                 declare=[queue])

        publisher = threading.Thread(target=publish)
        started = time.monotonic()
        publisher.start()
        consumer_conn.drain_events(timeout=50)
        elapsed = time.monotonic() - started
        publisher.join()
        assert received == [{"job": "x"}]
        # Polling alone would wake after 60 s (capped at the 50 s timeout here).
        assert elapsed < 20, elapsed
    assert not any(tmp_path.glob("broker.sqlite3.doorbell/*")), "the consumer's socket is removed on close"


def test_warm_up_connects_once_and_survives_a_broker_that_does_not_answer():
    from celery import Celery

    from builds.services.state import dispatch

    assert dispatch.warm_up() is True
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = Celery("unreachable", broker=f"redis://127.0.0.1:{closed_port}/0", set_as_current=False)
    unreachable.conf.broker_connection_timeout = 1
    assert dispatch.warm_up(unreachable) is False
    from celery import current_app

    assert current_app.main == "hubfly", "the tasks of later tests publish through the current app"
