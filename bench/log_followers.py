"""Benchmark: what log followers cost the web process: memory over a big log, and the cost of
many followers of one running job.

Makes a job row in a throwaway data directory (SQLite, or DATABASE_URL if set), appends 50 MB
to its log with `builds.joblog.writer.append_chunk` (64 KiB chunks, as a busy build writes),
starts the real web process (the `web:` line of configs/Procfile: gunicorn + uvicorn's ASGI
worker, one worker process so the figure is one process's), and measures its resident memory
(gunicorn master + worker, from /proc) idle, while 20 concurrent followers read the whole log
as fast as they can, and while 20 slow followers trickle through it. The job stays `building`
until every follower has the whole log, so the followers are live `?follow=true` / SSE streams,
not plain downloads.

Many followers (--many, default 500; issue 11 item 7): that many clients (half `?follow=true`,
half SSE) follow one running job with a small log; with all of them connected, the web worker's
resident memory, threads and open database files (from /proc; two files, the database and its
WAL, per SQLite connection) are read, then one line is appended and the time until every
follower has it is measured. The same is measured, side by side, on the code before followers
shared a reader (--before, default: the parent of the commit that added LogFeed, checked out
into a temporary directory with `git archive`; `--before none` skips it).

    .venv/bin/python bench/log_followers.py [--followers 20] [--size-mb 50] [--compare-mb 5]
    .venv/bin/python bench/log_followers.py --size-mb 0 --compare-mb 0 --many 500
"""

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TOKEN = "bench-token"
CHUNK_BYTES = 64 * 1024


def setup_environment(root: Path, size_mb: int) -> None:
    os.environ.update({
        "DATA_DIR": str(root / "data"), "LOG_DIR": str(root / "log"), "BUILDER_API_TOKENS": TOKEN,
        # Keep the whole log: the default limit would trim its middle at 20 MB.
        "LOG_MAX_BYTES": str((size_mb + 16) * 1024 * 1024),
        "DJANGO_SETTINGS_MODULE": "hubfly.settings",
    })
    os.environ.pop("CELERY_BROKER_URL", None)
    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the figures
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_log(job_id: str, size_mb: int) -> int:
    from builds.joblog import writer
    from builds.models import Job

    Job.objects.create(id=job_id, project_id="bench", user_id="bench", source_info={}, request_fingerprint="-",
                       status="building")
    line = b"[2026-01-01T00:00:00.000Z] #7 12.345 " + b"log line of a busy build " * 3 + b"\n"
    chunk = line * (CHUNK_BYTES // len(line))
    end = 0
    while end < size_mb * 1024 * 1024:
        end = writer.append_chunk(job_id, chunk)
    return end


def mb(value: int) -> str:
    return f"{value / 1024 / 1024:.1f} MB"


class Sampler:
    """Peak resident memory of the web process while a phase runs."""

    def __init__(self, web):
        self.web, self.peak, self._stop = web, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.web.rss_bytes())
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def follow(url: str, headers: dict, end: int, delay: float, caught_up: asyncio.Event) -> int:
    """Read the stream to its end; set `caught_up` once it has delivered the log up to `end`
    (for plain follow: `end` bytes; for SSE: an event whose id is `end`)."""
    import httpx

    received, position, pending = 0, 0, b""
    sse = headers.get("Accept") == "text/event-stream"
    async with httpx.AsyncClient(timeout=600) as client:
        async with client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            async for piece in response.aiter_raw():  # no re-chunking: a held-back tail would look like a stall
                received += len(piece)
                if sse:
                    lines = (pending + piece).split(b"\n")
                    pending = lines.pop()
                    position = max([position] + [int(line[4:]) for line in lines if line.startswith(b"id: ")])
                else:
                    position = received
                if position >= end:
                    caught_up.set()
                if delay:
                    await asyncio.sleep(delay)
    return position


