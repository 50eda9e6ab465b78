"""The lean read paths (builds.api.reads), in the threads and in the event loop: the same answers
as Django's views, byte for byte in meaning and header for header, and every refusal left to
Django; the loop's renderings and places follow every change of the database."""

import asyncio
import io
import json
import sqlite3
import uuid
import wsgiref.util

import pytest
from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.db.models.functions import Now

from builds import presentation
from builds.api import reads
from builds.api.reads import LeanReads, LoopReads
from builds.models import Job
from builds.services.state import lifecycle, queue
from tests.testenv import API_TOKEN

REPO = "http://127.0.0.1:9/app.git"


def call(app, path: str, method: str = "GET", token: str | None = API_TOKEN, query: str = "") -> tuple:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "wsgi.input": io.BytesIO(b"")}
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    wsgiref.util.setup_testing_defaults(environ)
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], (json.loads(body) if body else None)


@pytest.fixture
def apps(live_db, settings):
    """Django's handler with and without the lean path, on the shared database (no test
    transaction: the handler closes connections between requests as in production)."""
    settings.API_LEAN_READS = True
    django_app = get_wsgi_application()
    return django_app, LeanReads(django_app)


@pytest.fixture
def created(api, apps, no_build_worker):
    """Three pending jobs of project `reads-<run>` (read-0 and read-1 of ann, read-2 of bob),
    canceled afterwards: places are global, other tests' pending jobs are among them."""
    run = uuid.uuid4().hex[:8]
    ids = []
    for i, user in enumerate(["ann", "ann", "bob"]):
        body = {"id": f"read-{i}-{run}", "projectId": f"reads-{run}", "userId": f"{user}-{run}",
                "sourceInfo": {"gitRepository": REPO, "ref": "main"},
                "buildConfig": {"env": {"TOKEN": "s3cret", "PLAIN": "x"}, "secrets": ["TOKEN"]}}
        assert api.post("/api/v1/jobs", body, format="json").status_code == 201
        ids.append(body["id"])
    yield run
    for job_id in ids + [f"read-new-{run}"]:
        lifecycle.job_cancel(job_id=job_id)


REQUESTS = [
    ("/api/v1/jobs/read-0-{run}", ""),
    ("/api/v1/jobs/read-2-{run}", ""),
    ("/api/v1/jobs", "projectId=reads-{run}&limit=50"),
    ("/api/v1/jobs", "projectId=reads-{run}&userId=ann-{run}&status=pending&priority=normal&limit=1&offset=1"),
    ("/api/v1/jobs", "projectId=other&projectId=reads-{run}"),
]


@pytest.mark.parametrize("path,query", REQUESTS)
def test_lean_read_answers_as_the_view_does(apps, created, path, query):
    django_app, lean = apps
    path, query = path.format(run=created), query.format(run=created)
    lean_answer = call(lean, path, query=query)
    assert lean_answer[0] == "200 OK"
    assert lean_answer == call(django_app, path, query=query)


def django_not_reached(environ, start_response):
    raise AssertionError(f"Django answered {environ['PATH_INFO']}")


def test_lean_read_shows_a_pending_jobs_place_and_masks_secrets(apps, created):
    lean = LeanReads(django_not_reached)
    assert call(lean, "/api/v1/jobs", query=f"projectId=reads-{created}")[2]["count"] == 3
    status, headers, job = call(lean, f"/api/v1/jobs/read-1-{created}")
    assert status == "200 OK" and headers["X-Content-Type-Options"] == "nosniff"
    assert job["queue"] == queue.places()[job["id"]] and job["queue"]["reason"] == "slots busy"
    assert job["buildConfig"]["env"]["TOKEN"] != "s3cret"


REFUSALS = [
    ("/api/v1/jobs/absent", "", "GET", API_TOKEN, "404"),
    ("/api/v1/jobs/read-0", "", "GET", None, "401"),
    ("/api/v1/jobs/read-0", "", "GET", "wrong", "401"),
    ("/api/v1/jobs", "limit=0", "GET", API_TOKEN, "400"),
    ("/api/v1/jobs", "offset=x", "GET", API_TOKEN, "400"),
    ("/api/v1/jobs", "status=done", "GET", API_TOKEN, "400"),
    ("/api/v1/jobs", "priority=urgent", "GET", API_TOKEN, "400"),
    ("/api/v1/jobs/read-0/", "", "GET", API_TOKEN, "404"),
    ("/api/v1/jobs/read-0", "", "HEAD", API_TOKEN, "200"),
]


