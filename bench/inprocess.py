#!/usr/bin/env python3
"""What one API request costs inside Django, without a server: creation and read through
Django's test client on a throwaway data directory, a read with a new database connection per
request (as under the ASGI server), with a trimmed middleware list, and the bare ORM read +
job_json + json.dumps. Optionally a cProfile of creations.

    .venv/bin/python bench/inprocess.py [--runs 300] [--profile]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def timed(runs: int, call) -> float:
    times = []
    for i in range(runs):
        t = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def body(i: int) -> str:
    return json.dumps({"id": f"j{i}", "projectId": "p", "userId": "u", "sourceType": "git",
                       "sourceInfo": {"gitRepository": "http://127.0.0.1:9/a.git"}, "buildConfig": {}})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="hubfly-inprocess-"))
    os.environ.update({"DJANGO_SETTINGS_MODULE": "hubfly.settings", "DATA_DIR": str(data_dir),
                       "LOG_DIR": str(data_dir / "log"), "BUILDER_API_TOKENS": "bench",
                       "GIT_ALLOWED_HOSTS": "127.0.0.1"})
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client, override_settings

        from builds.models import Job
        from builds import presentation

        call_command("migrate", verbosity=0)
        call_command("init_broker")
        client = Client(HTTP_AUTHORIZATION="Bearer bench")
        post = lambda i: client.post("/api/v1/jobs", body(i), content_type="application/json")  # noqa: E731
        for i in range(20):
            post(i)
        n = args.runs
        print(f"{os.cpu_count()} cores, load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
        print(f"create (POST), full middleware          {timed(n, lambda i: post(1000 + i)):6.2f} ms")
        ids = [f"j{1000 + i}" for i in range(n)]
        read = lambda i: client.get(f"/api/v1/jobs/{ids[i % n]}")  # noqa: E731
        print(f"read, persistent connection             {timed(n, read):6.2f} ms")

        def read_new_connection(i):
            connection.close()
            read(i)

        print(f"read, new connection per request        {timed(n, read_new_connection):6.2f} ms")
        with override_settings(MIDDLEWARE=["builds.api.middleware.BodySizeLimitMiddleware",
                                           "django.middleware.common.CommonMiddleware"]):
            trimmed = Client(HTTP_AUTHORIZATION="Bearer bench")
            print(f"read, BodySizeLimit + Common only       "
                  f"{timed(n, lambda i: trimmed.get(f'/api/v1/jobs/{ids[i % n]}')):6.2f} ms")
        bare = lambda i: json.dumps(presentation.job_json(Job.objects.get(pk=ids[i % n])))  # noqa: E731
        print(f"ORM get + job_json + json.dumps only    {timed(n, bare):6.2f} ms")
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(100):
                post(5000 + i)
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(30)
            stats.sort_stats("tottime").print_stats(25)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
