#!/usr/bin/env python3
"""The fair queue (issue 14), side by side with broker order, in one run.

1. "A: 20 jobs, then B: 2" on two slots, each build 3 s: the makespan and the worst wait of
   the smallest tenant (B), with broker order (a free slot claims the job of the next message,
   as before the fair queue: `lifecycle.job_claim`) and with the fair pick
   (`lifecycle.job_claim_next`). The claims are the service's own code on a database of their
   own; the clock is simulated (builds take exactly 3 s), so the figures are the policies',
   not this machine's.
2. The fair pick's cost with many pending jobs (10,000; 2,000 with --short) over 200 users:
   `queue.pick()`, a whole claim (`job_claim_next`), and `queue.places()` (every pending job's
   place, what a pending job's JSON costs), on SQLite and, with --postgres, on PostgreSQL.

    .venv/bin/python bench/fairqueue.py [--short] [--postgres]
    .venv/bin/python bench/run.py --only fairqueue
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SLOTS, BUILD_SECONDS, B_SUBMITTED_AT = 2, 3.0, 0.5


# --- in the child process: a database of its own ------------------------------------------


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
    os.environ["CELERY_BROKER_URL"] = "memory://"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _submit(job_id: str, user: str) -> None:
    from builds.services import jobs

    jobs.job_create(data={"id": job_id, "projectId": f"{user}-site", "userId": user, "sourceType": "git",
                          "sourceInfo": {"gitRepository": "https://git.example.invalid/app.git"}, "buildConfig": {}})


def scenario(policy: str) -> dict:
    """A: 20 jobs at t=0, B: 2 at t=0.5, two slots; returns makespan and waits (simulated s)."""
    from builds.models import Status
    from builds.services.state import lifecycle

    run = f"{policy[:4]}-{time.monotonic_ns()}"
    messages, submitted, started, running = [], {}, {}, []  # running: [(ends_at, job_id, lease)]

    def submit(job_id, user, at):
        _submit(job_id, user)
        messages.append(job_id)
        submitted[job_id] = at

    def fill(now):
        while len(running) < SLOTS and messages:
            hint = messages.pop(0)
            if policy == "broker order":
                lease, job_id = lifecycle.job_claim(job_id=hint, worker="bench:1"), hint
                claimed = (job_id, lease) if lease else None
            else:
                claimed = lifecycle.job_claim_next(worker="bench:1")
            if claimed:
                started[claimed[0]] = now
                running.append((now + BUILD_SECONDS, *claimed))

    for i in range(20):
        submit(f"{run}-a{i}", f"{run}-a", 0.0)
    fill(0.0)
    for i in range(2):
        submit(f"{run}-b{i}", f"{run}-b", B_SUBMITTED_AT)
    fill(B_SUBMITTED_AT)
    now = 0.0
    while running:
        running.sort()
        now, job_id, lease = running.pop(0)
        lifecycle.job_finish(job_id=job_id, lease=lease, status=Status.SUCCESS)
        fill(now)
    waits = {job_id: started[job_id] - at for job_id, at in submitted.items()}
    b_waits = [w for job_id, w in waits.items() if "-b" in job_id]
    return {"makespan": now, "b_worst_wait": max(b_waits), "a_worst_wait": max(w for j, w in waits.items() if "-a" in j)}


def pick_cost(pending: int, runs: int) -> dict:
    """Times of queue.pick(), a claim and queue.places() with `pending` jobs waiting."""
    from django.db import connection
    from django.utils import timezone

    from builds.models import Job
    from builds.services.state import lifecycle, queue

    now = timezone.now()
    rows = [Job(id=f"cost-{i}", project_id=f"p{i % 400}", user_id=f"u{i % 200}", source_info={}, build_config={},
                request_fingerprint="x", enqueued_at=now, priority=i % 3) for i in range(pending)]
    Job.objects.bulk_create(rows, batch_size=1000)
    if connection.vendor == "postgresql":  # what autovacuum does after a bulk insert, sooner
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE builds_job")

    def timed(fn, n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        return times

    result = {"pick_ms": timed(queue.pick, runs), "claim_ms": timed(lambda: lifecycle.job_claim_next(worker="b:1"), runs),
              "places_ms": timed(queue.places, max(3, runs // 10)), "vendor": connection.vendor}
    return result


def child(args) -> None:
    _setup()
    out = {"scenario": {policy: scenario(policy) for policy in ("broker order", "fair queue")}}
    out["cost"] = pick_cost(args.pending, args.runs)
    print(json.dumps(out))


# --- the parent: runs the children, prints the figures ---------------------------------------


def measure(short: bool, postgres: bool = False) -> list[tuple[str, dict]]:
    pending, runs = (2000, 10) if short else (10000, 30)
    databases = [("SQLite", None)]
    servers = []
    if postgres:
        from tests.support import scaleout

        url, server = scaleout.start_postgres(Path(tempfile.mkdtemp(prefix="fairqueue-pg-")) / "postgres")
        databases.append(("PostgreSQL", url))
        servers.append(server)
    results = []
    try:
        for name, url in databases:
            env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
            env.update({"DATA_DIR": tempfile.mkdtemp(prefix="fairqueue-"), "LOG_LEVEL": "WARNING",
                        "BUILDER_API_TOKENS": "bench", **({"DATABASE_URL": url} if url else {})})
            out = subprocess.run([sys.executable, "-m", "bench.fairqueue", "--child", "--pending", str(pending),
                                  "--runs", str(runs)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                 timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"fairqueue child failed:\n{out.stderr[-3000:]}")
            results.append((name, {**json.loads(out.stdout.splitlines()[-1]), "pending": pending}))
    finally:
        if servers:
            from tests.support import scaleout

            for server in servers:
                scaleout.stop(server)
    return results


def report(results, add=None) -> None:
    add = add or (lambda name, unit, value, note="": None)
    for database, out in results:
        if database == "SQLite":
            print(f"  'A: 20 jobs, then B: 2', {SLOTS} slots, builds of {BUILD_SECONDS:.0f} s (simulated clock):")
            print(f"  {'policy':<14}{'makespan s':>12}{'worst wait B s':>16}{'worst wait A s':>16}")
            for policy, s in out["scenario"].items():
                print(f"  {policy:<14}{s['makespan']:>12.1f}{s['b_worst_wait']:>16.1f}{s['a_worst_wait']:>16.1f}")
                add(f"{policy}: makespan", "s", s["makespan"])
                add(f"{policy}: worst wait of B", "s", s["b_worst_wait"])
        cost = out["cost"]
        print(f"  {database}, {out['pending']} pending jobs over 200 users:")
        for key, label in (("pick_ms", "queue.pick()"), ("claim_ms", "job_claim_next (pick + claim)"),
                           ("places_ms", "queue.places() (every place)")):
            values = cost[key]
            print(f"    {label:<32} median {statistics.median(values):8.2f} ms  min {min(values):8.2f}  "
                  f"max {max(values):8.2f}  ({len(values)} runs)")
            add(f"{database} {out['pending']} pending: {label}", "ms", values)


def run(ctx) -> None:
    """bench/run.py's entry: SQLite only (PostgreSQL with this file's --postgres)."""
    report(measure(ctx.short), add=lambda name, unit, value, note="": ctx.add("fairqueue", name, unit, value, note=note))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL (started here, as tests/scaleout)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pending", type=int, default=10000, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    report(measure(args.short, args.postgres))


if __name__ == "__main__":
    main()
