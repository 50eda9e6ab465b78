"""Benchmark 10: faults under load (issue 11). Jobs from 8 clients (16 with --short, 1,000 in
full) while, one after another: kill -9 of a build worker (restarted 2 s later), SIGSTOP of
another past LEASE_SECONDS then SIGCONT, buildkitd restarted, the database made unavailable (the
SQLite file held locked for 5 s; on the scale-out layout (--scaleout) the PostgreSQL server
stopped, kept down 3 s and started again; with an outside DATABASE_URL every connection
terminated), the registry restarted. The full run is trivial builds (one in ten sleeps 4 s)
spread over 10 minutes, and waits at most 30 minutes more for the jobs to end.

Figures (printed, never asserted): jobs, lost (no final status or no callback by the end), built
twice (more than one attempt pushed an image), tags fenced (a stale attempt stopped at the
fence), tags wrong (a successful job's tag names another digest than the job reports), worst
time to recover (from a fault's end to the callback of a job sent at that moment), API errors (5xx and other
non-2xx answers to the clients).

The instance (scripts/run) runs with short leases for this; two more build workers of the
instance's configuration are started here, since honcho ends the whole instance when one of
its processes dies: those two are the ones killed and paused.
"""

import base64
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

from bench.common import Context, new_job_id
from bench.repos import TRIVIAL, BuildRepo, sleeping
from bench.support import REPO_ROOT, Api, job_body
from infra import localservices

CLIENTS = 8
ENV = {"HEARTBEAT_SECONDS": "1", "LEASE_SECONDS": "8", "REAPER_INTERVAL_SECONDS": "2", "RETRY_BACKOFF_SECONDS": "1",
       "REQUEUE_AFTER_SECONDS": "20", "MAX_RETRIES": "5", "CALLBACK_FLUSH_SECONDS": "1"}
FINAL = ("success", "failed", "canceled")


class ExtraWorker:
    """A build worker of the instance's configuration, outside honcho, to kill and pause."""

    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name = ctx, name
        self.log_path = ctx.instance.data_dir / "log" / f"fault-{name}.log"
        self.start()

    def start(self) -> None:
        env = {**self.ctx.instance.environment(), "WORKER_NAME": self.name}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hubfly", "worker", "--queues", "builds", "--concurrency", "2",
             "--loglevel", "INFO", "-n", f"{self.name}@%h"],
            cwd=REPO_ROOT, env=env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            localservices.stop(self.proc, timeout=15)  # idle by now; a warm shutdown that hangs is not a figure


def run(ctx: Context, restart) -> None:
    restart(ENV)
    jobs_total = ctx.n(16, 1000)  # --short: every fault and every figure once, in about two minutes
    window = ctx.n(30.0, 600.0)  # the clients spread their submissions over this many seconds
    repo = BuildRepo(ctx.git, "faults", {"Dockerfile": TRIVIAL})
    # One job in four (one in ten in the full run) sleeps 4 s in a RUN step (when the Debian base
    # image is there), so faults meet builds that are under way.
    sleepy = None
    if ctx.base_images:
        sleepy = BuildRepo(ctx.git, "faults-sleep", {"Dockerfile": sleeping(4)})
    workers = [ExtraWorker(ctx, "fault-a"), ExtraWorker(ctx, "fault-b")]
    answers: Counter = Counter()
    ids: list[str] = []
    lock = threading.Lock()
    recovered: list[float] = []
    faults_done: list[str] = []
    started = time.monotonic()

    def client(index: int) -> None:
        api = Api(ctx.instance.port, ctx.instance.token)
        mine = range(index, jobs_total, CLIENTS)
        for n, _ in enumerate(mine):
            target = started + window * (n * CLIENTS + index) / jobs_total
            time.sleep(max(0.0, target - time.monotonic()))
            job_id = new_job_id("fault")
            source = sleepy if sleepy is not None and n % ctx.n(4, 10) == 0 else repo
            body = job_body(job_id, source.url, project="faults", build_config={"env": {"N": job_id}})
            status = _request(api, "POST", "/api/v1/jobs", body)
            with lock:
                answers[status] += 1
                if status == 201:
                    ids.append(job_id)
            with lock:
                answers[_request(api, "GET", f"/api/v1/jobs/{job_id}")] += 1
        api.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for name, fault in _faults(ctx, workers):
            time.sleep(window / 7)
            _wait_building(ctx, ids, lock, timeout=60)
            fault()
            faults_done.append(name)
            recovered.append(_probe(ctx, repo, ids, lock))
            print(f"  fault: {name}; a job sent right after it finished in {recovered[-1]:.1f} s", flush=True)
        for thread in threads:
            thread.join()
        print(f"  faults and submissions done after {time.monotonic() - started:.0f} s", flush=True)
        finished = _wait_final(ids, timeout=ctx.n(300, 1800))
        print(f"  {len(finished)} of {len(ids)} jobs final after {time.monotonic() - started:.0f} s", flush=True)
        try:
            ctx.receiver.wait([i for i in ids if i in finished], timeout=120)
        except TimeoutError:
            pass  # the report counts a final job without its callback as lost
    finally:
        for worker in workers:
            worker.stop()
    _report(ctx, ids, finished, answers, recovered, faults_done)


