"""The HTTP API's contract (section 1): validation, auth, idempotent create, masking, logs."""

import json

import pytest
from rest_framework.test import APIClient

from builds.joblog import writer
from builds.models import Job

pytestmark = pytest.mark.django_db

REPO = "http://127.0.0.1:9/app.git"


def body(**overrides):
    data = {
        "id": "job-1",
        "projectId": "proj",
        "userId": "user",
        "sourceType": "git",
        "sourceInfo": {"gitRepository": REPO, "ref": "main"},
        "buildConfig": {"timeoutSeconds": 60},
    }
    for key, value in overrides.items():
        if value is _DROP:
            data.pop(key)
        else:
            data[key] = value
    return data


_DROP = object()


def test_create_returns_201_with_a_pending_job(api):
    response = api.post("/api/v1/jobs", body(), format="json")
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["status"] == "pending"
    assert job["logPath"] == "/api/v1/jobs/job-1/logs"
    assert job["startedAt"] is None and job["imageTag"] is None and job["retryCount"] == 0
    assert job["createdAt"].endswith("Z")
    assert job["warnings"] == []


def test_same_request_again_returns_the_existing_job(api):
    assert api.post("/api/v1/jobs", body(), format="json").status_code == 201
    again = api.post("/api/v1/jobs", body(), format="json")
    assert again.status_code == 200
    assert again.json()["id"] == "job-1"
    assert Job.objects.count() == 1


def test_different_request_with_the_same_id_is_a_conflict(api):
    api.post("/api/v1/jobs", body(), format="json")
    response = api.post("/api/v1/jobs", body(projectId="other"), format="json")
    assert response.status_code == 409
    assert response.json()["error"] == "JOB_EXISTS"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdDp0ZXN0", "Bearer"])
