"""Readiness: can we reach the database, the broker, buildkitd and the registry, and do builds
run contained (buildkitd's RUN steps on an isolated network, with our egress policy)?

/readyz needs no token, so it must cost nothing per request: it answers `readiness()`, the
checks' results as a background thread last refreshed them (`Refreshed`, at most every
PROBE_REFRESH_SECONDS, and only while someone asks). A result is "ok" or a short reason that
names no host, user or path; the detail of a failure goes to the web process's log.
"""

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection

from hubfly.celery import app
from infra import buildnet, probes

logger = logging.getLogger(__name__)


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _broker() -> str:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
    return "ok"


def _build_network(workers: list[dict]) -> str:
    modes = {w.get("labels", {}).get("org.mobyproject.buildkit.worker.network", "unknown") for w in workers}
    exposed = sorted(modes - {"cni", "bridge"})
    if exposed:
        return f"buildkitd runs RUN steps on the {exposed[0]} network: builds are not isolated"
    # The policy file is where a local buildkitd's network was applied (infra.localservices).
    policy = buildnet.read_policy(settings.DATA_DIR / "buildnet")
    if policy is not None and policy.get("mode") != settings.BUILD_NETWORK:
        return f"the egress policy is for BUILD_NETWORK={policy.get('mode')}, this process has {settings.BUILD_NETWORK}"
    return "ok"


def _registry() -> str:
    scheme = "http" if settings.REGISTRY_INSECURE else "https"
    return probes.registry(f"{scheme}://{settings.REGISTRY_URL}", timeout=3)


def _run(name: str, check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as exc:  # the point of readiness is to report, not to raise
        reason = exc.reason if isinstance(exc, probes.ProbeFailed) else f"unavailable ({type(exc).__name__})"
        detail = exc.detail if isinstance(exc, probes.ProbeFailed) else f"{type(exc).__name__}: {exc}"
        logger.warning("readiness: %s: %s", name, detail[:1000])
        return reason


def checks() -> dict[str, str]:
    results = {name: _run(name, check) for name, check in (("database", _database), ("broker", _broker))}
    workers: list[dict] = []

    def buildkitd() -> str:
        # One `buildctl debug workers` answers both buildkit checks.
        workers.extend(probes.buildkit_workers(settings.BUILDCTL_BIN, settings.BUILDKIT_ADDR, timeout=5))
        return "ok"

    if settings.PROBE_BUILDKIT:
        results["buildkitd"] = _run("buildkitd", buildkitd)
        results["buildNetwork"] = (_run("buildNetwork", lambda: _build_network(workers))
                                   if results["buildkitd"] == "ok" else "unknown: buildkitd did not answer")
    results["registry"] = _run("registry", _registry)
    return results


class Refreshed:
    """A value that a background thread computes every PROBE_REFRESH_SECONDS while it is asked
    for (the thread ends after a minute without a request). `get()` answers the last value,
    waiting only when there is none yet. The thread holds a database connection only while
    computing."""

    IDLE_SECONDS = 60.0

    def __init__(self, name: str, compute: Callable):
        self.name, self._compute = name, compute
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._value = None
        self._asked_at = 0.0
        self._running = False

    def get(self, timeout: float = 60.0):
        with self._lock:
            self._asked_at = time.monotonic()
            if not self._running:
                self._running = True
                self._ready.clear()  # a value from before the pause is too old to answer with
                threading.Thread(target=self._refresh, name=f"refresh-{self.name}", daemon=True).start()
        self._ready.wait(timeout)
        return self._value

    def _refresh(self) -> None:
        seconds = settings.PROBE_REFRESH_SECONDS
        while True:
            try:
                self._value = self._compute()
            except Exception:
                logger.exception("computing %s failed", self.name)
            finally:
                connection.close()
            self._ready.set()
            time.sleep(seconds)
            with self._lock:
                if time.monotonic() - self._asked_at > max(self.IDLE_SECONDS, 3 * seconds):
                    self._running = False
                    return


_readiness = Refreshed("readiness", checks)


def readiness() -> dict[str, str] | None:
    """The checks' latest results (None if they could not be computed)."""
    return _readiness.get()
