"""The Django admin for jobs (issue 4 item 1) in a real browser: headless Chromium (Debian's
package) driven by Playwright against the real web process, with a real build running on a
real worker, buildkitd and registry."""

import re
import time
import uuid

import httpx
import pytest
from django.contrib.auth.models import Group, Permission, User

from builds.joblog import reader, writer
from builds.models import Job
from builds.services import rebuild
from builds.services.state import lifecycle
from tests.conftest import ARTIFACTS, TEST_ROOT, wait_for
from tests.support.browser import chromium
from tests.support.jobs import new_id, submit, wait_final
from tests.support.webserver import WebServer

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-test-password"


@pytest.fixture(scope="module")
def web(django_db_setup):
    server = WebServer(TEST_ROOT / "log" / f"web-admin-{time.time_ns()}.log", workers=2)
    yield server
    server.stop()


@pytest.fixture
def operator(db):
    return User.objects.create_superuser("operator", "operator@example.invalid", PASSWORD)


@pytest.fixture
def viewer(db):
    """A staff user whose group has view permissions only."""
    group = Group.objects.create(name="job viewers")
    group.permissions.set(Permission.objects.filter(codename__in=["view_job", "view_callbackevent"]))
    user = User.objects.create_user("viewer", "viewer@example.invalid", PASSWORD, is_staff=True)
    user.groups.add(group)
    return user


