"""Benchmark: resident memory of the web process while 20 clients follow one 50 MB log.

Makes a job row in a throwaway data directory (SQLite, or DATABASE_URL if set), appends 50 MB
to its log with `builds.services.logs.append_chunk` (64 KiB chunks, as a busy build writes),
starts the real web process (the `web:` line of configs/Procfile: gunicorn + uvicorn's ASGI
worker, one worker process so the figure is one process's), and measures its resident memory
(gunicorn master + worker, from /proc) idle, while 20 concurrent followers read the whole log
as fast as they can, and while 20 slow followers trickle through it. The job stays `building`
until every follower has the whole log, so the followers are live `?follow=true` / SSE streams,
not plain downloads.

    .venv/bin/python bench/log_followers.py [--followers 20] [--size-mb 50] [--compare-mb 5]
"""

import argparse
import asyncio
import logging
import os
import shutil
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
    from builds.models import Job
    from builds.services import logs

    Job.objects.create(id=job_id, project_id="bench", user_id="bench", source_info={}, request_fingerprint="-",
                       status="building")
    line = b"[2026-01-01T00:00:00.000Z] #7 12.345 " + b"log line of a busy build " * 3 + b"\n"
    chunk = line * (CHUNK_BYTES // len(line))
    end = 0
    while end < size_mb * 1024 * 1024:
        end = logs.append_chunk(job_id, chunk)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--compare-mb", type=int, default=5,
                        help="also measure a log this big: flat memory means the same peak for both")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hubfly-bench-followers-"))
    setup_environment(root, max(args.size_mb, args.compare_mb))
    from tests.support.webserver import WebServer

    sizes = [size for size in (args.compare_mb, args.size_mb) if size]
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
                        phase(web, f"bench-followers-{size}", args.followers, ends[size], delay=delay)
                    )
                complete = sum(1 for position in positions if position == ends[size])
                print(f"{size} MB log, {args.followers} {label} followers (half ?follow=true, half SSE): "
                      f"peak {mb(sampler.peak)} (+{mb(sampler.peak - idle)} over idle); "
                      f"{complete}/{args.followers} got the whole log in {seconds:.1f} s")
        print(f"web process after the followers left: {mb(web.rss_bytes())}")
    finally:
        web.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
