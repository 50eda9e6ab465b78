"""Benchmark 1: dispatch latency, POST accepted -> job claimed -> `building` (buildctl starts),
and the CPU an idle instance burns while it polls the broker.

Jobs are sent one at a time with random gaps, so they land at every phase of the worker's
broker poll. Times come from the job log: `attempt N on worker` is written right after the
claim, `building <image>` right after the `building` status is committed and just before
buildctl is started.
"""

import random
import time

from bench.common import Context, ms, service_build
from bench.repos import TRIVIAL, BuildRepo
from bench.support import cpu_seconds


def run(ctx: Context) -> None:
    repo = BuildRepo(ctx.git, "dispatch", {"Dockerfile": TRIVIAL})
    commit = repo.head
    service_build(ctx, repo.url, commit)  # warm-up: first request, first claim, first push
    n = ctx.n(4, 30)
    rng = random.Random(6)
    post, claim, setup, building, fetch, prepare = [], [], [], [], [], []
    for _ in range(n):
        time.sleep(rng.uniform(0.2, 0.9))
        job = service_build(ctx, repo.url, commit)
        steps = job["steps"]
        post.append((job["t_accepted"] - job["t_send"]) * 1000)
        claim.append(ms(job["t_accepted"], steps["attempt"]))
        building.append(ms(job["t_accepted"], steps["building"]))
        setup.append(ms(steps["attempt"], steps["fetching"]))
        fetch.append(ms(steps["fetching"], steps["checked_out"]))
        prepare.append(ms(steps["checked_out"], steps["building"]))
    b = "1 dispatch"
    ctx.add(b, "POST /api/v1/jobs round trip", "ms", post, percentiles=True)
    ctx.add(b, "accepted -> claimed (task started)", "ms", claim, percentiles=True)
    ctx.add(b, "accepted -> building = buildctl started", "ms", building, "p50 <= 150 (Go: 176)", percentiles=True)
    ctx.add(b, "  of which claimed -> fetch started", "ms", setup, percentiles=True)
    ctx.add(b, "  of which git fetch (worker's git steps)", "ms", fetch, "(Go clone ~130)", percentiles=True)
    ctx.add(b, "  of which checkout -> building (prepare, status)", "ms", prepare, percentiles=True)
    idle_cpu(ctx)


def idle_cpu(ctx: Context) -> None:
    """CPU of each process kind over a quiet period, as % of one core."""
    time.sleep(ctx.n(1, 3))  # let the last job's callback and log writes settle
    seconds = ctx.n(3, 30)
    groups = {"worker (main + pool)": ctx.instance.worker_pids(), "beat": ctx.instance.beat_pids(),
              "web (gunicorn)": ctx.instance.web_pids()}
    if ctx.instance.maintenance_pids():
        groups["maintenance worker"] = ctx.instance.maintenance_pids()
    before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
    time.sleep(seconds)
    for name, pids in groups.items():
        used = sum(cpu_seconds(p) for p in pids) - before[name]
        target = "< 2% of a core" if name.startswith("worker") else ""
        ctx.add("1 dispatch", f"idle CPU, {name}, over {seconds} s", "%", used / seconds * 100, target)
