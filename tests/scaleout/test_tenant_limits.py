"""Tenant limits of the fair queue (issue 14) on the scale-out layout: two build workers
("hosts") on PostgreSQL + Redis never run more builds of a user or a project than its limit,
checked from the job rows while they build, and every held-back job still gets built."""

import threading
import time
from collections import Counter

import pytest

from builds.models import ACTIVE_STATUSES, Job, TenantLimit
from tests.conftest import Worker
from tests.scaleout.test_two_hosts import host_env
from tests.support.jobs import new_id, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]


class Sampler(threading.Thread):
    """The most builds running at once per user and per project, read from the job table every 20 ms."""

    def __init__(self, ids):
        super().__init__(daemon=True)
        self.ids, self.done = ids, False
        self.users, self.projects = Counter(), Counter()
        self.start()

    def run(self):
        from django.db import connection

        try:
            while not self.done:
                rows = list(Job.objects.filter(pk__in=self.ids, status__in=ACTIVE_STATUSES)
                            .values_list("user_id", "project_id"))
                for counter, values in ((self.users, Counter(u for u, _ in rows)),
                                        (self.projects, Counter(p for _, p in rows))):
                    for key, n in values.items():
                        counter[key] = max(counter[key], n)
                time.sleep(0.02)
        finally:
            connection.close()

    def stop(self):
        self.done = True
        self.join()


def test_user_and_project_limits_hold_across_two_workers(api, worker, git_server, infra):
    worker.stop()
    # Limits in the admin's table, which every process reads (the reaper's safety-net pick too).
    TenantLimit.objects.update_or_create(kind="user", name="lim-u1", defaults={"max_builds": 2})
    TenantLimit.objects.update_or_create(kind="project", name="lim-solo", defaults={"max_builds": 1})
    hosts = [Worker(name, concurrency=2, extra_env=host_env(name)) for name in ("lim-a", "lim-b")]
    repo = git_server.repo(new_id("limits"))
    repo.commit({"Dockerfile": "FROM debian:bookworm-slim\nARG N\nRUN echo $N && sleep 2\n"})
    plan = [("lim-u1", "lim-p1")] * 5 + [("lim-u2", "lim-solo")] * 2 + [("lim-u3", "lim-solo")] * 2
    ids = [new_id("lim") for _ in plan]
    sampler = Sampler(ids)
    try:
        for job_id, (user, project) in zip(ids, plan):
            response = api.post("/api/v1/jobs", {
                "id": job_id, "projectId": project, "userId": user, "sourceInfo": {"gitRepository": repo.url},
                "buildConfig": {"env": {"N": job_id}}}, format="json")
            assert response.status_code == 201, response.content
        jobs = [wait_final(job_id, timeout=300) for job_id in ids]
    finally:
        sampler.stop()
        for host in hosts:
            host.stop()
        TenantLimit.objects.filter(name__in=("lim-u1", "lim-solo")).delete()
        worker.start()
    assert {job.status for job in jobs} == {"success"}, [(j.id, j.status, j.error) for j in jobs]
    assert sampler.users["lim-u1"] == 2, sampler.users
    assert sampler.projects["lim-solo"] == 1, sampler.projects
    assert {job.worker.split(":")[0] for job in jobs} == {"lim-a", "lim-b"}