@pytest.mark.parametrize("path,query,method,token,expected", REFUSALS)
def test_refusals_and_other_requests_are_djangos(apps, created, path, query, method, token, expected):
    django_app, lean = apps
    path = path.replace("read-0", f"read-0-{created}")
    answer = call(lean, path, method=method, token=token, query=query)
    assert answer[0].startswith(expected)
    assert answer == call(django_app, path, method=method, token=token, query=query)


def test_the_post_that_creates_a_job_gives_its_reason_and_the_get_its_place(api, apps, created):
    call(apps[1], f"/api/v1/jobs/read-0-{created}")  # the places are cached now
    body = {"id": f"read-new-{created}", "projectId": f"reads-{created}", "userId": f"cid-{created}",
            "sourceInfo": {"gitRepository": REPO}}
    answer = api.post("/api/v1/jobs", body, format="json").json()
    assert answer["queue"] == {"position": None, "ahead": None, "reason": "slots busy"}
    # Seen at once (the queue changed), and a new user's job goes before ann's second one.
    new = call(apps[1], f"/api/v1/jobs/read-new-{created}")[2]["queue"]
    assert new == queue.places()[body["id"]]
    assert new["position"] < call(apps[1], f"/api/v1/jobs/read-1-{created}")[2]["queue"]["position"]


# --- the event loop's path (SQLite) ------------------------------------------------------------

needs_sqlite = pytest.mark.skipif(connection.vendor != "sqlite", reason="the loop's path reads SQLite only; "
                                  "on PostgreSQL the threads' path (above) is the lean one")


def asgi_call(app, path: str, method: str = "GET", token: str | None = API_TOKEN, query: str = "",
              headers: tuple = ()) -> tuple:
    """One request through an ASGI application, as uvicorn hands it over; (status, headers,
    JSON, the body's bytes)."""
    auth = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query.encode(),
             "headers": [(b"host", b"testserver"), *auth, *headers], "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(message.get("body", b"") for message in sent[1:])
    headers = {name.decode().lower(): value.decode() for name, value in sent[0]["headers"]}
    return sent[0]["status"], headers, (json.loads(body) if body else None), body


@pytest.fixture
def loop_apps(apps, settings):
    """Django behind a2wsgi (the threads' half of hubfly/asgi.py) and the loop's path in front of it."""
    threaded = WSGIMiddleware(apps[0], workers=2)
    return threaded, LoopReads(threaded, str(settings.DATABASES["default"]["NAME"]))


async def django_not_reached_asgi(scope, receive, send):
    raise AssertionError(f"the threads answered {scope['path']}")


@needs_sqlite
@pytest.mark.parametrize("path,query", REQUESTS)
def test_the_loops_read_answers_as_the_view_does(loop_apps, created, path, query):
    threaded, in_loop = loop_apps
    path, query = path.format(run=created), query.format(run=created)
    answer = asgi_call(LoopReads(django_not_reached_asgi, in_loop.database), path, query=query)
    assert answer[0] == 200
    assert answer[:3] == asgi_call(threaded, path, query=query)[:3]


@needs_sqlite
@pytest.mark.parametrize("path,query,method,token,expected", REFUSALS)
def test_the_loop_leaves_refusals_and_other_requests_to_the_threads(loop_apps, created, path, query, method, token,
                                                                     expected):
    threaded, in_loop = loop_apps
    path = path.replace("read-0", f"read-0-{created}")
    answer = asgi_call(in_loop, path, method=method, token=token, query=query)
    assert str(answer[0]).startswith(expected)
    assert answer[:3] == asgi_call(threaded, path, method=method, token=token, query=query)[:3]


@needs_sqlite
def test_a_get_that_declares_a_body_is_left_to_djangos_size_rules(loop_apps, created, settings):
    threaded, in_loop = loop_apps
    too_large = str(settings.MAX_REQUEST_BODY_BYTES + 1).encode()
    answer = asgi_call(in_loop, f"/api/v1/jobs/read-0-{created}", headers=((b"content-length", too_large),))
    assert answer[0] == 413 and answer[2]["error"] == "PAYLOAD_TOO_LARGE"