async def phase(web, job_id: str, followers: int, end: int, *, delay: float) -> tuple[list[int], float]:
    """`followers` clients (half plain follow, half SSE) on a running job; once each has the
    whole log the job is made final, and their streams end."""
    from asgiref.sync import sync_to_async

    from builds.models import Job

    await sync_to_async(Job.objects.filter(pk=job_id).update)(status="building")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{web.url}/api/v1/jobs/{job_id}/logs"
    flags = [asyncio.Event() for _ in range(followers)]
    tasks = [
        asyncio.create_task(follow(base + "?follow=true", auth, end, delay, flags[i])) if i % 2 == 0
        else asyncio.create_task(follow(base, {**auth, "Accept": "text/event-stream"}, end, delay, flags[i]))
        for i in range(followers)
    ]
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in flags)), timeout=600)
    await sync_to_async(Job.objects.filter(pk=job_id).update)(status="success")
    positions = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return positions, time.monotonic() - started


def worker_figures(web) -> dict:
    """The single web worker's resident memory, threads and open database files, from /proc."""
    (pid,) = web.worker_pids()
    database = os.path.join(os.environ["DATA_DIR"], "hubfly.sqlite3")
    files = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            files += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(database)
        except OSError:
            pass
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss": rss, "threads": len(os.listdir(f"/proc/{pid}/task")), "db_files": files}


async def hold(url: str, headers: dict, client, connected: list, marker: bytes, seen: list, stop: asyncio.Event):
    """Follow until `stop`; count connecting, and seeing `marker` once it is written."""
    got = b""
    try:
        async with client.stream("GET", url, headers=headers) as response:
            connected.append(response.status_code)
            async for piece in response.aiter_raw():
                got = (got + piece)[-4096:]
                if marker and marker in got:
                    seen.append(time.monotonic())
                    marker = b""
                if stop.is_set():
                    break
    except Exception as exc:  # a refused or dropped follower is a figure, not a crash
        connected.append(type(exc).__name__)


async def many_followers(web, job_id: str, n: int) -> dict:
    import httpx
    from asgiref.sync import sync_to_async

    from builds.joblog import writer

    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{web.url}/api/v1/jobs/{job_id}/logs"
    connected, seen, stop = [], [], asyncio.Event()
    marker = f"fan-out {time.time_ns()}".encode()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120, pool=None), limits=limits) as client:
        tasks = [asyncio.create_task(hold(base + "?follow=true", auth, client, connected, marker, seen, stop)
                                     if i % 2 == 0 else
                                     hold(base, {**auth, "Accept": "text/event-stream"}, client, connected, marker, seen, stop))
                 for i in range(n)]
        started = time.monotonic()
        while len(connected) < n and time.monotonic() - started < 120:
            await asyncio.sleep(0.05)
        figures = {"connect_s": time.monotonic() - started, "ok": connected.count(200),
                   "refused": n - connected.count(200)}
        await asyncio.sleep(2)  # settle: every follower has had its first read
        figures.update(worker_figures(web))
        written = time.monotonic()
        await sync_to_async(writer.append_text)(job_id, marker.decode())
        while len(seen) < figures["ok"] and time.monotonic() - written < 60:
            await asyncio.sleep(0.01)
        figures["fan_out_s"] = (max(seen) - written) if seen else float("nan")
        figures["saw_line"] = len(seen)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return figures