def _request(api: Api, method: str, path: str, body: dict | None = None) -> int:
    try:
        return api.request(method, path, body)[0]
    except OSError:
        return 0  # no answer at all


def _faults(ctx: Context, workers: list[ExtraWorker]):
    from django.conf import settings
    from django.db import connection

    def kill_worker():
        os.killpg(workers[0].proc.pid, signal.SIGKILL)
        workers[0].proc.wait()
        time.sleep(2)
        workers[0].start()

    def pause_worker():
        os.killpg(workers[1].proc.pid, signal.SIGSTOP)
        time.sleep(float(ENV["LEASE_SECONDS"]) + 4)
        os.killpg(workers[1].proc.pid, signal.SIGCONT)

    def restart_buildkitd():
        _restart(ctx, "buildkitd")

    def database_unavailable():
        if ctx.postgres is not None:
            from tests.support import scaleout

            ctx.postgres = scaleout.restart_postgres(ctx.postgres, down_seconds=3)
        elif settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            db = sqlite3.connect(settings.DATABASES["default"]["NAME"], isolation_level=None, timeout=60)
            db.execute("BEGIN EXCLUSIVE")
            time.sleep(5)
            db.execute("ROLLBACK")
            db.close()
        else:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        connection.close()  # this process's own connection may be gone: the next query opens one

    def restart_registry():
        _restart(ctx, "registry")

    return [("kill -9 of a worker", kill_worker), ("SIGSTOP/SIGCONT of a worker", pause_worker),
            ("buildkitd restarted", restart_buildkitd),
            ("PostgreSQL restarted" if ctx.postgres is not None else "database unavailable", database_unavailable),
            ("registry restarted", restart_registry)]


def _restart(ctx: Context, what: str) -> None:
    from infra import localservices

    infra = ctx.infra
    index = next(i for i, p in enumerate(infra.procs) if what in " ".join(map(str, p.args)))
    localservices.stop(infra.procs[index])
    time.sleep(1)
    log = infra.root / "log" / f"{what}.log"
    if what == "registry":
        credentials = localservices.registry_credentials(infra.root)
        infra.procs[index] = localservices.start_registry(infra.root, infra.registry_addr, log, credentials)
    else:
        infra.procs[index] = localservices.start_buildkitd(infra.root, infra.buildkit_addr, infra.registry_addr, log)


def _wait_building(ctx: Context, ids: list[str], lock: threading.Lock, timeout: float) -> None:
    from builds.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lock:
            current = list(ids[-40:])
        statuses = set(Job.objects.filter(pk__in=current).values_list("status", flat=True))
        if "building" in statuses or not statuses - set(FINAL):
            return  # a build under way to meet the fault, or none left to wait for
        time.sleep(0.2)


