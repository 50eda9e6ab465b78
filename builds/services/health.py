"""Readiness: can we reach the database, the broker, buildkitd and the registry, and do builds
run contained (buildkitd's RUN steps on an isolated network, with our egress policy)?"""

import json
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


def _build_network() -> str:
    result = subprocess.run(
        [settings.BUILDCTL_BIN, "--addr", settings.BUILDKIT_ADDR, "debug", "workers", "--format", "{{json .}}"],
        capture_output=True, text=True, timeout=5,
    )
    if result.returncode != 0:
        return "unknown: buildkitd did not answer"
    workers = json.loads(result.stdout or "[]")
    modes = {w.get("labels", {}).get("org.mobyproject.buildkit.worker.network", "unknown") for w in workers}
    exposed = sorted(modes - {"cni", "bridge"})
    if exposed:
        return f"buildkitd runs RUN steps on the {exposed[0]} network: builds are not isolated"
    # The policy file is where a local buildkitd's network was applied (hubfly.localservices).
    from hubfly import buildnet

    policy = buildnet.read_policy(settings.DATA_DIR / "buildnet")
    if policy is not None and policy.get("mode") != settings.BUILD_NETWORK:
        return f"the egress policy is for BUILD_NETWORK={policy.get('mode')}, this process has {settings.BUILD_NETWORK}"
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
    for name, check in (("database", _database), ("broker", _broker), ("buildkitd", _buildkitd),
                        ("buildNetwork", _build_network), ("registry", _registry)):
        try:
            results[name] = check()
        except Exception as exc:  # the point of readiness is to report, not to raise
            results[name] = f"{type(exc).__name__}: {exc}"[:200]
    return results
