"""An upgrade of a running deployment, from an earlier release of this repository to this tree
(README, "Upgrading"): the old release's web, build worker, maintenance worker and beat serve
while a client keeps submitting jobs and reading them; then the new code's `migrate`, then its
workers, then its web replace the old ones. No request fails and every job is built once.

The old release is taken from git history (`git archive`), so the test needs a clone with
history (a CI checkout is one). The web swap is the one a load balancer does: the new web
process starts, the client moves to it, then the old one stops gracefully; so a refused
connection is a failure too, in every phase.

The deployment has a registry and a buildkitd of its own: the old release knows no registry
credentials, so its registry asks for none (as an operator's registry from before the
upgrade would not). Builds are `FROM scratch`, so no base image is needed. The database is
SQLite, or with HUBFLY_TEST_SCALEOUT=1 a PostgreSQL database of its own, with Redis as the broker.
"""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from infra import localservices
from tests.conftest import API_TOKEN, REPO_ROOT, SCALEOUT, TEST_ROOT, wait_for
from tests.support.jobs import new_id
from tests.support.webserver import free_port

pytestmark = pytest.mark.e2e

# The release upgraded from: v0.1.0, the last commit before migration 0003 (secret values
# encrypted in a new column). The hash stands in when tags did not travel with the clone.
OLD_TAG = "v0.1.0"
OLD_COMMIT = "75e0616fc9de6f763252f4d5bc9c5689af91030d"
# Each phase runs under traffic for this long at least.
PHASE_SECONDS = 6.0
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def old_commit() -> str:
    for ref in (f"{OLD_TAG}^{{commit}}", f"{OLD_COMMIT}^{{commit}}"):
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "--quiet", ref],
                             capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    pytest.fail(f"neither tag {OLD_TAG} nor commit {OLD_COMMIT} is in this clone's history: the upgrade "
                "test needs a full clone (git fetch --unshallow --tags)")


