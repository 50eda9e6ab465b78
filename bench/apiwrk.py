#!/usr/bin/env python3
"""The API's rates under Debian's `wrk` (a load generator that costs little CPU), side by side:
the web process as the Procfile starts it, on a database of its own holding a few hundred
pending jobs (no worker: they stay pending), in variants that take turns for each figure.

- lean: this checkout, as it runs by default;
- h11: this checkout on uvicorn's pure-Python HTTP parser and asyncio's loop (gunicorn's
  uvicorn_worker.UvicornH11Worker), as before httptools and uvloop were installed;
- django: this checkout with API_LEAN_READS=0 and API_LEAN_CREATIONS=0 (job reads and creations
  through Django's middleware and DRF);
- baseline: with --baseline DIR, the code in DIR (another release, e.g. `git archive <ref>`
  unpacked there), run by the same Python, on the HTTP stack its requirements.txt installs (h11
  and asyncio's loop unless it lists httptools).

Figures: `GET /api/v1/jobs/{id}` (8 connections), `GET /api/v1/jobs?projectId=...&limit=50`
(8 connections), `POST /api/v1/jobs` (8 connections, each request a new job): requests/s,
p50/p95/p99 latency, and the web processes' CPU time per request (user + system, from /proc),
the figure a machine shared with other work skews least; per round and variant. The POSTs come
last as they add pending jobs.

    .venv/bin/python bench/apiwrk.py [--seconds 10] [--rounds 2] [--pending 300] [--workers 1] [--baseline DIR]
"""

import argparse
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from infra import localservices  # noqa: E402  (standard library only: no Django)

TOKEN = "bench-wrk"
REPO_URL = "http://127.0.0.1:9/app.git"