def before_tree(rev: str, root: Path) -> Path | None:
    if rev == "none":
        return None
    if rev == "auto":
        found = subprocess.run(["git", "log", "--format=%H", "-S", "class LogFeed", "--", "builds/joblog/reader.py"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
        if not found:
            return None
        rev = found[-1] + "^"
    tree = root / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_many(root: Path, n: int, before: str) -> None:
    from builds.joblog import writer
    from builds.models import Job
    from tests.support import webserver

    job_id = f"bench-many-{time.time_ns()}"
    Job.objects.create(id=job_id, project_id="bench", user_id="bench", source_info={}, request_fingerprint="-",
                       status="building")
    for i in range(200):
        writer.append_text(job_id, f"#7 {i:.3f} step output line {i}")
    variants = [("now", REPO_ROOT)]
    tree = before_tree(before, root)
    if tree is not None:
        variants.insert(0, ("before", tree))
    rows = []
    for label, code in variants:
        webserver.REPO_ROOT = code  # the web process runs that tree's code (the Procfile's web line)
        web = webserver.WebServer(root / "log" / f"web-many-{label}.log", workers=1,
                                  env={"MAX_LOG_FOLLOWERS": str(max(n, 500))})
        webserver.REPO_ROOT = REPO_ROOT
        try:
            idle = worker_figures(web)
            figures = asyncio.run(many_followers(web, job_id, n))
            rows.append((label, idle, figures))
        finally:
            web.stop()
    print(f"\n{n} followers of one running job (half ?follow=true, half SSE), one web worker:")
    print(f"{'code':8} {'followers':>9} {'RSS idle':>9} {'RSS':>9} {'threads':>8} {'DB files':>9} "
          f"{'DB conns':>9} {'connect':>8} {'fan-out':>8}")
    for label, idle, f in rows:
        print(f"{label:8} {f['ok']:>5}/{n:<3} {mb(idle['rss']):>9} {mb(f['rss']):>9} "
              f"{idle['threads']:>3}->{f['threads']:<4} {idle['db_files']:>3}->{f['db_files']:<4} "
              f"{f['db_files'] // 2:>9} {f['connect_s']:>7.1f}s {f['fan_out_s']:>7.2f}s")
    print("(DB conns: open SQLite connections, from the files; fan-out: one appended line until every "
          "follower had it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=50, help="0: skip the big-log figures")
    parser.add_argument("--compare-mb", type=int, default=5,
                        help="also measure a log this big: flat memory means the same peak for both")
    parser.add_argument("--many", type=int, default=500, help="followers of one running job (0: skip)")
    parser.add_argument("--before", default="auto",
                        help="git revision to measure --many on too (auto: before followers shared a reader; none)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hubfly-bench-followers-"))
    setup_environment(root, max(args.size_mb, args.compare_mb))
    from tests.support.webserver import WebServer

    try:
        sizes = [size for size in (args.compare_mb, args.size_mb) if size]
        if sizes:
            run_sizes(root, sizes, args.followers, WebServer)
        if args.many:
            run_many(root, args.many, args.before)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_sizes(root: Path, sizes: list[int], followers: int, WebServer) -> None:  # noqa: N803
    ends = {}
    for size in sizes:
        started = time.monotonic()
        ends[size] = make_log(f"bench-followers-{size}", size)
        print(f"log of {mb(ends[size])} in {ends[size] // CHUNK_BYTES} chunks, written in {time.monotonic() - started:.1f} s")

    web = WebServer(root / "log" / "web.log", workers=1)
    try:
        time.sleep(1)
        idle = web.rss_bytes()
        print(f"web process (gunicorn master + 1 uvicorn worker) idle: {mb(idle)}")
        for size in sizes:
            for label, delay in (("fast", 0.0), ("slow (5 ms pause per read)", 0.005)):
                with Sampler(web) as sampler:
                    positions, seconds = asyncio.run(
                        phase(web, f"bench-followers-{size}", followers, ends[size], delay=delay)
                    )
                complete = sum(1 for position in positions if position == ends[size])
                print(f"{size} MB log, {followers} {label} followers (half ?follow=true, half SSE): "
                      f"peak {mb(sampler.peak)} (+{mb(sampler.peak - idle)} over idle); "
                      f"{complete}/{followers} got the whole log in {seconds:.1f} s")
        print(f"web process after the followers left: {mb(web.rss_bytes())}")
    finally:
        web.stop()


if __name__ == "__main__":
    main()
