"""The OpenAPI schema (issue 4 item 4): it validates, it is served with an offline docs page, and
real responses of the real web process match it (openapi-core validates each exchange)."""

import json
import re
import subprocess
import sys
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from django.utils import timezone

from builds import errors, presentation
from builds.api.schema import (
    CacheOutput, FailureOutput, ImageOutput, JobOutcomeOutput, JobOutput, ProgressOutput, QueuePlaceOutput, StepOutput,
)
from builds.joblog import writer
from builds.models import FINAL_STATUSES, CallbackEvent, Job, Status
from tests.conftest import API_TOKEN, RECEIVER, REPO_ROOT, TEST_ROOT
from tests.support.browser import chromium
from tests.support.jobs import new_id
from tests.support.webserver import WebServer

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
REPO = "http://127.0.0.1:9/app.git"


@pytest.fixture(scope="module")
def web(django_db_setup):
    server = WebServer(TEST_ROOT / "log" / f"web-openapi-{time.time_ns()}.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spec(web):
    response = httpx.get(f"{web.url}/api/schema/?format=json", timeout=30)
    assert response.status_code == 200
    return response.json()


def test_schema_validates_without_warnings():
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(TEST_ROOT / "openapi.yaml")],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/api/v1/jobs/{job_id}/logs" in (TEST_ROOT / "openapi.yaml").read_text()


def test_job_progress_is_documented(spec):
    job = spec["components"]["schemas"]["Job"]
    assert "progress" in job["required"]
    assert spec["components"]["schemas"]["Progress"]["properties"].keys() == {"step", "total", "name"}


class Exchanges:
    """Sends real requests to the web process and validates request and response with openapi-core."""

    def __init__(self, web, spec):
        self.web, self.spec = web, spec
        # Server-Sent Events are text; openapi-core knows no deserializer for them.
        config = Config(extra_media_type_deserializers={"text/event-stream": lambda data, **_: data.decode()})
        self.openapi = OpenAPI.from_dict(spec, config=config)
        self.checked: list[tuple[str, str, int]] = []

    def __call__(self, method: str, path: str, *, body=None, raw: bytes | None = None, headers=None, params=None,
                 expect: int, check_request: bool = False) -> httpx.Response:
        headers = {**AUTH, **(headers or {})}
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        response = httpx.request(method, self.web.url + path, content=content, headers=headers, params=params, timeout=30)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        request = MockRequest(
            self.web.url, method, path, args=params or {}, headers=headers, data=content,
            content_type=headers.get("Content-Type", "application/json"),
        )
        if check_request:
            self.openapi.validate_request(request)
        content_type = response.headers.get("content-type", "").split(";")[0]
        self.openapi.validate_response(
            request, MockResponse(response.content, response.status_code, dict(response.headers), content_type)
        )
        if content_type == "application/json":
            self._check_job_keys(response.json())
        self.checked.append((method, path, response.status_code))
        return response

    def _check_job_keys(self, data) -> None:
        """Both ways: no field the schema lacks, no documented field missing."""
        documented = set(self.spec["components"]["schemas"]["Job"]["properties"])
        jobs = data if isinstance(data, list) else data.get("results", [data] if "logPath" in data else [])
        for job in jobs:
            if "logPath" not in job:
                continue  # not a job (e.g. a webhook event of GET .../deliveries)
            assert set(job) == documented, set(job) ^ documented


def job_body(job_id: str, **overrides) -> dict:
    return {"id": job_id, "projectId": "proj", "userId": "user", "sourceType": "git",
            "sourceInfo": {"gitRepository": REPO, "ref": "main"},
            "buildConfig": {"timeoutSeconds": 60, "env": {"A": "1", "KEY": "s3cret"}, "secrets": ["KEY"],
                            "resourceLimits": {"cpu": 0.5, "memoryMB": 256}, "exposePort": 8080}, **overrides}


