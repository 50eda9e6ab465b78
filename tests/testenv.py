"""Test configuration as environment variables, loaded as a pytest plugin (`-p tests.testenv`
in pytest.ini) so it is in place before pytest-django imports the settings."""

import os
import secrets
import socket
import tempfile
from pathlib import Path

from tests.support.receiver import CallbackReceiver

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_ROOT = Path(tempfile.mkdtemp(prefix="hubfly-test-"))
CACHE_DIR = Path(os.environ.get("HUBFLY_TEST_CACHE", REPO_ROOT / "data" / "testcache")).resolve()
ARTIFACTS = REPO_ROOT / "test-artifacts"
API_TOKEN = "test-token"
CALLBACK_SECRET = "test-callback-secret"
REGISTRY_PASSWORD = secrets.token_urlsafe(18)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RECEIVER = CallbackReceiver()
REGISTRY_ADDR = f"127.0.0.1:{_free_port()}"
BUILDKIT_ADDR = f"unix://{TEST_ROOT}/buildkitd/buildkitd.sock"

os.environ.update(
    {
        "DATA_DIR": str(TEST_ROOT / "data"),
        "LOG_DIR": str(TEST_ROOT / "log"),
        "BUILDER_API_TOKENS": API_TOKEN,
        "GIT_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "REGISTRY_URL": REGISTRY_ADDR,
        # The registry the fixtures start asks for these on every request (infra.localservices).
        "REGISTRY_USERNAME": "hubfly-test",
        "REGISTRY_PASSWORD": REGISTRY_PASSWORD,
        "REGISTRY_INSECURE": "true",
        "BUILDKIT_ADDR": BUILDKIT_ADDR,
        "CALLBACK_URL": RECEIVER.url,
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
        "MAX_CONCURRENT_BUILDS": "2",
        "HEARTBEAT_SECONDS": "1",
        "LEASE_SECONDS": "8",
        "RETRY_BACKOFF_SECONDS": "1",
        "CANCEL_GRACE_SECONDS": "3",
        "REAPER_INTERVAL_SECONDS": "1",
        "REQUEUE_AFTER_SECONDS": "20",
        "CALLBACK_FLUSH_SECONDS": "1",
        "CALLBACK_BACKOFF_SECONDS": "1",
        "CALLBACK_BACKOFF_MAX_SECONDS": "20",
        # Off but where a test checks them (tests/test_attestations.py): provenance adds manifests
        # to every push, and an SBOM needs a scanner image only the downloading session makes.
        "ATTEST_PROVENANCE": "off",
        "ATTEST_SBOM": "false",
    }
)
for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
    os.environ.pop(name, None)  # the default run is on the embedded SQLite defaults

# HUBFLY_TEST_SCALEOUT=1: the same suite on PostgreSQL + Redis, as a multi-host deployment runs.
SCALEOUT = os.environ.get("HUBFLY_TEST_SCALEOUT") == "1"
SCALEOUT_SERVICES = []
if SCALEOUT:
    import atexit

    from tests.support import scaleout

    _database_url, _postgres = scaleout.start_postgres(TEST_ROOT / "postgres")
    _broker_url, _redis = scaleout.start_redis(TEST_ROOT / "redis")
    SCALEOUT_SERVICES += [_postgres, _redis]
    atexit.register(lambda: [scaleout.stop(p) for p in SCALEOUT_SERVICES])
    os.environ.update({"DATABASE_URL": _database_url, "CELERY_BROKER_URL": _broker_url})