def _probe(ctx: Context, repo: BuildRepo, ids: list[str], lock: threading.Lock, timeout: float = 300) -> float:
    """Seconds from the end of a fault to the callback of a trivial job sent at that moment. The
    probe is another user's job: the fair queue starts it at the next free slot, so this is the
    service's recovery, not the clients' backlog."""
    api = Api(ctx.instance.port, ctx.instance.token)
    job_id = new_job_id("probe")
    sent = time.time()
    while _request(api, "POST", "/api/v1/jobs", job_body(job_id, repo.url, project="probe", user="probe")) != 201:
        if time.time() - sent > timeout:
            return timeout
        time.sleep(0.5)
    api.close()
    with lock:
        ids.append(job_id)
    try:
        at, _ = ctx.receiver.wait([job_id], timeout)[job_id]
    except TimeoutError:
        return timeout
    return at - sent


def _wait_final(ids: list[str], timeout: float) -> set[str]:
    from builds.models import Job

    deadline = time.monotonic() + timeout
    while True:
        finished = set(Job.objects.filter(pk__in=ids, status__in=FINAL).values_list("pk", flat=True))
        if len(finished) == len(ids) or time.monotonic() > deadline:
            return finished
        time.sleep(1)


def _report(ctx: Context, ids: list[str], finished: set[str], answers: Counter, recovered: list[float],
            faults: list[str]) -> None:
    from builds.models import Job, LogChunk

    jobs = {job.pk: job for job in Job.objects.filter(pk__in=ids)}
    called_back = {i for i in ids if i in ctx.receiver.arrived}
    lost = [i for i in ids if i not in finished or i not in called_back]
    built_twice = fenced = wrong_tags = 0
    for job_id in ids:
        text = b"".join(bytes(d) for d in LogChunk.objects.filter(job_id=job_id).order_by("offset")
                        .values_list("data", flat=True)).decode(errors="replace")
        built_twice += text.count("] pushed ") > 1
        fenced += "lease was lost before its tag was written" in text
        job = jobs.get(job_id)
        if job is not None and job.status == "success" and _tag_digest(job.image_tag) != job.image_digest:
            wrong_tags += 1
    statuses = Counter(job.status for job in jobs.values())
    b = "10 faults"
    ctx.add(b, f"jobs (from {CLIENTS} clients, and one probe after each fault)", "jobs", len(ids))
    ctx.add(b, "jobs lost (not final, or no callback)", "jobs", len(lost), "0")
    ctx.add(b, "of which not final when the wait ended (pending, claimed or building)", "jobs",
            sum(1 for i in ids if i not in finished))
    ctx.add(b, "jobs built twice (two attempts pushed)", "jobs", built_twice)
    ctx.add(b, "jobs retried", "jobs", sum(1 for job in jobs.values() if job.retry_count))
    ctx.add(b, "tags fenced (a stale attempt stopped at the fence)", "jobs", fenced)
    ctx.add(b, "tags wrong (tag names another digest than the job)", "jobs", wrong_tags, "0")
    ctx.add(b, "time to recover: a job sent as a fault ends, to its callback", "s", recovered)
    ctx.add(b, "API answers 5xx", "answers", sum(n for s, n in answers.items() if s >= 500 or s == 0), "0")
    ctx.add(b, "API answers other than 200/201", "answers", sum(n for s, n in answers.items() if s not in (200, 201)))
    ctx.note(f"faults: {', '.join(faults)}; final statuses {dict(statuses)}; answers {dict(answers)}"
             + (f"; lost e.g. {lost[:3]}" if lost else ""))


def _tag_digest(image: str) -> str:
    """The digest of the manifest the registry holds under the image's tag."""
    from builds.services.steps.registry import MANIFEST_TYPES

    reference, _, tag = image.rpartition(":")
    host, _, path = reference.partition("/")
    request = urllib.request.Request(f"http://{host}/v2/{path}/manifests/{tag}",
                                     headers={"Accept": ", ".join(MANIFEST_TYPES)})
    user, password = os.environ.get("REGISTRY_USERNAME", ""), os.environ.get("REGISTRY_PASSWORD", "")
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return "sha256:" + hashlib.sha256(answer.read()).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc}"