def test_real_responses_match_the_schema(web, spec):
    call = Exchanges(web, spec)
    job_id = new_id("schema")

    created = call("POST", "/api/v1/jobs", body=job_body(job_id), expect=201, check_request=True).json()
    assert created["buildConfig"]["env"]["KEY"] == "***"
    call("POST", "/api/v1/jobs", body=job_body(job_id), expect=200, check_request=True)
    call("POST", "/api/v1/jobs", body=job_body(job_id, projectId="other"), expect=409)
    call("POST", "/api/v1/jobs", body=job_body(new_id(), sourceInfo={"gitRepository": "file:///etc"}), expect=400)
    call("POST", "/api/v1/jobs", raw=b"{not json", expect=400)
    call("POST", "/api/v1/jobs", raw=json.dumps(job_body(new_id(), buildConfig={"env": {"B": "x" * (2 << 20)}})).encode(),
         expect=413)

    call("GET", "/api/v1/jobs", params={"status": "pending", "projectId": "proj"}, expect=200)
    call("GET", "/api/v1/jobs", params={"limit": "1", "offset": "0"}, expect=200)
    call("GET", "/api/v1/jobs", params={"status": "bogus"}, expect=400)
    call("GET", "/api/v1/jobs", headers={"Authorization": "Bearer wrong"}, expect=401)
    call("GET", f"/api/v1/jobs/{job_id}", expect=200)
    call("GET", "/api/v1/jobs/no-such-job", expect=404)

    call("GET", f"/api/v1/jobs/{job_id}/logs", expect=200)
    call("GET", f"/api/v1/jobs/{job_id}/logs", params={"offset": "5"}, expect=200)
    call("GET", "/api/v1/jobs/no-such-job/logs", expect=404)
    call("GET", f"/api/v1/jobs/{job_id}/logs", params={"offset": "x"}, expect=400)

    call("GET", "/dev/running-builds", expect=200)
    # A worker of another test module may be building the job created above: cancel one that no
    # queue message points at, so no worker can touch it between the two calls.
    waiting = new_id("cancel")
    Job.objects.create(id=waiting, project_id="p", user_id="u", source_info={"gitRepository": REPO},
                       request_fingerprint="-", status="pending")
    call("POST", f"/api/v1/jobs/{waiting}/cancel", expect=202)
    call("POST", f"/api/v1/jobs/{waiting}/cancel", expect=409)
    call("POST", "/api/v1/jobs/no-such-job/cancel", expect=404)
    call("GET", f"/api/v1/jobs/{waiting}/logs", params={"follow": "true"}, expect=200)
    events = call("GET", f"/api/v1/jobs/{waiting}/logs", headers={"Accept": "text/event-stream"}, expect=200)
    assert "event: end" in events.text

    # A job with every output field set, progress included.
    running = new_id("running")
    Job.objects.create(
        id=running, project_id="p", user_id="u", source_info={"gitRepository": "https://user:pw@example.com/r.git"},
        build_config={"runtime": "node", "version": "20"}, request_fingerprint="-", status="building",
        worker="host:1", commit_sha="a" * 40, image_tag="reg/u/p:x", progress={"step": 3, "total": 7, "name": "RUN npm run build"},
    )
    writer.append_text(running, "building")
    shown = call("GET", f"/api/v1/jobs/{running}", expect=200).json()
    assert shown["progress"] == {"step": 3, "total": 7, "name": "RUN npm run build"}
    assert "pw" not in shown["sourceInfo"]["gitRepository"]
    Job.objects.filter(pk=running).update(progress={"step": None, "total": None, "name": "exporting to image"})
    call("GET", "/dev/running-builds", expect=200)
    Job.objects.filter(pk=running).update(status="success", started_at=timezone.now(), report={
        "image": {"sizeBytes": 1234, "layers": 2, "platform": "linux/amd64"},
        "steps": [{"index": 1, "name": "[1/2] FROM docker.io/library/debian", "startedAt": "2026-11-30T10:00:00.123Z",
                   "seconds": 0.0, "cached": True},
                  {"index": 2, "name": "[2/2] RUN make", "startedAt": "2026-11-30T10:00:00.500Z", "seconds": None,
                   "cached": False}],
        "cache": {"steps": 2, "cached": 1}, "phases": {"fetch": 0.4, "build": 3.2, "push": 0.8},
    })
    shown = call("GET", f"/api/v1/jobs/{running}", expect=200).json()
    assert shown["image"]["layers"] == 2 and shown["cache"] == {"steps": 2, "cached": 1}
    assert (shown["fetchSeconds"], shown["buildSeconds"], shown["pushSeconds"]) == (0.4, 3.2, 0.8)

    # A failed job (failure set) and its webhook: the delivery log, a redelivery and the refusals.
    failed = new_id("failed")
    Job.objects.create(id=failed, project_id="p", user_id="u", source_info={"gitRepository": REPO},
                       request_fingerprint="-", status="failed", error_code="BUILD_STEP_FAILED",
                       error="RUN exit 3 failed with exit code 3", failure_step="RUN exit 3")
    shown = call("GET", f"/api/v1/jobs/{failed}", expect=200).json()
    assert shown["failure"] == {"type": "build_step", "step": "RUN exit 3", "retryable": False}
    call("GET", f"/api/v1/jobs/{failed}/deliveries", expect=200)
    call("POST", f"/api/v1/jobs/{failed}/deliveries/redeliver", expect=404)
    event = CallbackEvent.objects.create(job_id=failed, url=RECEIVER.url, body=json.dumps({"id": failed}),
                                         next_attempt_at=timezone.now() + timedelta(hours=1))
    redone = call("POST", f"/api/v1/jobs/{failed}/deliveries/redeliver", body={"eventId": str(event.pk)},
                  expect=200, check_request=True).json()
    assert redone["attempt"]["httpStatus"] == 200 and redone["state"] == "delivered"
    listed = call("GET", f"/api/v1/jobs/{failed}/deliveries", expect=200).json()
    assert [len(e["attempts"]) for e in listed["results"]] == [1]
    call("POST", f"/api/v1/jobs/{failed}/deliveries/redeliver", body={"eventId": "nope"}, expect=400)
    call("GET", "/api/v1/jobs/no-such-job/deliveries", expect=404)
    call("POST", "/api/v1/jobs/no-such-job/deliveries/redeliver", expect=404)
    call("POST", "/api/v1/jobs", body=job_body(new_id(), callbackUrl="http://169.254.169.254/hook"), expect=400)
    call("POST", "/api/v1/jobs", body=job_body(new_id(), callbackUrl=RECEIVER.url), expect=201, check_request=True)

    for path in ("/healthz", "/metrics"):
        call("GET", path, expect=200)
    ready = httpx.get(web.url + "/readyz", timeout=30)
    call("GET", "/readyz", expect=ready.status_code)
    assert len(call.checked) >= 25


