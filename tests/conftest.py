"""Test fixtures that start the real things: a registry, buildkitd, a git server over HTTP,
a callback receiver and Celery workers on the SQLite broker.

Configuration is environment variables, set here at import time because Django settings and
the Celery app read them once (the Celery app's broker URL cannot change afterwards).
"""

import os
import subprocess
import sys
import time

import pytest

from tests.testenv import (  # noqa: F401  (the environment is set when pytest starts)
    API_TOKEN, ARTIFACTS, BUILDKIT_ADDR, CACHE_DIR, CALLBACK_SECRET, RECEIVER, REGISTRY_ADDR, REPO_ROOT, SCALEOUT,
    TEST_ROOT,
)

# tests/scaleout needs PostgreSQL + Redis: it runs in its own session (HUBFLY_TEST_SCALEOUT=1).
collect_ignore = [] if SCALEOUT else ["scaleout"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    """The real database file in DATA_DIR, shared with worker processes (not a private copy)."""
    from django.core.management import call_command

    with django_db_blocker.unblock():
        call_command("migrate", verbosity=0)


@pytest.fixture
def live_db(django_db_setup, django_db_blocker):
    """The real database shared with worker and web processes: no wrapping transaction and no
    flush afterwards (a flush would race with those processes). Tests use unique ids instead."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="session")
def receiver():
    return RECEIVER


@pytest.fixture(scope="session")
def infra():
    """A registry and a buildkitd (whose docker.io mirror is that registry) with base images.
    Registry storage and BuildKit's cache persist in CACHE_DIR so reruns are quick."""
    from infra import localservices
    from tests.support.baseimages import ensure_base_images

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_dir = TEST_ROOT / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    state_dir, lock = _claim_state_slot()
    registry = localservices.start_registry(state_dir, REGISTRY_ADDR, log_dir / "registry.log")
    buildkitd = localservices.start_buildkitd(state_dir, BUILDKIT_ADDR, REGISTRY_ADDR, log_dir / "buildkitd.log")
    infra = {"registry": REGISTRY_ADDR, "buildkit": BUILDKIT_ADDR, "state_dir": state_dir,
             "registry_proc": registry, "buildkitd_proc": buildkitd}
    try:
        infra["images"] = ensure_base_images(REGISTRY_ADDR, CACHE_DIR, BUILDKIT_ADDR,
                                             images=("debian", "dockerfile-frontend"))
        yield infra
    finally:
        localservices.stop(infra["buildkitd_proc"])
        localservices.stop(infra["registry_proc"])
        lock.close()


def _claim_state_slot():
    """A directory for this session's registry storage and BuildKit root, kept between runs
    (warm caches) but never shared by two sessions at once (buildkitd locks its root)."""
    import fcntl

    for slot in range(8):
        lock = open(CACHE_DIR / f"state-{slot}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return CACHE_DIR / f"state-{slot}", lock
    raise RuntimeError("eight test sessions are running already")


class Worker:
    """A real `celery worker` process on the test's broker and database."""

    def __init__(self, name: str, concurrency: int = 2, extra_env: dict | None = None, queue: str = "builds",
                 args: tuple[str, ...] = (), entry: tuple[str, ...] = ("-m", "celery", "-A", "hubfly", "worker")):
        self.name, self.concurrency, self.extra_env, self.queue = name, concurrency, extra_env or {}, queue
        self.args = args  # more `celery worker` options
        self.entry = entry  # or ("-m", "hubfly.worker"), as configs/Procfile starts it
        self.start()

    def start(self) -> None:
        name, concurrency = self.name, self.concurrency
        self.log_path = TEST_ROOT / "log" / f"worker-{name}-{time.time_ns()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, *self.entry, "--queues", self.queue,
             "--concurrency", str(concurrency),
             "--pool", "prefork", "--loglevel", os.environ.get("HUBFLY_TEST_WORKER_LOGLEVEL", "INFO"), "-n", f"{name}@%h", "--without-heartbeat", *self.args],
            cwd=REPO_ROOT, env=env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: b"ready." in self.log_path.read_bytes() or self.proc.poll() is not None, 60, "worker start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self, sig=15, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


class Beat:
    def __init__(self, name: str = "beat", extra_env: dict | None = None):
        self.log_path = TEST_ROOT / "log" / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hubfly", "beat", "--loglevel", "INFO",
             "--schedule", str(TEST_ROOT / f"cele{name}-schedule")],
            cwd=REPO_ROOT, env={**os.environ, **(extra_env or {})}, stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def maintenance(django_db_setup):
    """The maintenance worker (reaper, webhook outbox, clean-up) and beat, as in production."""
    from django.core.management import call_command

    call_command("init_broker", verbosity=0)
    w = Worker("maintenance", concurrency=1, queue="maintenance")
    beat = Beat()
    yield w
    beat.stop()
    w.stop()


_session_workers: list[Worker] = []


@pytest.fixture(scope="session")
def worker(infra, maintenance):
    w = Worker("main", concurrency=2)
    _session_workers.append(w)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def no_build_worker():
    """The session's build worker, if a test started it, stopped while a module needs rows to stay
    `pending`: a live worker claims any eligible job from the table when a slot frees (the fair
    queue), messages or not, within milliseconds. Started again afterwards."""
    running = [w for w in _session_workers if w.proc.poll() is None]
    for w in running:
        w.stop()
    yield
    for w in running:
        w.start()


@pytest.fixture(scope="session")
def git_server():
    from tests.support.gitserver import GitServer

    server = GitServer(TEST_ROOT / "git")
    yield server
    server.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def api():
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {API_TOKEN}")
    return client
