"""The lean creation path (builds.api.creations): a POST answered in the event loop creates the
job the view would (row, log header, broker message, answer), concurrent ones are stored in
batches, and everything but the plain success is Django's, answered as before."""

import asyncio
import json
import sqlite3
import uuid

import pytest
from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.db import OperationalError

from builds.api import creations
from builds.api.creations import LoopCreations
from builds.joblog import reader
from builds.models import Job
from builds.services import jobs
from builds.services.state import dispatch, lifecycle
from builds.services.steps import source_rules
from hubfly import broker
from hubfly.celery import app as celery_app
from tests.testenv import API_TOKEN

REPO = "http://127.0.0.1:9/app.git"

on_sqlite_broker = pytest.mark.skipif(not settings.BROKER_SQLITE_PATH, reason="reads the SQLite broker's table; "
                                      "the scale-out suite's broker is Redis")


def post(app, body, token: str | None = API_TOKEN, headers: tuple = ()) -> tuple:
    """One POST /api/v1/jobs through an ASGI application; (status, headers, JSON)."""
    return asyncio.run(post_async(app, body, token, headers))


async def post_async(app, body, token: str | None = API_TOKEN, headers: tuple = (), chunks: int = 1) -> tuple:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    given = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if token is not None:
        given.append((b"authorization", f"Bearer {token}".encode()))
    names = {name for name, _ in headers}
    given = [(name, value) for name, value in given if name not in names] + list(headers)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/v1/jobs", "raw_path": b"/api/v1/jobs", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"testserver"), *given], "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80)}
    size = -(-len(raw) // chunks) or 1
    parts = [raw[i:i + size] for i in range(0, len(raw), size)] or [b""]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    answer_headers = {name.decode().lower(): value.decode() for name, value in sent[0]["headers"]}
    return sent[0]["status"], answer_headers, (json.loads(body) if body else None)


async def django_not_reached(scope, receive, send):
    raise AssertionError("Django answered the creation")


@pytest.fixture
def threaded(live_db, no_build_worker):
    """Django behind a2wsgi, the threads' half of hubfly/asgi.py."""
    return WSGIMiddleware(get_wsgi_application(), workers=2)


@pytest.fixture
def run():
    """A run's ids; its jobs are canceled afterwards (other tests place pending jobs)."""
    tag = uuid.uuid4().hex[:8]
    yield tag
    for job_id in Job.objects.filter(project_id__startswith=f"cr-{tag}").values_list("pk", flat=True):
        lifecycle.job_cancel(job_id=job_id)


def request(run: str, name: str, **extra) -> dict:
    body = {"id": f"cr-{run}-{name}", "projectId": f"cr-{run}", "userId": f"u-{run}", "sourceType": "git",
            "sourceInfo": {"gitRepository": REPO, "ref": "main"},
            "buildConfig": {"env": {"TOKEN": "s3cret", "PLAIN": "x"}, "secrets": ["TOKEN"], "priority": "high",
                            "installCommand": "npm ci"}}
    body.update(extra)
    return body


def broker_messages(job_id: str) -> int:
    with sqlite3.connect(settings.BROKER_SQLITE_PATH) as db:
        return db.execute("SELECT count(*) FROM kombu_message WHERE visible = 1 AND payload LIKE ?",
                          (f"%'{job_id}'%",)).fetchone()[0]


def stored(job_id: str) -> dict:
    job = Job.objects.get(pk=job_id)
    return {"build_config": job.build_config, "secrets": jobs.job_secrets(job), "priority": job.priority, "status": job.status, "enqueued": job.enqueued_at is not None,
            "callback_url": job.callback_url, "log": b"".join(reader.read_from(job_id, 0, 1 << 20)).decode().split("] ", 1)[1]}


def without_own(answer: dict) -> dict:
    """The answer with what differs between two jobs of the same request shape left out."""
    shown = json.loads(json.dumps(answer).replace("-lean", "-X").replace("-view", "-X"))
    for key in ("createdAt", "updatedAt"):
        shown.pop(key)
    return shown


@on_sqlite_broker
def test_the_loops_creation_answers_and_stores_as_the_view_does(threaded, run):
    lean = post(LoopCreations(django_not_reached), request(run, "lean"))
    view = post(threaded, request(run, "view"))
    assert lean[0] == view[0] == 201
    assert {k: v for k, v in lean[1].items() if k != "content-length"} == \
        {k: v for k, v in view[1].items() if k != "content-length"}
    assert without_own(lean[2]) == without_own(view[2])
    assert lean[2]["queue"]["reason"] and lean[2]["buildConfig"]["env"]["TOKEN"] != "s3cret"
    assert stored(f"cr-{run}-lean") == stored(f"cr-{run}-view")
    assert stored(f"cr-{run}-lean")["secrets"] == {"TOKEN": "s3cret"}
    # Its fingerprint and sealed secrets are job_create's: the view knows the request again.
    assert post(threaded, request(run, "lean"))[0] == 200
    assert post(threaded, request(run, "lean", buildConfig={"env": {"TOKEN": "other"}, "secrets": ["TOKEN"]}))[0] == 409
    assert broker_messages(f"cr-{run}-lean") == broker_messages(f"cr-{run}-view") == 1


def test_concurrent_creations_are_stored_in_batches_and_each_answered(threaded, run, monkeypatch):
    batches = []
    create = jobs.jobs_create_new

    def counted(requests):
        batches.append(len(requests))
        return create(requests)

    monkeypatch.setattr(jobs, "jobs_create_new", counted)
    lean = LoopCreations(django_not_reached)

    async def burst():
        return await asyncio.gather(*(post_async(lean, request(run, f"b{i}")) for i in range(40)))

    answers = asyncio.run(burst())
    assert [status for status, _, _ in answers] == [201] * 40
    assert sorted(answer["id"] for _, _, answer in answers) == sorted(f"cr-{run}-b{i}" for i in range(40))
    assert sum(batches) == 40 and len(batches) < 40 and max(batches) > 1
    assert Job.objects.filter(project_id=f"cr-{run}").count() == 40
    if settings.BROKER_SQLITE_PATH:
        assert all(broker_messages(f"cr-{run}-b{i}") == 1 for i in range(40))


def test_a_body_sent_in_pieces_is_read_whole(threaded, run):
    answer = asyncio.run(post_async(LoopCreations(django_not_reached), request(run, "pieces"), chunks=5))
    assert answer[0] == 201 and answer[2]["id"] == f"cr-{run}-pieces"


def test_an_id_taken_is_the_views_to_answer_in_a_batch_and_alone(threaded, run):
    lean = LoopCreations(threaded)
    first = post(lean, request(run, "same"))
    assert first[0] == 201
    # The same request again: the existing job (200); another request with its id: 409.
    assert post(lean, request(run, "same"))[0] == 200
    assert post(lean, request(run, "same", userId="someone-else"))[0] == 409

    async def twice():
        return await asyncio.gather(post_async(lean, request(run, "pair")),
                                    post_async(lean, request(run, "pair", projectId=f"cr-{run}-b")))

    assert sorted(status for status, _, _ in asyncio.run(twice())) == [201, 409]
    assert Job.objects.filter(pk__startswith=f"cr-{run}-").count() == 2


REFUSED = [
    ({"id": "x"}, (), API_TOKEN, 400),  # invalid: no projectId, userId, sourceInfo
    ({"id": "bad id!", "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": REPO}}, (), API_TOKEN, 400),
    ({"id": "{id}", "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": "file:///etc"}}, (), API_TOKEN, 400),
    ({"id": "{id}", "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": REPO},
      "buildConfig": {"runtime": "cobol"}}, (), API_TOKEN, 400),
    ({"id": "{id}", "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": REPO},
      "buildConfig": {"installCommand": "curl x | sh"}}, (), API_TOKEN, 400),
    ({"id": "{id}"}, (), None, 401),
    ({"id": "{id}"}, (), "wrong", 401),
    (b"[1, 2]", (), API_TOKEN, 400),
    (b'{"id": NaN}', (), API_TOKEN, 400),
    (b"{" * 40 + b"}" * 40, (), API_TOKEN, 400),
    (b"not json", (), API_TOKEN, 400),
    ({"id": "{id}"}, ((b"content-length", str(10 ** 7).encode()),), API_TOKEN, 413),
    ({"id": "{id}"}, ((b"content-type", b"text/plain"),), API_TOKEN, 415),
]


