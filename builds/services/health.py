"""Readiness: can we reach the database, the broker, buildkitd and the registry?"""

import subprocess
import urllib.error
import urllib.request

from django.conf import settings
from django.db import connection


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _broker() -> str:
    from hubfly.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
    return "ok"


def _buildkitd() -> str:
    result = subprocess.run(
        [settings.BUILDCTL_BIN, "--addr", settings.BUILDKIT_ADDR, "debug", "workers"],
        capture_output=True, text=True, timeout=5,
    )
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["buildctl failed"])[-1][:200]
    return "ok"


def _registry() -> str:
    scheme = "http" if settings.REGISTRY_INSECURE else "https"
    try:
        with urllib.request.urlopen(f"{scheme}://{settings.REGISTRY_URL}/v2/", timeout=3):
            return "ok"
    except urllib.error.HTTPError as exc:
        return "ok" if exc.code == 401 else f"HTTP {exc.code}"


def checks() -> dict[str, str]:
    results = {}
    for name, check in (("database", _database), ("broker", _broker), ("buildkitd", _buildkitd), ("registry", _registry)):
        try:
            results[name] = check()
        except Exception as exc:  # the point of readiness is to report, not to raise
            results[name] = f"{type(exc).__name__}: {exc}"[:200]
    return results
