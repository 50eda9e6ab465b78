"""The lean read path (builds.api.reads): the same answers as Django's views, byte for byte in
meaning and header for header, and every refusal left to Django."""

import io
import json
import uuid
import wsgiref.util

import pytest
from django.core.wsgi import get_wsgi_application

from builds.api.reads import LeanReads
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
