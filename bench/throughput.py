"""Benchmark 5: many jobs at once. 50 trivial jobs (each its own commit) with
MAX_CONCURRENT_BUILDS 1, 2 and 4: makespan (first POST sent -> last callback received), builds
per minute, the same batch run by hand with as many at a time (the machine's floor), and the
worker's memory per build slot; then 10 jobs of 3 s with 3 slots.

The instance is restarted (scripts/run) for each slot count. Worker memory is the celery main
process plus its pool processes, sampled every 0.25 s while the jobs run: RSS summed (counts
pages shared after fork once per process) and PSS summed (shares them out).
"""

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import Context, finish, hand_build, service_build, submit
from bench.repos import TRIVIAL, BuildRepo, sleeping
from bench.support import Sampler, cpu_seconds, pss_mb, rss_mb


def run(ctx: Context, restart) -> None:
    if ctx.base_images:
        restart({"MAX_CONCURRENT_BUILDS": "3"})  # the default, so usually no restart
        sleepers(ctx)
    else:
        ctx.note("3 s jobs skipped: no Debian base image")
    repo = BuildRepo(ctx.git, "throughput", {"Dockerfile": TRIVIAL})
    jobs = ctx.n(4, 50)
    for slots in ctx.n((3,), (1, 2, 4)):  # --short: the running instance, no restart
        restart({"MAX_CONCURRENT_BUILDS": str(slots)})
        batch(ctx, repo, slots, jobs)


def batch(ctx: Context, repo: BuildRepo, slots: int, count: int) -> None:
    project = "throughput"
    service_build(ctx, repo.url, repo.new_commit(), project=project)  # warm-up
    single = [_alone(ctx, repo, project) for _ in range(ctx.n(2, 3))]
    commits = [repo.new_commit() for _ in range(count)]
    makespan, cpu_per_job, rss, pss, _ = _run_batch(ctx, repo.url, commits, project)
    b = "5 throughput"
    trivial = statistics.median(single)
    ctx.add(b, f"slots={slots}: one trivial job alone, POST -> callback", "s", single)
    ideal = count * trivial / slots
    target = f"<= {1.3 * ideal:.1f} (1.3 x {count} x {trivial:.2f} / {slots})" if slots == 2 else ""
    ctx.add(b, f"slots={slots}: {count} trivial jobs, makespan", "s", makespan, target)
    ctx.add(b, f"slots={slots}: builds per minute", "builds/min", count / makespan * 60)
    ctx.add(b, f"slots={slots}: makespan / ({count} x alone / slots)", "x", makespan / ideal)
    by_hand = _hand_batch(ctx, repo, slots, count, project)
    ctx.add(b, f"slots={slots}: the same batch by hand (fetch + buildctl, {slots} at a time), makespan", "s", by_hand)
    ctx.add(b, f"slots={slots}: service makespan / by-hand makespan", "x", makespan / by_hand)
    ctx.add(b, f"slots={slots}: worker CPU per job (celery main + pool)", "ms", cpu_per_job * 1000)
    ctx.add(b, f"slots={slots}: worker peak RSS sum / slot", "MB", rss / slots)
    ctx.add(b, f"slots={slots}: worker peak PSS sum / slot", "MB", pss / slots, "(Go: 40-50 MB whole process)")


def sleepers(ctx: Context) -> None:
    seconds, count = ctx.n((1, 3), (3, 10))
    repo = BuildRepo(ctx.git, "throughput-sleep", {"Dockerfile": sleeping(seconds)})
    service_build(ctx, repo.url, repo.new_commit(), project="sleepers")  # warm-up: base image in the cache
    commits = [repo.new_commit() for _ in range(count)]
    makespan, _, _, _, done = _run_batch(ctx, repo.url, commits, "sleepers")
    target = "<= 15 s (Go: 37.5)" if (seconds, count) == (3, 10) else ""
    ideal = -(-count // 3) * seconds
    b = "5 throughput"
    ctx.add(b, f"slots=3: {count} jobs of {seconds} s, makespan (floor {ideal} s)", "s", makespan, target)
    by_hand = _hand_batch(ctx, repo, 3, count, "sleepers")
    ctx.add(b, f"slots=3: the same {count} jobs by hand (fetch + buildctl, 3 at a time), makespan", "s", by_hand)
    ctx.add(b, f"slots=3: {seconds} s jobs: buildctl inside the service (building -> pushed)", "s",
            [j["steps"]["pushed"] - j["steps"]["building"] for j in done if j["steps"]["pushed"]])
    ctx.add(b, f"slots=3: {seconds} s jobs: service time outside buildctl (claimed -> callback minus buildctl)", "s",
            [(j["t_callback"] - j["steps"]["attempt"]) - (j["steps"]["pushed"] - j["steps"]["building"])
             for j in done if j["steps"]["pushed"]])


def _hand_batch(ctx: Context, repo: BuildRepo, parallel: int, count: int, project: str) -> float:
    """The machine's floor for a batch: fetch + buildctl by hand, `parallel` at a time."""
    commits = [repo.new_commit() for _ in range(count)]
    started = time.time()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda commit: hand_build(ctx, repo.url, commit, project=project), commits))
    return time.time() - started


def _alone(ctx: Context, repo: BuildRepo, project: str) -> float:
    job = service_build(ctx, repo.url, repo.new_commit(), project=project)
    return job["t_callback"] - job["t_send"]


def _run_batch(ctx: Context, url: str, commits: list[str], project: str) -> tuple[float, float, float, float, list]:
    instance = ctx.instance
    pids = instance.worker_pids()
    cpu_before = sum(cpu_seconds(p) for p in pids)
    with Sampler(lambda: rss_mb(instance.worker_pids())) as rss, Sampler(lambda: pss_mb(instance.worker_pids()), 1.0) as pss:
        sent = [submit(ctx, url, commit, project=project) for commit in commits]
        ctx.receiver.wait([job["id"] for job in sent], timeout=1800)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
    done = [finish(ctx, job) for job in sent]  # the logs are read after the makespan
    makespan = max(j["t_callback"] for j in done) - min(j["t_send"] for j in done)
    return makespan, cpu / len(commits), rss.peak, pss.peak, done