def log_in(browser, web, username: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{web.url}/admin/login/?next=/admin/builds/job/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/builds/job/")
    return page


def printed_numbers(text: str) -> list[int]:
    return [int(m[1]) for line in text.splitlines() if (m := re.search(r"\bline (\d+)$", line))]


def slow_lines(count: int) -> str:
    """A RUN step printing a line a second; unique, so BuildKit cannot take it from its cache."""
    return (f"FROM debian:bookworm-slim\n"
            f"RUN echo {uuid.uuid4().hex} && for i in $(seq 1 {count}); do echo line $i; sleep 1; done\n")


@pytest.mark.e2e
def test_operator_filters_follows_the_live_log_cancels_and_rebuilds(api, web, worker, git_server, operator):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    finished = Job.objects.create(id=new_id("old"), project_id="demo-project", user_id="tester", source_info={},
                                  request_fingerprint="-", status="failed", error_code="BUILD_STEP_FAILED")
    writer.append_text(finished.id, "an old build")
    repo = git_server.repo(new_id("admin"))
    # Long enough that the cancel below certainly interrupts it.
    repo.commit({"Dockerfile": slow_lines(30)})
    job_id = submit(api, repo.url, env={"PUBLIC": "visible", "TOKEN": "hidden-secret-value"}, secrets=["TOKEN"])
    wait_for(lambda: Job.objects.get(pk=job_id).status == "building", 120, "the build to start")

    with chromium() as browser:
        page = log_in(browser, web, "operator")

        # Filter by status: the building job is listed, the failed one is not.
        page.locator("#changelist-filter").get_by_role("link", name="Building", exact=True).click()
        page.wait_for_url("**status__exact=building**")
        listed = page.locator("#result_list tbody th a").all_inner_texts()
        assert job_id in listed and finished.id not in listed

        # The job page: masked settings, and the log growing while the build prints.
        page.get_by_role("link", name=job_id, exact=True).click()
        page.wait_for_selector("#job-log")
        body = page.inner_text("body")
        assert "visible" in body and "hidden-secret-value" not in body and "***" in body
        shown_at_load = max(printed_numbers(page.inner_text("#job-log")), default=0)
        assert shown_at_load <= 20, "the build ran ahead of the test; it should still be printing"
        target = f"line {shown_at_load + 2}\n"
        wait_for(lambda: target in page.inner_text("#job-log"), 60, f"{target!r} on the page without a reload",
                 interval=0.2)
        assert page.inner_text("#job-log-status") == "building"
        page.screenshot(path=str(ARTIFACTS / "admin-job-live-log.png"), full_page=True)

        # Cancel the running build from its page.
        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#job-cancel")
        page.wait_for_selector(".messagelist")
        assert "cancel requested" in page.inner_text(".messagelist")
        assert wait_final(job_id, timeout=60).status == "canceled"
        wait_for(lambda: page.inner_text("#job-log-status") == "canceled", 30, "the page to show canceled", interval=0.2)
        page.screenshot(path=str(ARTIFACTS / "admin-job-canceled.png"), full_page=True)
        assert printed_numbers(logs_text(job_id))[-1] < 30, "the build should have been stopped"

        # The full log downloads as a file.
        with page.expect_download() as download:
            page.click("#job-log-download")
        assert download.value.suggested_filename == f"{job_id}.log"
        assert open(download.value.path(), encoding="utf-8").read() == logs_text(job_id)

        # Rebuild: a new job with the same source and settings, built through the same services.
        page.reload()
        page.click("#job-rebuild")
        page.wait_for_url(f"**/admin/builds/job/{job_id}-r1/change/")
        assert f"Job {job_id} rebuilt as {job_id}-r1" in page.inner_text(".messagelist")
        original, rebuilt = Job.objects.get(pk=job_id), Job.objects.get(pk=f"{job_id}-r1")
        assert (rebuilt.source_info, rebuilt.build_config) == (original.source_info, original.build_config)
        assert rebuilt.status in ("pending", "claimed", "building")

        # Statuses cannot be edited: the page has no form fields and no save button.
        assert page.locator("input[name=_save]").count() == 0 and page.locator("select[name=status]").count() == 0

    lifecycle.job_cancel(job_id=rebuilt.id)
    assert wait_final(rebuilt.id, timeout=60).status == "canceled"


def logs_text(job_id: str) -> str:
    return b"".join(reader.read_from(job_id, 0, writer.log_end(job_id))).decode()


def test_read_only_group_can_browse_but_not_cancel_or_rebuild(web, viewer):
    job = Job.objects.create(id=new_id("ro"), project_id="p", user_id="u", source_info={"gitRepository": "https://x/y.git"},
                             request_fingerprint="-", status="pending")
    writer.append_text(job.id, "waiting")
    with chromium() as browser:
        page = log_in(browser, web, "viewer")
        assert job.id in page.locator("#result_list tbody th a").all_inner_texts()
        assert page.locator("select[name=action] option[value=cancel_jobs]").count() == 0
        page.get_by_role("link", name=job.id, exact=True).click()
        page.wait_for_selector("#job-log")
        assert "waiting" in page.inner_text("#job-log")
        assert page.locator("#job-cancel").count() == 0 and page.locator("#job-rebuild").count() == 0
        # Going around the page does not help either.
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        for action in ("cancel", "rebuild"):
            response = httpx.post(f"{web.url}/admin/builds/job/{job.id}/{action}/", cookies=cookies,
                                  headers={"X-CSRFToken": cookies["csrftoken"], "Referer": web.url + "/admin/"}, timeout=10)
            assert response.status_code == 403, (action, response.status_code)
    assert Job.objects.get(pk=job.id).status == "pending"
    assert not Job.objects.filter(pk=f"{job.id}-r1").exists()


def pending_job(job_id: str) -> Job:
    job = Job.objects.create(id=job_id, project_id="p", user_id="u", request_fingerprint="-", status="pending",
                             source_info={"gitRepository": "http://127.0.0.1:9/app.git", "ref": "main"},
                             build_config={"timeoutSeconds": 60})
    writer.append_text(job.id, "waiting")
    return job


def test_list_actions_cancel_and_rebuild_through_the_services(admin_client):
    first, second = pending_job(new_id("act")), pending_job(new_id("act"))
    changelist = "/admin/builds/job/"
    response = admin_client.post(changelist, {"action": "cancel_jobs", "_selected_action": [first.id]}, follow=True)
    assert response.status_code == 200 and f"Job {first.id} canceled" in response.content.decode()
    assert Job.objects.get(pk=first.id).status == "canceled"
    assert "job canceled before a worker took it" in logs_text(first.id)

    response = admin_client.post(changelist, {"action": "rebuild_jobs", "_selected_action": [first.id, second.id]},
                                 follow=True)
    assert response.status_code == 200
    for job in (first, second):
        copy = Job.objects.get(pk=f"{job.id}-r1")
        # Queued like an API job: a worker of an earlier test may already have taken it.
        assert copy.status in ("pending", "claimed", "building") and copy.source_info == job.source_info
        # The API's validation spells out the default `isAutoBuild: false`, as for every API job.
        assert copy.build_config == {**job.build_config, "isAutoBuild": False}
        lifecycle.job_cancel(job_id=copy.id)


def test_rebuild_ids_count_up_and_stay_within_128_characters(db):
    pending_job("app-7")
    assert rebuild.rebuild_id("app-7") == "app-7-r1"
    pending_job("app-7-r1")
    pending_job("app-7-r2")
    assert rebuild.rebuild_id("app-7-r1") == "app-7-r3"
    assert rebuild.rebuild_id("app-7-r2") == "app-7-r3"
    long_id = "x" * 128
    assert rebuild.rebuild_id(long_id) == "x" * 125 + "-r1"


def test_log_download_and_poll_need_view_permission(client):
    job = pending_job(new_id("perm"))
    User.objects.create_user("nobody", "n@example.invalid", PASSWORD, is_staff=True)
    client.login(username="nobody", password=PASSWORD)
    assert client.get(f"/admin/builds/job/{job.id}/log/").status_code == 403
    assert client.get(f"/admin/builds/job/{job.id}/log/download/").status_code == 403


def test_job_page_shows_the_failure_and_sends_the_webhook_again_recording_who(admin_client):
    from datetime import timedelta

    from django.utils import timezone

    from builds.models import CallbackAttempt, CallbackEvent
    from tests.conftest import RECEIVER

    job = Job.objects.create(id=new_id("hook"), project_id="p", user_id="u", request_fingerprint="-",
                             status="failed", error_code="BUILD_STEP_FAILED", error="RUN make failed with exit code 2",
                             failure_step="RUN make")
    page = admin_client.get(f"/admin/builds/job/{job.id}/change/").content.decode()
    assert "build_step, at RUN make (not retryable)" in page and "job-redeliver" not in page
    event = CallbackEvent.objects.create(job=job, url=RECEIVER.url, body=f'{{"id": "{job.id}"}}',
                                         next_attempt_at=timezone.now() + timedelta(hours=1))
    assert "job-redeliver" in admin_client.get(f"/admin/builds/job/{job.id}/change/").content.decode()
    response = admin_client.post(f"/admin/builds/job/{job.id}/redeliver/", follow=True)
    assert "Webhook sent again: HTTP 200" in response.content.decode()
    (attempt,) = CallbackAttempt.objects.filter(event=event)
    assert attempt.http_status == 200 and attempt.requested_by == "admin admin"
    assert len(RECEIVER.for_job(job.id)) == 1
    assert "redelivered by admin admin" in admin_client.get(f"/admin/builds/job/{job.id}/change/").content.decode()


def test_job_page_shows_the_steps_as_a_timeline_and_the_image(admin_client):
    job = Job.objects.create(id=new_id("steps"), project_id="p", user_id="u", request_fingerprint="-",
                             status="success", report={
                                 "image": {"sizeBytes": 31530185, "layers": 4, "platform": "linux/amd64"},
                                 "steps": [
                                     {"index": 1, "name": "[1/3] FROM docker.io/library/debian:bookworm-slim",
                                      "startedAt": "2026-12-01T02:10:07.425Z", "seconds": 0.0, "cached": True},
                                     {"index": 2, "name": "[2/3] RUN make <all>",
                                      "startedAt": "2026-12-01T02:10:07.788Z", "seconds": 2.3, "cached": False},
                                     {"index": 3, "name": "[3/3] RUN make check",
                                      "startedAt": "2026-12-01T02:10:10.061Z", "seconds": None, "cached": False},
                                 ],
                                 "cache": {"steps": 3, "cached": 1},
                                 "phases": {"fetch": 0.1, "build": 4.9, "push": 5.2},
                             })
    page = admin_client.get(f"/admin/builds/job/{job.id}/change/").content.decode()
    # The axis ends where the last step to end did: the RUN that began 0.36 s in and took 2.3 s.
    assert "0 to 2.7 s" in page
    assert "<td>[2/3] RUN make &lt;all&gt;</td><td>2.3 s</td>" in page
    assert "<td>[1/3] FROM docker.io/library/debian:bookworm-slim</td><td>cached</td>" in page
    assert "<td>[3/3] RUN make check</td><td>-</td>" in page  # it did not finish
    assert "31530185" in page and "linux/amd64" in page
