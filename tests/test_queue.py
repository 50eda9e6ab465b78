"""The fair queue (issue 14): the database decides which job a free slot starts, round-robin
across users then projects, priority, oldest first; tenant limits; a pending job's place."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from builds.models import ACTIVE_STATUSES, Job
from builds.services.state import lifecycle
from tests.conftest import REPO_ROOT, TEST_ROOT, wait_for

BASE = "FROM debian:bookworm-slim\nARG NONCE\n"


def run_lab(steps: list[dict], **env) -> list[dict]:
    """The steps through tests.support.queuelab, on a database of their own: a SQLite file in its
    DATA_DIR, also when the session runs on PostgreSQL (HUBFLY_TEST_SCALEOUT), whose shared
    database holds other tests' jobs, ids like the lab's among them."""
    data_dir = TEST_ROOT / f"queuelab-{uuid.uuid4().hex[:8]}"
    inherited = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.queuelab"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        input="\n".join(json.dumps(s) for s in steps),
        env={**inherited, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", **{k: str(v) for k, v in env.items()}},
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def job(job_id, user, project="web", **build_config):
    return {"submit": job_id, "user": user, "project": project, "buildConfig": build_config}


CLAIM = {"claim": True}


def test_slots_go_round_robin_across_users_then_projects():
    steps = [job(f"a{i}", "alice") for i in range(4)] + [job("b0", "bob", "api"), job("b1", "bob", "docs"),
                                                         job("b2", "bob", "api")]
    results = run_lab(steps + [CLAIM] * 7)
    claimed = [r["claimed"] for r in results[len(steps):]]
    assert claimed == ["a0", "b0", "a1", "b1", "a2", "b2", "a3"]


def test_a_new_users_job_goes_before_an_older_users_backlog():
    steps = [job(f"a{i}", "alice") for i in range(5)] + [CLAIM, CLAIM, job("b0", "bob"), CLAIM, CLAIM]
    results = run_lab(steps)
    assert [r["claimed"] for r in results if "claimed" in r] == ["a0", "a1", "b0", "a2"]


def test_priority_orders_a_tenants_jobs_then_age():
    steps = [job("n0", "alice"), job("l0", "alice", priority="low"), job("n1", "alice"),
             job("h0", "alice", priority="high"), CLAIM, CLAIM, CLAIM, CLAIM]
    results = run_lab(steps)
    assert [r["claimed"] for r in results if "claimed" in r] == ["h0", "n0", "n1", "l0"]


def test_queue_place_and_reason_at_every_step(tmp_path):
    """Limits from the environment (users: 2), the file (project solo: 1) and the admin's
    TenantLimit rows (which win over the file), priorities and a retry wait, step by step."""
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"users": {"carol": 1}, "projects": {"solo": 1}}))
    steps = [
        job("a0", "alice"), job("a1", "alice"), job("a2", "alice"),   # 0-2
        job("c0", "carol", "solo"), job("c1", "carol", "solo", priority="high"),  # 3-4
        CLAIM,   # 5: a0 (alice has the oldest job; nobody was served yet)
        CLAIM,   # 6: c1 (carol has fewer builds running; high first) -> carol at her limit 1, solo at 1
        CLAIM,   # 7: a1 -> alice at her limit 2
        CLAIM,   # 8: nothing may start
        {"finish": "a0"},  # 9
        {"limit": ["user", "carol", 3]},  # 10: the admin's limit wins over the file's 1; project solo: 1 still
        CLAIM,   # 11: a2 (carol's project is full)
        {"retry": "c1", "delay": 3600},  # 12: c1 waits for its retry time; solo has room: c0 may start
        CLAIM,   # 13: c0
    ]
    r = run_lab(steps, MAX_BUILDS_PER_USER=2, LIMITS_FILE=limits)
    assert r[2]["places"] == {"a0": [1, "slots busy"], "a1": [2, "slots busy"], "a2": [3, "slots busy"]}
    # After a0 and c1 (carol now at her limit in the reckoning) and a1 (alice at hers), the rest
    # is placed as if the running builds had ended: carol, served longer ago, first.
    assert r[4]["places"] == {"a0": [1, "slots busy"], "c1": [2, "slots busy"], "a1": [3, "slots busy"],
                              "c0": [4, "slots busy"], "a2": [5, "slots busy"]}
    assert r[5]["claimed"] == "a0"
    assert r[5]["places"] == {"c1": [1, "slots busy"], "a1": [2, "slots busy"], "c0": [3, "slots busy"],
                              "a2": [4, "slots busy"]}
    assert r[6]["claimed"] == "c1"
    assert r[6]["places"] == {"a1": [1, "slots busy"], "c0": [2, "user limit 1 reached"], "a2": [3, "slots busy"]}
    assert r[7]["claimed"] == "a1"
    assert r[7]["places"] == {"c0": [1, "user limit 1 reached"], "a2": [2, "user limit 2 reached"]}
    assert r[8]["claimed"] is None
    assert r[9]["places"] == {"a2": [1, "slots busy"], "c0": [2, "user limit 1 reached"]}
    assert r[10]["places"] == {"a2": [1, "slots busy"], "c0": [2, "project limit 1 reached"]}
    assert r[11]["claimed"] == "a2"
    assert r[12]["places"]["c0"] == [1, "slots busy"]
    position, reason = r[12]["places"]["c1"]
    assert position == 2 and reason.startswith("waiting for retry at ")
    assert r[13]["claimed"] == "c0"
    assert r[13]["places"] == {"c1": [1, reason]}
    assert all(step["each_alone_same"] for step in r)


def test_supersede_cancels_older_pending_jobs_of_the_same_ref_and_with_running_the_building_one():
    steps = [
        job("s1", "erin", ref="main"), job("s2", "erin", ref="main"), job("o1", "erin", ref="other"),
        job("w1", "erin", ref="main", workingDir="docs"), CLAIM,   # 0-4: s1 claimed
        job("s3", "erin", ref="main", supersede=True),       # 5: s2 (pending) ends; s1 (claimed) goes on
        job("s4", "erin", ref="main", supersede="running"),  # 6: s3 ends, s1 is asked to stop
    ]
    r = run_lab(steps)
    assert r[5]["status"]["s2"] == ["canceled", "SUPERSEDED", "superseded by job s3"]
    assert r[5]["status"]["s1"] == ["claimed", "", ""]
    final = r[6]["status"]
    assert final["s3"] == ["canceled", "SUPERSEDED", "superseded by job s4"]
    # Claimed: its worker sees the cancel at its next heartbeat and ends it; the reason is kept.
    assert final["s1"] == ["claimed", "SUPERSEDED", "superseded by job s4"]
    assert final["o1"][0] == final["w1"][0] == final["s4"][0] == "pending"
    assert set(r[6]["places"]) == {"o1", "w1", "s4"}


# --- with a real worker (MAX_CONCURRENT_BUILDS=2) ----------------------------------------------


@pytest.fixture
def quiet_queue(live_db):
    """No job of an earlier test waiting or running: the pick is global."""
    for job_id in Job.objects.filter(status="pending").values_list("pk", flat=True):
        lifecycle.job_cancel(job_id=job_id)
    wait_for(lambda: not Job.objects.filter(status__in=ACTIVE_STATUSES).exists(), 180, "earlier builds to end")


def submit_as(api, repo_url: str, user: str, project: str = "web", ref: str = "", env: dict | None = None,
              **build_config) -> str:
    job_id = f"q-{uuid.uuid4().hex[:10]}"
    source = {"gitRepository": repo_url, **({"ref": ref} if ref else {})}
    body = {"id": job_id, "projectId": project, "userId": user, "sourceInfo": source,
            "buildConfig": {"env": {"NONCE": job_id, **(env or {})}, **build_config}}
    response = api.post("/api/v1/jobs", body, format="json")
    assert response.status_code == 201, response.content
    return job_id


def claimed_after(moment, job_ids) -> list[str]:
    """The jobs among job_ids claimed after `moment` (the database's clock), in claim order."""
    return list(Job.objects.filter(pk__in=job_ids, claimed_at__gt=moment).order_by("claimed_at")
                .values_list("pk", flat=True))


def db_now():
    from django.db.models.functions import Now

    return Job.objects.annotate(now=Now()).values_list("now", flat=True).first()


def cancel_all(job_ids) -> None:
    for job_id in job_ids:
        lifecycle.job_cancel(job_id=job_id)


@pytest.mark.e2e
def test_second_user_starts_at_the_next_free_slot_not_after_the_first_users_twenty(
        api, worker, git_server, quiet_queue):
    repo = git_server.repo(f"fair-{uuid.uuid4().hex[:6]}")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 3\n"})
    alice = [submit_as(api, repo.url, "alice") for _ in range(20)]
    try:
        wait_for(lambda: Job.objects.filter(pk__in=alice, status__in=ACTIVE_STATUSES).count() == 2, 60,
                 "alice's first two builds to take both slots")
        before_bob = db_now()
        bob = [submit_as(api, repo.url, "bob") for _ in range(2)]
        response = api.get(f"/api/v1/jobs/{bob[0]}")
        assert response.json()["queue"] == {"position": 1, "ahead": 0, "reason": "slots busy"}
        wait_for(lambda: claimed_after(before_bob, bob), 60, "bob's first build to start")
        assert claimed_after(before_bob, alice + bob)[0] == bob[0]
        # Then each user keeps one slot: bob's second build starts when his first one ends.
        first_done = wait_for(lambda: Job.objects.filter(pk=bob[0], finished_at__isnull=False).first(), 60,
                              "bob's first build to end")
        wait_for(lambda: claimed_after(first_done.finished_at, alice + bob), 60, "the next build to start")
        assert claimed_after(first_done.finished_at, alice + bob)[0] == bob[1]
    finally:
        cancel_all(alice + bob)


@pytest.mark.e2e
def test_a_high_priority_job_behind_twenty_normal_ones_starts_at_the_next_free_slot(
        api, worker, git_server, quiet_queue):
    repo = git_server.repo(f"prio-{uuid.uuid4().hex[:6]}")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 3\n"})
    normal = [submit_as(api, repo.url, "dana") for _ in range(20)]
    try:
        wait_for(lambda: Job.objects.filter(pk__in=normal, status__in=ACTIVE_STATUSES).count() == 2, 60,
                 "two normal builds to take both slots")
        before = db_now()
        urgent = submit_as(api, repo.url, "dana", priority="high")
        body = api.get(f"/api/v1/jobs/{urgent}").json()
        assert body["priority"] == "high" and body["queue"]["position"] == 1
        assert api.get("/api/v1/jobs", {"priority": "high", "userId": "dana"}).json()["results"][0]["id"] == urgent
        wait_for(lambda: claimed_after(before, normal + [urgent]), 60, "the next build to start")
        assert claimed_after(before, normal + [urgent])[0] == urgent
    finally:
        cancel_all(normal + [urgent])


@pytest.mark.e2e
def test_supersede_running_stops_the_building_job_and_cancels_the_pending_one(api, worker, git_server, receiver,
                                                                                quiet_queue):
    from tests.test_recovery import buildctl_pids, wait_building

    repo = git_server.repo(f"supersede-{uuid.uuid4().hex[:6]}")
    dockerfile = {"Dockerfile": BASE + "ARG SLEEP=1\nRUN echo $NONCE; sleep $SLEEP\n"}
    repo.commit(dockerfile)
    repo.commit(dockerfile, branch="other")
    first = submit_as(api, repo.url, "frank", ref="main", env={"SLEEP": "60"})
    other = submit_as(api, repo.url, "frank", ref="other", env={"SLEEP": "8"})
    try:
        wait_building(first)
        wait_for(lambda: Job.objects.get(pk=other).status != "pending", 60, "the other ref's build to start")
        second = submit_as(api, repo.url, "frank", ref="main", env={"SLEEP": "60"}, supersede=True)
        assert Job.objects.get(pk=first).status == "building"  # true: pending ones only
        third = submit_as(api, repo.url, "frank", ref="main", env={"SLEEP": "1"}, supersede="running")
        for old in (second, first):
            job = wait_for(lambda: Job.objects.filter(pk=old, status="canceled").first(), 30, f"{old} to end")
            assert (job.error_code, job.error) == ("SUPERSEDED", f"superseded by job {third}")
        assert not buildctl_pids(first)
        assert wait_final_status(third) == "success"
        assert wait_final_status(other) == "success"
        for old in (second, first):
            (callback,) = wait_for(lambda: [r for r in receiver.for_job(old) if r.answered == 200], 20, "callback")
            assert callback.json["errorCode"] == "SUPERSEDED"
    finally:
        cancel_all([first, other])


def wait_final_status(job_id: str) -> str:
    from tests.support.jobs import wait_final

    return wait_final(job_id, timeout=120).status


def test_metrics_have_the_queue_wait_histogram_per_priority(live_db):
    from builds.services.operations import metrics

    body, _ = metrics.render()
    text = body.decode()
    for priority in ("high", "normal", "low"):
        assert f'hubfly_queue_wait_seconds_bucket{{le="+Inf",priority="{priority}"}}' in text
        assert f'hubfly_queue_wait_seconds_count{{priority="{priority}"}}' in text


@pytest.mark.e2e
def test_a_job_over_its_users_limit_waits_without_a_slot_and_starts_when_room_opens(
        api, worker, git_server, quiet_queue):
    from builds.models import TenantLimit

    repo = git_server.repo(f"limit-{uuid.uuid4().hex[:6]}")
    repo.commit({"Dockerfile": BASE + "RUN echo $NONCE; sleep 2\n"})
    TenantLimit.objects.update_or_create(kind="user", name="gina", defaults={"max_builds": 1})
    statuses = []
    try:
        first, second = submit_as(api, repo.url, "gina"), submit_as(api, repo.url, "gina")
        other = submit_as(api, repo.url, "hank")
        wait_for(lambda: Job.objects.get(pk=first).status in ACTIVE_STATUSES, 60, "gina's first build to start")
        body = api.get(f"/api/v1/jobs/{second}").json()
        assert body["status"] == "pending" and body["queue"]["reason"] == "user limit 1 reached", body
        # The second slot goes to another user meanwhile.
        wait_for(lambda: Job.objects.get(pk=other).status != "pending", 60, "hank's build to start")
        assert Job.objects.get(pk=second).status == "pending"
        for job_id in (first, second, other):
            statuses.append(wait_final_status(job_id))
        assert statuses == ["success"] * 3
        a, b = Job.objects.get(pk=first), Job.objects.get(pk=second)
        assert b.claimed_at >= a.finished_at
    finally:
        TenantLimit.objects.filter(kind="user", name="gina").delete()