def test_requests_without_a_valid_token_are_401(header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    for method, path in (("post", "/api/v1/jobs"), ("get", "/api/v1/jobs"), ("get", "/dev/running-builds")):
        response = getattr(client, method)(path, body(), format="json") if method == "post" else client.get(path)
        assert response.status_code == 401, (path, response.content)
        assert response.json()["error"] == "UNAUTHORIZED"
    assert Job.objects.count() == 0


def source(**info):
    return {"gitRepository": REPO, **info}


BAD_REQUESTS = {
    "file url": body(sourceInfo=source(gitRepository="file:///etc")),
    "local path": body(sourceInfo=source(gitRepository="/srv/git/app.git")),
    "relative path": body(sourceInfo=source(gitRepository="../app")),
    "option injection": body(sourceInfo=source(gitRepository="--upload-pack=touch /tmp/pwned")),
    "ext transport": body(sourceInfo=source(gitRepository="ext::sh -c touch% /tmp/pwned")),
    "dot-dot segment": body(sourceInfo=source(gitRepository="http://127.0.0.1:9/a/../../b.git")),
    "ftp scheme": body(sourceInfo=source(gitRepository="ftp://127.0.0.1/app.git")),
    "private host": body(sourceInfo=source(gitRepository="http://10.1.2.3/app.git")),
    "link-local host": body(sourceInfo=source(gitRepository="http://169.254.169.254/app.git")),
    "ipv6 loopback": body(sourceInfo=source(gitRepository="http://[::1]/app.git")),
    "missing repository": body(sourceInfo={"ref": "main"}),
    "repository not a string": body(sourceInfo={"gitRepository": 5}),
    "ref starting with dash": body(sourceInfo=source(ref="--output=/tmp/x")),
    "ref with dot-dot": body(sourceInfo=source(ref="main..evil")),
    "ref with space": body(sourceInfo=source(ref="main evil")),
    "short commit": body(sourceInfo=source(commitSha="abc")),
    "non-hex commit": body(sourceInfo=source(commitSha="zzzzzzz")),
    "working dir escaping": body(sourceInfo=source(workingDir="../../etc")),
    "absolute working dir": body(sourceInfo=source(workingDir="/etc")),
    "id with slash": body(id="../../etc/passwd"),
    "id too long": body(id="a" * 129),
    "empty id": body(id=""),
    "dots-only id": body(id=".."),
    "id not a string": body(id=12),
    "missing id": body(id=_DROP),
    "missing projectId": body(projectId=_DROP),
    "missing userId": body(userId=_DROP),
    "bad userId": body(userId="a b"),
    "unknown source type": body(sourceType="svn"),
    "missing sourceInfo": body(sourceInfo=_DROP),
    "timeout as string": body(buildConfig={"timeoutSeconds": "60"}),
    "timeout zero": body(buildConfig={"timeoutSeconds": 0}),
    "timeout huge": body(buildConfig={"timeoutSeconds": 10**9}),
    "cpu as boolean": body(buildConfig={"resourceLimits": {"cpu": True}}),
    "memory negative": body(buildConfig={"resourceLimits": {"memoryMB": -5}}),
    "env not an object": body(buildConfig={"env": ["A=1"]}),
    "env bad key": body(buildConfig={"env": {"A-B": "1"}}),
    "env value not a string": body(buildConfig={"env": {"A": 1}}),
    "secret not in env": body(buildConfig={"env": {"A": "1"}, "secrets": ["B"]}),
    "isAutoBuild as string": body(buildConfig={"isAutoBuild": "yes"}),
    "strictLockfile as string": body(buildConfig={"strictLockfile": "true"}),
    "port out of range": body(buildConfig={"exposePort": 70000}),
    "dockerfile path escaping": body(buildConfig={"dockerfilePath": "../Dockerfile"}),
    "buildConfig not an object": body(buildConfig="fast"),
    "body is a list": [body()],
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_input_is_400_with_a_message_and_creates_nothing(api, name):
    response = api.post("/api/v1/jobs", BAD_REQUESTS[name], format="json")
    assert response.status_code == 400, (name, response.content)
    error = response.json()
    assert error["error"] and error["message"], error
    assert Job.objects.count() == 0


def test_invalid_json_is_400(api):
    response = api.post("/api/v1/jobs", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_JSON"


def test_body_over_one_mebibyte_is_413(api):
    big = body(buildConfig={"env": {"BIG": "x" * (2 * 1024 * 1024)}})
    response = api.post("/api/v1/jobs", json.dumps(big), content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"] == "PAYLOAD_TOO_LARGE"
    assert Job.objects.count() == 0


def test_output_fields_sent_by_a_client_are_ignored(api):
    sneaky = body(status="success", imageTag="evil:latest", logPath="/etc/passwd", retryCount=9,
                  startedAt="2020-01-01T00:00:00Z")
    job = api.post("/api/v1/jobs", sneaky, format="json").json()
    assert job["status"] == "pending" and job["imageTag"] is None and job["retryCount"] == 0
    assert job["logPath"] == "/api/v1/jobs/job-1/logs" and job["startedAt"] is None


def test_credentials_and_secrets_are_masked_in_responses(api):
    data = body(
        sourceInfo={"gitRepository": "http://deploy:hunter22@127.0.0.1:9/app.git"},
        buildConfig={"env": {"NPM_TOKEN": "s3cret-value", "NODE_ENV": "production"}, "secrets": ["NPM_TOKEN"]},
    )
    text = api.post("/api/v1/jobs", data, format="json").content.decode()
    assert "hunter22" not in text and "s3cret-value" not in text
    job = json.loads(text)
    assert job["sourceInfo"]["gitRepository"] == "http://***@127.0.0.1:9/app.git"
    assert job["buildConfig"]["env"] == {"NPM_TOKEN": "***", "NODE_ENV": "production"}


def test_seed_readme_example_is_accepted(api):
    data = body(buildConfig={"isAutoBuild": True, "runtime": "node", "version": 18, "prebuildCommand": "npm install",
                             "buildCommand": "npm run build", "runCommand": "npm start",
                             "resourceLimits": {"cpu": 1, "memoryMB": 512}, "timeoutSeconds": 600})
    response = api.post("/api/v1/jobs", data, format="json")
    assert response.status_code == 201, response.content
    config = response.json()["buildConfig"]
    assert config["version"] == "18" and config["installCommand"] == "npm install"


def test_strict_lockfile_is_kept_as_submitted(api):
    response = api.post("/api/v1/jobs", body(buildConfig={"isAutoBuild": True, "strictLockfile": True}), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["buildConfig"]["strictLockfile"] is True


def test_unknown_job_is_404(api):
    for path in ("/api/v1/jobs/nope", "/api/v1/jobs/nope/logs"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json() == {"error": "JOB_NOT_FOUND", "message": "job not found"}
    assert api.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_unknown_path_is_json_404(api):
    response = api.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "NOT_FOUND"


def test_list_filters_and_paginates(api):
    for index in range(5):
        api.post("/api/v1/jobs", body(id=f"j{index}", projectId="a" if index < 3 else "b"), format="json")
    page = api.get("/api/v1/jobs?projectId=a&limit=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2
    assert api.get("/api/v1/jobs?status=pending").json()["count"] == 5
    assert api.get("/api/v1/jobs?status=bogus").status_code == 400
    assert api.get("/api/v1/jobs?limit=x").status_code == 400


def test_cancel_of_a_pending_job_is_immediate_and_final(api):
    api.post("/api/v1/jobs", body(), format="json")
    response = api.post("/api/v1/jobs/job-1/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "canceled"
    again = api.post("/api/v1/jobs/job-1/cancel")
    assert again.status_code == 409 and again.json()["error"] == "JOB_FINAL"


def test_log_is_read_from_an_offset(api):
    api.post("/api/v1/jobs", body(), format="json")
    first = api.get("/api/v1/jobs/job-1/logs")
    text = b"".join(first.streaming_content).decode()
    assert first["Content-Type"] == "text/plain; charset=utf-8"
    assert "job accepted" in text and text.startswith("[20")
    offset = int(first["X-Log-Offset"])
    assert offset == len(text.encode())
    writer.append_text("job-1", "second line")
    rest = api.get(f"/api/v1/jobs/job-1/logs?offset={offset}")
    assert b"".join(rest.streaming_content).decode().endswith("] second line\n")
    assert int(rest["X-Log-Offset"]) > offset
    assert api.get("/api/v1/jobs/job-1/logs?offset=-1").status_code == 400


def test_healthz_needs_no_token():
    response = APIClient().get("/healthz")
    assert response.status_code == 200 and response.content == b"OK"