LUA_COMMON = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.3f %.3f %.3f %.3f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""
LUA_GET = LUA_COMMON + """
local paths = {}
local n = 0
function init(args)
  for line in io.lines(args[1]) do table.insert(paths, line) end
  n = tid * 7919
end
function request()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1], {["Authorization"] = "Bearer @TOKEN@"})
end
"""
LUA_POST = LUA_COMMON + """
local n = 0
local prefix = ""
function init(args) prefix = args[1] .. "-" .. tid end
function request()
  n = n + 1
  local body = string.format('{"id":"%s-%d","projectId":"wrk","userId":"wrk","sourceType":"git",'
    .. '"sourceInfo":{"gitRepository":"@REPO@"},"buildConfig":{}}', prefix, n)
  return wrk.format("POST", "/api/v1/jobs", {["Authorization"] = "Bearer @TOKEN@",
    ["Content-Type"] = "application/json"}, body)
end
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn as the Procfile runs it, from `source`, on a data directory of its own."""

    def __init__(self, name: str, source: Path, root: Path, extra_env: dict[str, str], *, workers: int,
                 worker_class: str = "uvicorn_worker.UvicornWorker"):
        self.name, self.source = name, source
        self.data_dir = root / name
        self.port = free_port()
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hubfly.settings", "DATA_DIR": str(self.data_dir),
                    "LOG_DIR": str(self.data_dir / "log"), "BUILDER_API_TOKENS": TOKEN,
                    "GIT_ALLOWED_HOSTS": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "WARNING",
                    "PROBE_BUILDKIT": "0", **extra_env}
        for name_ in ("DATABASE_URL", "CELERY_BROKER_URL", "PYTHONPATH"):
            self.env.pop(name_, None)
        self.data_dir.mkdir(parents=True)
        for command in (["migrate", "--noinput", "-v", "0"], ["init_broker"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=source, env=self.env, check=True,
                           stdout=subprocess.DEVNULL)
        self.log = open(self.data_dir / "web.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "hubfly.asgi:application", "--config", "python:hubfly.gunicorn_conf",
             "--worker-class", worker_class, "--workers", str(workers),
             "--bind", f"127.0.0.1:{self.port}", "--timeout", "120"],
            cwd=source, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: gunicorn exited with {self.proc.returncode}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: gunicorn did not answer /healthz")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def seed(self, count: int) -> list[str]:
        """`count` pending jobs over 3 users and 4 projects; project p0 has a quarter of them."""
        ids = []
        for i in range(count):
            job_id = f"seed-{i}"
            status, body = self.request("POST", "/api/v1/jobs", {
                "id": job_id, "projectId": f"p{i % 4}", "userId": f"u{i % 3}", "sourceType": "git",
                "sourceInfo": {"gitRepository": REPO_URL}, "buildConfig": {}})
            if status != 201:
                raise RuntimeError(f"{self.name}: seeding answered {status}: {body[:200]!r}")
            ids.append(job_id)
        return ids

    def stored(self) -> tuple[int, int]:
        """(jobs in the database, messages in the broker): no worker runs, so each job created
        must have its one message waiting."""
        counts = []
        for name, table in (("hubfly.sqlite3", "builds_job"), ("broker.sqlite3", "kombu_message")):
            with sqlite3.connect(self.data_dir / name) as db:
                counts.append(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return counts[0], counts[1]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes (gunicorn and its workers) so far."""
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # the session (start_new_session: the gunicorn's pid)
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if not self.log.closed:
            localservices.stop(self.proc, timeout=30)
            self.log.close()


def wrk(port: int, script: Path, seconds: int, *args: str) -> dict:
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
                          f"http://127.0.0.1:{port}", "--", *args], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    requests, errors, duration, p50, p95, p99 = line.split()[1:]
    return {"rate": int(requests) / float(duration), "errors": int(errors), "p50": float(p50), "p95": float(p95),
            "p99": float(p99), "duration": float(duration), "answered": int(requests) - int(errors)}


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def run(ctx) -> None:
    """bench/run.py's entry (`--only wrk`): the default variants against Django's path, short
    with --short so the test command keeps this script working."""
    short = ["--seconds", "2", "--rounds", "1", "--pending", "50"] if ctx.short else []
    if main([*short, "--only", "lean,django"], ctx) != 0:
        raise RuntimeError("apiwrk could not run")


TARGETS = {"GET /api/v1/jobs/{id}": ">= 3,000 (lean)", "GET /api/v1/jobs?projectId=p0&limit=50": ">= 1,000 (lean)",
           "POST /api/v1/jobs": ">= 600, p95 < 50 ms (lean)"}


def main(argv=None, ctx=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per figure, round and variant")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pending", type=int, default=300, help="pending jobs seeded in each database")
    parser.add_argument("--baseline", type=Path, help="a directory holding another release's code")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_WORKERS", "1")),
                        help="uvicorn workers of each web process (the Procfile's default: 1)")
    parser.add_argument("--only", default="", help="comma-separated variants (lean,h11,django,baseline)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed (scripts/setup.sh --dev installs it)", file=sys.stderr)
        return 2
    h11 = "uvicorn_worker.UvicornH11Worker"
    lean, django = ({"API_LEAN_READS": on, "API_LEAN_CREATIONS": on} for on in ("1", "0"))
    variants = {"lean": (REPO_ROOT, lean, {}),
                "h11": (REPO_ROOT, lean, {"worker_class": h11}),
                "django": (REPO_ROOT, django, {})}
    if args.baseline:
        source = args.baseline.resolve()
        stack = {} if "httptools" in (source / "requirements.txt").read_text() else {"worker_class": h11}
        variants["baseline"] = (source, {}, stack)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    root = Path(tempfile.mkdtemp(prefix="hubfly-apiwrk-"))
    scripts = root / "lua"
    scripts.mkdir()
    (scripts / "get.lua").write_text(LUA_GET.replace("@TOKEN@", TOKEN))
    (scripts / "post.lua").write_text(LUA_POST.replace("@TOKEN@", TOKEN).replace("@REPO@", REPO_URL))
    servers: dict[str, Server] = {}
    results: dict[tuple[str, str], list[dict]] = {}
    posted: dict[str, int] = {}
    print(f"{os.cpu_count()} cores; load average at start {loadavg()}; {args.pending} pending jobs; "
          f"{args.workers} web worker(s); wrk -t2 -c8, {args.seconds} s per figure x {args.rounds} rounds, "
          f"variants take turns", flush=True)
    try:
        for name, (source, env, options) in variants.items():
            servers[name] = Server(name, source, root, env, workers=args.workers, **options)
        ids = {name: server.seed(args.pending) for name, server in servers.items()}
        (root / "detail.txt").write_text("\n".join(f"/api/v1/jobs/{i}" for i in ids["lean" if "lean" in ids
                                                                                    else next(iter(ids))]))
        (root / "list.txt").write_text("/api/v1/jobs?projectId=p0&limit=50\n")
        figures = [("GET /api/v1/jobs/{id}", "get.lua", "detail.txt"),
                   ("GET /api/v1/jobs?projectId=p0&limit=50", "get.lua", "list.txt"),
                   ("POST /api/v1/jobs", "post.lua", None)]
        for figure, script, paths in figures:
            for round_ in range(args.rounds):
                for name, server in servers.items():
                    extra = [str(root / paths)] if paths else [f"r{round_}"]
                    cpu = server.cpu_seconds()
                    result = wrk(server.port, scripts / script, args.seconds, *extra)
                    # The server's CPU per request: what a shared machine's load average skews least.
                    result["cpu_ms"] = (server.cpu_seconds() - cpu) * 1000 / max(1, result["rate"] * args.seconds)
                    result["load"] = loadavg()
                    results.setdefault((figure, name), []).append(result)
                    if script == "post.lua":
                        posted[name] = posted.get(name, 0) + result["answered"]
                    print(f"  {figure:42s} {name:9s} round {round_ + 1}: {result['rate']:7.0f} req/s, p50 "
                          f"{result['p50']:6.2f} ms, p95 {result['p95']:6.2f} ms, p99 {result['p99']:6.2f} ms, "
                          f"server CPU {result['cpu_ms']:5.2f} ms/request, errors {result['errors']}, load {result['load']}",
                          flush=True)
        # Nothing lost to the speed: every job answered is stored, and each has its message.
        # Counted once the server has stopped: the requests in flight when wrk stopped finish
        # first (a job committed but its message not yet published is no loss).
        for name, server in servers.items():
            server.stop()
            stored, messages = server.stored()
            print(f"  {name}: {stored} jobs stored ({args.pending} seeded + {posted.get(name, 0)} POSTs answered "
                  f"2xx, and any in flight when wrk stopped), {messages} broker messages", flush=True)
            if stored < args.pending + posted.get(name, 0) or messages != stored:
                log = (server.data_dir / "web.log").read_text(errors="replace").splitlines()
                print("\n".join(log[-40:]), file=sys.stderr)
                raise RuntimeError(f"{name}: jobs or messages lost (the web process's last log lines above)")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nsummary (best round per variant; load average at end {loadavg()}):")
    for figure, _, _ in figures:
        best = {name: max(results[(figure, name)], key=lambda r: r["rate"]) for name in servers}
        cpu = {name: min(r["cpu_ms"] for r in results[(figure, name)]) for name in servers}
        line = ", ".join(f"{name} {r['rate']:.0f} req/s (p95 {r['p95']:.1f} ms, {cpu[name]:.2f} CPU-ms/request)"
                         for name, r in best.items())
        ratios = ", ".join(f"lean/{name} {best['lean']['rate'] / r['rate']:.2f}x req/s, "
                           f"{cpu[name] / cpu['lean']:.2f}x less CPU" for name, r in best.items()
                           if name != "lean" and "lean" in best and r["rate"] and cpu["lean"])
        print(f"  {figure}: {line}{'; ' + ratios if ratios else ''}")
        if ctx is not None:
            for name, r in best.items():
                ctx.add("wrk", f"{figure}, {name}: rate", "req/s", r["rate"], TARGETS[figure] if name == "lean" else "")
                ctx.add("wrk", f"{figure}, {name}: p95", "ms", r["p95"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
