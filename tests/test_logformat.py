"""The service's own log lines (issue 4 item 6): one line per event, the job id on it where there
is one, JSON lines with LOG_FORMAT=json, from the real web process too."""

import io
import json
import logging
import time

import httpx
import pytest

from hubfly.logformat import JobIdFilter, JsonFormatter, PlainFormatter, job_context
from tests.conftest import API_TOKEN, TEST_ROOT
from tests.support.webserver import WebServer


def capture(formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(JobIdFilter())
    logger = logging.getLogger(f"test.logformat.{time.time_ns()}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_the_job_id_from_extra_or_context():
    logger, stream = capture(JsonFormatter())
    logger.info("claimed", extra={"job_id": "job-1", "worker": "w1"})
    with job_context("job-2"):
        logger.warning("callback failed: %s", "HTTP 500")
    logger.info("idle")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["job_id"] == "job-1" and first["worker"] == "w1" and first["message"] == "claimed"
    assert second["job_id"] == "job-2" and second["level"] == "WARNING" and second["message"] == "callback failed: HTTP 500"
    assert third["job_id"] is None and third["time"].endswith("Z")


def test_a_traceback_stays_on_one_line():
    for formatter in (JsonFormatter(), PlainFormatter()):
        logger, stream = capture(formatter)
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            with job_context("job-3"):
                logger.exception("build step crashed")
        (line,) = stream.getvalue().splitlines()
        assert "ValueError" in line and "job-3" in line


@pytest.mark.django_db(transaction=True)
def test_web_process_writes_only_json_lines_with_log_format_json(django_db_setup):
    web = WebServer(TEST_ROOT / "log" / f"web-json-{time.time_ns()}.log", env={"LOG_FORMAT": "json"})
    try:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        assert httpx.get(f"{web.url}/api/v1/jobs/job-xyz", headers=auth, timeout=10).status_code == 404
        assert httpx.get(f"{web.url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{web.url}/static/admin/css/base.css", timeout=10).status_code == 200
    finally:
        web.stop()
    entries = [json.loads(line) for line in web.log().splitlines() if line.strip()]
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any(e["path"] == "/api/v1/jobs/job-xyz" and e["status"] == 404 and e["job_id"] == "job-xyz" for e in access)
    assert any(e["logger"] == "gunicorn.error" and "Booting worker" in e["message"] for e in entries)