@needs_sqlite
def test_the_loop_renders_a_job_once_and_again_when_its_row_changes(loop_apps, created):
    """A write that leaves updatedAt as it was (as several of the workers' do) is seen too."""
    in_loop = LoopReads(django_not_reached_asgi, loop_apps[1].database)
    job_id = f"read-2-{created}"
    lifecycle.job_cancel(job_id=job_id)
    first = asgi_call(in_loop, f"/api/v1/jobs/{job_id}")
    assert first[2]["status"] == "canceled"
    assert asgi_call(in_loop, f"/api/v1/jobs/{job_id}")[3] is first[3]  # the rendering kept
    Job.objects.filter(pk=job_id).update(error="changed behind the cache", progress={"step": 2})
    changed = asgi_call(in_loop, f"/api/v1/jobs/{job_id}")[2]
    assert changed["error"] == "changed behind the cache" and changed["progress"] == {"step": 2}
    assert changed["updatedAt"] == first[2]["updatedAt"]
    listed = asgi_call(in_loop, "/api/v1/jobs", query=f"projectId=reads-{created}&userId=bob-{created}")[2]
    assert listed["results"] == [changed]


@needs_sqlite
def test_the_loop_shows_a_pending_jobs_place_of_the_moment(api, loop_apps, created):
    in_loop = LoopReads(django_not_reached_asgi, loop_apps[1].database)
    second = f"/api/v1/jobs/read-1-{created}"
    before = asgi_call(in_loop, second)[2]["queue"]
    assert before == queue.places()[f"read-1-{created}"]
    assert asgi_call(in_loop, second)[2]["queue"] == before  # kept: nothing changed
    body = {"id": f"read-new-{created}", "projectId": f"reads-{created}", "userId": f"cid-{created}",
            "sourceInfo": {"gitRepository": REPO}}
    assert api.post("/api/v1/jobs", body, format="json").status_code == 201
    # A new user's job goes before ann's second one: seen at once, not after the places' age.
    new = asgi_call(in_loop, f"/api/v1/jobs/{body['id']}")[2]["queue"]
    assert new == queue.places()[body["id"]]
    assert asgi_call(in_loop, second)[2]["queue"]["position"] == before["position"] + 1
    lifecycle.job_cancel(job_id=f"read-0-{created}")
    assert asgi_call(in_loop, f"/api/v1/jobs/read-0-{created}")[2]["queue"] is None


def test_a_row_of_the_shown_fields_renders_as_the_job_does(api, live_db, no_build_worker):
    """The list's tuples (selectors.job_page) and the loop's SQLite rows (reads.job_row) give
    the JSON a Job gives, with every shown field set."""
    job_id = f"row-{uuid.uuid4().hex[:8]}"
    body = {"id": job_id, "projectId": "rows", "userId": "rows", "callbackUrl": "http://127.0.0.1:9/hook",
            "sourceInfo": {"gitRepository": "http://user:pw@127.0.0.1:9/app.git"},
            "buildConfig": {"env": {"TOKEN": "s3cret"}, "secrets": ["TOKEN"], "priority": "high"}}
    assert api.post("/api/v1/jobs", body, format="json").status_code == 201
    lifecycle.job_cancel(job_id=job_id)
    Job.objects.filter(pk=job_id).update(
        image_tag="reg/app:1", image_digest="sha256:" + "a" * 64, commit_sha="b" * 40, worker="w@h", retry_count=1,
        failure_step="RUN make", warnings=["lockfile out of date"], progress={"phase": "push", "percent": 50.5},
        report={"image": {"size": 1}, "steps": [{"name": "x"}], "cache": {"hits": 1},
                "phases": {"fetch": 0.5, "build": 1.25, "push": 2}},
        started_at=Now(), finished_at=Now(), error_code="BUILD_FAILED")
    job = Job.objects.get(pk=job_id)
    expected = presentation.job_json(job, {})
    values = Job.objects.filter(pk=job_id).values_list(*presentation.SHOWN_FIELDS).get()
    assert presentation.job_json(presentation.JobRow(**dict(zip(presentation.SHOWN_FIELDS, values))), {}) == expected
    if connection.vendor == "sqlite":
        with sqlite3.connect(settings.DATABASES["default"]["NAME"]) as db:
            raw = db.execute(f"SELECT {reads._COLUMNS} FROM builds_job WHERE id = ?", (job_id,)).fetchone()
        assert presentation.job_json(reads.job_row(raw), {}) == expected


def test_the_loops_path_is_sqlites_only():
    threaded = object()
    assert reads.in_the_loop(threaded, {"ENGINE": "django.db.backends.postgresql", "NAME": "hubfly"}) is threaded
    assert isinstance(reads.in_the_loop(threaded, {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}), LoopReads)