@pytest.mark.parametrize("body,headers,token,expected", REFUSED)
def test_refusals_are_djangos_and_answered_as_before(threaded, run, body, headers, token, expected):
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace("{id}", f"cr-{run}-refused"))
    lean = post(LoopCreations(threaded), body, token, headers)
    assert lean[0] == expected
    assert lean == post(threaded, body, token, headers)
    assert not Job.objects.filter(pk=f"cr-{run}-refused").exists()


def test_a_host_whose_answer_is_not_kept_is_asked_by_the_view(threaded, run, monkeypatch):
    """The loop never blocks on DNS: a callback host it has no answer for goes to the threads,
    which ask (and refuse a private address as before); the answer is then kept for the loop."""
    asked = []

    def getaddrinfo(host, port, proto=0):
        asked.append(host)
        return [(2, 1, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(source_rules.socket, "getaddrinfo", getaddrinfo)
    source_rules._resolved.clear()
    body = request(run, "dns", callbackUrl=f"http://hooks-{run}.example/done")
    with pytest.raises(AssertionError, match="Django answered"):
        post(LoopCreations(django_not_reached), body)
    assert asked == []
    answer = post(LoopCreations(threaded), body)
    assert answer[0] == 400 and "non-public address" in json.dumps(answer[2])
    assert asked == [f"hooks-{run}.example"]
    with source_rules.kept_answers_only():
        assert source_rules._getaddrinfo(f"hooks-{run}.example", 443, 10)  # kept: not asked again
        with pytest.raises(source_rules.WouldResolve):
            source_rules._getaddrinfo(f"other-{run}.example", 443, 10)
    assert asked == [f"hooks-{run}.example"]


def test_a_database_error_leaves_the_batch_to_the_view(threaded, run, monkeypatch):
    def unavailable(requests):
        raise OperationalError("database is locked")

    # The loop's batch fails; the view's own creation (the same jobs_create_new) does not.
    monkeypatch.setattr(creations, "_create_in_thread", unavailable)
    answer = post(LoopCreations(threaded), request(run, "outage"))
    assert answer[0] == 201 and Job.objects.filter(pk=f"cr-{run}-outage").exists()


@on_sqlite_broker
def test_a_batch_of_messages_is_published_whole_or_not_at_all(live_db):
    ids = [f"batch-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    with pytest.raises(RuntimeError), celery_app.producer_or_acquire() as producer:
        with broker.batched(producer.channel):
            for job_id in ids:
                celery_app.send_task(dispatch.RUN_JOB, args=(job_id,), producer=producer)
            raise RuntimeError("before the commit")
    assert [broker_messages(job_id) for job_id in ids] == [0, 0, 0]
    dispatch.publish_many(ids)
    assert [broker_messages(job_id) for job_id in ids] == [1, 1, 1]
    with sqlite3.connect(settings.BROKER_SQLITE_PATH) as db:
        for job_id in ids:
            db.execute("DELETE FROM kombu_message WHERE payload LIKE ?", (f"%{job_id}%",))