def export_tree(commit: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(REPO_ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    assert archive.wait() == 0
    return dest


class Deployment:
    """One deployment's settings; processes of either release run against them."""

    def __init__(self, root: Path, registry: str, buildkit: str):
        self.root = root
        self.data_dir = root / "data"
        self.log_dir = root / "log"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", "PYTHONPATH")}
        self.env.update({
            "DATA_DIR": str(self.data_dir), "LOG_DIR": str(self.log_dir), "REGISTRY_URL": registry,
            "BUILDKIT_ADDR": buildkit, "MAX_CONCURRENT_BUILDS": "2",
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        })
        self.processes: list[Process] = []
        self.database_url = None
        if SCALEOUT:
            # A database and a Redis database of its own on the session's servers.
            import psycopg

            server, _, _ = os.environ["DATABASE_URL"].rpartition("/")
            name = f"upgrade_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as db:
                db.execute(f"CREATE DATABASE {name}")
            self.database_url = f"{server}/{name}"
            broker, _, _ = os.environ["CELERY_BROKER_URL"].rpartition("/")
            self.env.update({"DATABASE_URL": self.database_url, "CELERY_BROKER_URL": f"{broker}/7"})

    def query(self, sql: str) -> list[tuple]:
        """Rows straight from the deployment's database (the test's own Django uses another)."""
        if self.database_url:
            import psycopg

            with psycopg.connect(self.database_url) as db:
                return db.execute(sql).fetchall()
        db = sqlite3.connect(f"file:{self.data_dir / 'hubfly.sqlite3'}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def manage(self, tree: Path, *args: str) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=tree, env=self.env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, f"manage.py {' '.join(args)} in {tree.name}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def spawn(self, tree: Path, name: str, argv: list[str], **env) -> "Process":
        log_path = self.log_dir / f"{tree.name}-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(argv, cwd=tree, env={**self.env, **env}, stdout=open(log_path, "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(Process(f"{tree.name} {name}", proc, log_path))
        return self.processes[-1]

    def kill_leftovers(self) -> None:
        """Whatever a failed test left running, with everything it started."""
        for process in self.processes:
            if process.proc.poll() is None:
                os.killpg(process.proc.pid, signal.SIGKILL)
                process.proc.wait()

    def worker(self, tree: Path, queue: str) -> "Process":
        concurrency = "2" if queue == "builds" else "1"
        process = self.spawn(tree, queue, [sys.executable, "-m", "celery", "-A", "hubfly", "worker", "--queues", queue,
                                           "--concurrency", concurrency, "--loglevel", "INFO",
                                           "-n", f"{queue}-{tree.name}@%h"])
        wait_for(lambda: b"ready." in process.log_path.read_bytes() or process.proc.poll() is not None, 60,
                 f"{process.name} to start")
        process.check_alive()
        return process

    def beat(self, tree: Path) -> "Process":
        return self.spawn(tree, "beat", [sys.executable, "-m", "celery", "-A", "hubfly", "beat", "--loglevel", "INFO",
                                         "--schedule", str(self.data_dir / "celerybeat-schedule")])

    def web(self, tree: Path) -> "Process":
        port = free_port()
        # The Procfile's web: line of that release, on loopback.
        line = next(l for l in (tree / "configs" / "Procfile").read_text().splitlines() if l.startswith("web:"))
        command = line.split(":", 1)[1].strip().replace("0.0.0.0:", "127.0.0.1:")
        process = self.spawn(tree, f"web-{port}", ["bash", "-c", f"exec {command}"], PORT=str(port), WEB_WORKERS="2")
        process.url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            process.check_alive()
            try:
                with _direct.open(process.url + "/healthz", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(answers, 60, f"{process.name} to answer", interval=0.1)
        return process


class Process:
    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path):
        self.name, self.proc, self.log_path, self.url = name, proc, log_path, None

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the main process, as `docker stop` does: a worker finishes its running
        builds, the web finishes the requests it has."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"{self.name} did not stop within {timeout}s:\n{self.log_tail()}")


class Client(threading.Thread):
    """Reads a job, its log and the job list every few tenths of a second and submits a job
    every third time (every other one with a secret), through whichever web process `url`
    names."""

    def __init__(self, url: str, repo_url: str):
        super().__init__(daemon=True)
        self.url, self.repo_url = url, repo_url
        self.phase = "old"
        self.jobs: dict[str, dict] = {}  # id -> {"phase": ..., "secret": ...}
        self.requests: Counter = Counter()
        self.failures: list[str] = []
        self.done = threading.Event()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"})
        self.requests[self.phase] += 1
        try:
            with _direct.open(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def submit(self) -> None:
        job_id, secret = new_id("upgrade"), len(self.jobs) % 2 == 1
        config = {"env": {"NONCE": job_id}}
        if secret:
            config = {"env": {"NONCE": job_id, "TOKEN": f"s3cret-{job_id}"}, "secrets": ["TOKEN"]}
        status, body = self.call("POST", "/api/v1/jobs", {
            "id": job_id, "projectId": "upgrade", "userId": "tester", "sourceType": "git",
            "sourceInfo": {"gitRepository": self.repo_url}, "buildConfig": config})
        if status != 201:
            raise AssertionError(f"POST /api/v1/jobs answered {status}: {body[:300]!r}")
        self.jobs[job_id] = {"phase": self.phase, "secret": secret}

    def read(self) -> None:
        job_id = random.choice(list(self.jobs))
        for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/logs", "/api/v1/jobs?limit=20"):
            status, body = self.call("GET", path)
            if status != 200:
                raise AssertionError(f"GET {path} answered {status}: {body[:300]!r}")

    def run(self) -> None:
        for turn in range(10**9):
            if self.done.is_set():
                break
            for step in (self.submit, self.read) if turn % 3 == 0 else (self.read,):
                phase = self.phase
                try:
                    step()
                except (AssertionError, OSError) as exc:
                    self.failures.append(f"{phase}: {exc!r}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=60)


def job_rows(deployment: Deployment) -> dict[str, tuple]:
    rows = deployment.query("SELECT id, status, attempts, retry_count, error_code, error FROM builds_job")
    return {row[0]: tuple(row[1:]) for row in rows}


@pytest.fixture
def build_services():
    """A registry without credentials and a buildkitd on the host's network, like the old
    release's own local services; stopped afterwards."""
    state = TEST_ROOT / "upgrade-services"
    (state / "registry").mkdir(parents=True)
    registry = f"127.0.0.1:{free_port()}"
    config = state / "registry.yml"
    config.write_text(localservices.registry_config(state, registry))
    log_dir = TEST_ROOT / "log"
    log_dir.mkdir(exist_ok=True)
    registry_proc = subprocess.Popen(
        [localservices.find_binary("docker-registry"), "serve", str(config)],
        stdout=open(log_dir / "upgrade-registry.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    started = [registry_proc]
    try:
        wait_for(lambda: localservices.registry_reachable(registry), 20, "the registry")
        buildkit = f"unix://{state}/buildkitd.sock"
        started.append(localservices.start_buildkitd(state, buildkit, registry, log_dir / "upgrade-buildkitd.log",
                                                     mirror=False, network=False))
        yield registry, buildkit
    finally:
        for proc in reversed(started):
            localservices.stop(proc)


def upgrade_under_traffic(deployment: Deployment, old: Path, new: Path, repo_url: str, receiver) -> tuple[Client, dict]:
    """The README's order, with a client busy all along; returns it and the job rows after."""
    deployment.manage(old, "migrate", "--noinput")
    deployment.manage(old, "init_broker")
    running = {"builds": deployment.worker(old, "builds"), "maintenance": deployment.worker(old, "maintenance"),
               "beat": deployment.beat(old), "web": deployment.web(old)}
    client = Client(running["web"].url, repo_url)
    client.start()
    try:
        time.sleep(PHASE_SECONDS)

        # 1. The new release's migrations, while the old release serves.
        client.phase = "migrate"
        deployment.manage(new, "migrate", "--noinput")
        deployment.manage(new, "init_broker")
        time.sleep(PHASE_SECONDS)

        # 2. Workers: each new one starts before the old one stops (and finishes its builds).
        client.phase = "workers"
        for queue in ("builds", "maintenance"):
            replacement = deployment.worker(new, queue)
            running[queue].stop()
            running[queue] = replacement
        running["beat"].stop()
        running["beat"] = deployment.beat(new)
        time.sleep(PHASE_SECONDS)

        # 3. Web: the new one starts, the client moves to it, the old one stops gracefully.
        client.phase = "web"
        replacement = deployment.web(new)
        client.url = replacement.url
        running["web"].stop()
        running["web"] = replacement
        time.sleep(PHASE_SECONDS)
        client.phase = "new"
        time.sleep(2)
    finally:
        client.stop()

    def all_final():
        rows = job_rows(deployment)
        return all(rows.get(job_id, ("pending",))[0] in ("success", "failed", "canceled") for job_id in client.jobs)

    wait_for(all_final, 120, "every job to end", interval=0.5)
    wait_for(lambda: all(receiver.for_job(job_id) for job_id in client.jobs), 60, "every callback", interval=0.5)
    for process in running.values():
        process.check_alive()
    # 4. The contract step, once no old process is left.
    deployment.manage(new, "seal_secrets")
    for process in running.values():
        process.stop()
    return client, job_rows(deployment)


def test_upgrade_under_traffic_fails_no_request_and_loses_no_job(build_services, git_server, receiver):
    registry, buildkit = build_services
    root = TEST_ROOT / "upgrade"
    old = export_tree(old_commit(), root / "old")
    deployment = Deployment(root, registry, buildkit)
    repo = git_server.repo("upgrade")
    repo.commit({"Dockerfile": "FROM scratch\nARG NONCE\nCOPY hello /hello\nLABEL nonce=$NONCE\n", "hello": "hi\n"})
    try:
        client, rows = upgrade_under_traffic(deployment, old, REPO_ROOT, repo.url, receiver)
        stored = repr(deployment.query("SELECT * FROM builds_job"))
    finally:
        deployment.kill_leftovers()

    phases = Counter(info["phase"] for info in client.jobs.values())
    print(f"requests per phase {dict(client.requests)}; jobs per phase {dict(phases)}")
    assert not client.failures, (len(client.failures), Counter(f[:200] for f in client.failures).most_common(5))
    assert all(phases[phase] >= 3 for phase in ("old", "migrate", "workers", "web")), phases
    not_built_once = {job_id: (info, rows[job_id]) for job_id, info in client.jobs.items()
                      if rows[job_id][:3] != ("success", 1, 0)}
    assert not not_built_once, not_built_once
    callbacks = {job_id: [r.json["status"] for r in receiver.for_job(job_id)] for job_id in client.jobs}
    assert all(sent == ["success"] for sent in callbacks.values()), callbacks
    plain = [job_id for job_id, info in client.jobs.items() if info["secret"] and f"s3cret-{job_id}" in stored]
    assert not plain, f"secret values still in plain text after seal_secrets: {plain}"
