"""Benchmark 4: the HTTP API under load. Job creation and job reads, by one client and by 8
concurrent clients (separate processes, one keep-alive connection each, so the client's own
GIL does not cap the figure), with throughput, p50/p95 latency and the web processes' peak
resident memory (gunicorn master + workers, VmHWM).

The worker and beat are paused (SIGSTOP) meanwhile: the created jobs stay pending, the web
process is measured alone (the Go figures are of the API alone), and the jobs never build.
The driver runs this last and throws the instance's data away.
"""

import multiprocessing
import time
import uuid

from bench.common import Context
from bench.support import Api, job_body, peak_rss_mb, rss_mb, summary


def client(spec: dict) -> dict:
    api = Api(spec["port"], spec["token"])
    api.request("GET", "/healthz")  # connect before the clock starts
    while time.time() < spec["start_at"]:
        time.sleep(0.001)
    latencies, errors = [], 0
    started = time.time()
    stop_at = time.perf_counter() + spec["max_seconds"]
    for i in range(spec["count"]):
        if time.perf_counter() > stop_at:
            break
        t = time.perf_counter()
        if spec["kind"] == "create":
            status, _ = api.request("POST", "/api/v1/jobs", job_body(f"{spec['prefix']}-{i}", spec["repo_url"]))
        else:
            status, _ = api.request("GET", f"/api/v1/jobs/{spec['ids'][(spec['offset'] + i) % len(spec['ids'])]}")
        latencies.append((time.perf_counter() - t) * 1000)
        errors += status not in (200, 201)
    return {"latencies": latencies, "start": started, "end": time.time(), "errors": errors}


def load(ctx: Context, pool, kind: str, clients: int, total: int, ids: list[str], max_seconds: float = 20) -> dict:
    """`total` requests split over `clients`, each client stopping early after max_seconds."""
    prefix = uuid.uuid4().hex[:8]
    start_at = time.time() + 0.5
    per = total // clients
    specs = [{"port": ctx.instance.port, "token": ctx.instance.token, "kind": kind, "count": per,
              "prefix": f"api-{prefix}-{c}", "repo_url": f"{ctx.git.url}/absent.git", "ids": ids,
              "offset": c * 7919, "start_at": start_at, "max_seconds": max_seconds} for c in range(clients)]
    results = pool.map(client, specs)
    latencies = [x for r in results for x in r["latencies"]]
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    created = ([f"{s['prefix']}-{i}" for s, r in zip(specs, results) for i in range(len(r["latencies"]))]
               if kind == "create" else [])
    return {"rate": len(latencies) / elapsed, "latencies": latencies, "errors": sum(r["errors"] for r in results),
            "created": created}


def run(ctx: Context) -> None:
    instance = ctx.instance
    web = instance.web_pids()
    idle_rss = rss_mb(web)
    paused = instance.worker_pids() + instance.maintenance_pids() + instance.beat_pids()
    instance.signal_all(19, paused)  # SIGSTOP
    b = "4 api"
    try:
        with multiprocessing.get_context("spawn").Pool(8) as pool:
            ids: list[str] = []
            plan = [("create", 1, ctx.n(30, 500), ">= 600/s (Go ~450-600)"),
                    ("create", 8, ctx.n(96, 2000), ">= 600/s, p95 < 50 ms"),
                    ("read", 1, ctx.n(100, 3000), "(Go ~3,400/s)"),
                    ("read", 8, ctx.n(400, 12000), ">= 3,000/s, p95 < 50 ms (Go ~11,800/s)")]
            for kind, clients, total, target in plan:
                result = load(ctx, pool, kind, clients, total, ids, ctx.n(2, 20))
                ids += result["created"]
                s = summary(result["latencies"])
                name = f"{kind} {'job (POST)' if kind == 'create' else 'job (GET /jobs/{id})'}, {clients} client(s)"
                ctx.add(b, f"{name}: throughput", "req/s", result["rate"], target)
                ctx.add(b, f"{name}: latency", "ms", result["latencies"], percentiles=True)
                if result["errors"]:
                    ctx.note(f"{name}: {result['errors']} non-2xx answers")
                print(f"  {name}: {result['rate']:.0f} req/s, p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms", flush=True)
    finally:
        # The jobs left pending must not be built: the worker is told to stop before it resumes
        # (the driver stops the whole instance next).
        instance.signal_all(15, paused)  # SIGTERM
        instance.signal_all(18, paused)  # SIGCONT
    ctx.add(b, f"web RSS at start, {len(web)} gunicorn processes", "MB", idle_rss)
    ctx.add(b, f"web peak RSS (VmHWM), {len(web)} gunicorn processes", "MB", peak_rss_mb(web), "report (Go 40-50 MB)")
    ctx.add(b, "web peak RSS, largest single process", "MB", max(peak_rss_mb([p]) for p in web))