def test_docs_page_works_offline(web):
    """Every asset of /api/docs/ comes from this server; with all other hosts blocked the page
    renders the API's operations in a real browser."""
    html = httpx.get(f"{web.url}/api/docs/", timeout=30).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and not [a for a in assets if urlsplit(a).netloc]
    for asset in assets:
        assert httpx.get(web.url + asset, timeout=30).status_code == 200, asset
    outside = []
    with chromium() as browser:
        page = browser.new_page()

        def only_local(route):
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                return route.continue_()
            outside.append(route.request.url)
            return route.abort()

        page.route("**/*", only_local)
        page.goto(f"{web.url}/api/docs/")
        page.locator(".opblock-summary-path", has_text="/api/v1/jobs/{job_id}/logs").first.wait_for(timeout=30000)
        assert page.locator(".opblock").count() >= 8
    assert outside == []


def test_the_webhook_body_is_the_documented_subset_of_the_job(spec):
    """One presentation: the outcome webhook posts CALLBACK_FIELDS of the job as the API shows
    it, and the schema's JobOutcome (the jobOutcome webhook's body) documents exactly those."""
    import jsonschema

    from builds.services.state import lifecycle

    job = Job.objects.create(id=new_id("outcome"), project_id="p", user_id="u", request_fingerprint="-",
                             source_info={"gitRepository": REPO}, callback_url="http://127.0.0.1:9/hook")
    lease = lifecycle.job_claim(job_id=job.pk, worker="test:1")
    assert lifecycle.job_finish(job_id=job.pk, lease=lease, status="failed", error_code=errors.BUILD_FAILED,
                                error="RUN make failed", failure_step="RUN make")
    body = json.loads(CallbackEvent.objects.get(job_id=job.pk).body)
    shown = presentation.job_json(Job.objects.get(pk=job.pk))
    assert list(body) == list(presentation.CALLBACK_FIELDS)
    assert body == {name: shown[name] for name in body}
    outcome = spec["components"]["schemas"]["JobOutcome"]
    assert set(outcome["properties"]) == set(body)
    assert spec["webhooks"]["jobOutcome"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobOutcome"}
    jsonschema.validate({**body}, {"$ref": "#/components/schemas/JobOutcome", "components": spec["components"]},
                        cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "status": 7}, {"$ref": "#/components/schemas/JobOutcome",
                                                    "components": spec["components"]},
                            cls=jsonschema.Draft202012Validator)


NESTED = {"queue": QueuePlaceOutput, "failure": FailureOutput, "progress": ProgressOutput, "image": ImageOutput,
          "cache": CacheOutput}


def test_the_job_serializer_renders_job_json_and_declares_what_it_writes_in_every_state():
    """One presentation: JobOutput (the schema's Job) renders through presentation.job_json, which
    the lean reads call directly, and declares exactly the keys job_json writes, nested objects
    included, for a job in every state; JobOutcomeOutput renders the webhook's body likewise."""
    report = {"image": {"sizeBytes": 1, "layers": 1, "platform": "linux/amd64"},
              "steps": [{"index": 1, "name": "[1/1] FROM debian", "startedAt": "2026-11-30T10:00:00.000Z",
                         "seconds": 0.1, "cached": True}],
              "cache": {"steps": 1, "cached": 1}, "phases": {"fetch": 0.1, "build": 0.2, "push": 0.3}}
    made = {}
    for state in Status.values:
        job = Job.objects.create(
            id=new_id(f"shown-{state}"), project_id="p", user_id="u", request_fingerprint="-", status=state,
            source_info={"gitRepository": REPO}, progress={"step": 1, "total": 2, "name": "RUN make"},
            error_code=errors.BUILD_FAILED if state == Status.FAILED else "", failure_step="RUN make",
            report=report, started_at=timezone.now(),
        )
        made[state] = job
        shown = presentation.job_json(job, {})
        assert JobOutput(job, context={"places": {}}).data == shown, state
        assert set(JobOutput().fields) == set(shown), state
        for name, serializer in NESTED.items():
            if shown[name] is not None:
                assert set(serializer().fields) == set(shown[name]), (state, name)
        assert [set(StepOutput().fields)] == [set(step) for step in shown["steps"]]
        if state in FINAL_STATUSES:
            assert JobOutcomeOutput(job).data == presentation.outcome_json(job)
            assert list(JobOutcomeOutput().fields) == list(presentation.CALLBACK_FIELDS)
    just_created = JobOutput(made[Status.PENDING], context={"placed": False}).data
    assert just_created["queue"]["position"] is None and just_created["queue"]["reason"]
