"""Benchmark 4b: the same API load against other ways of running the web process, to put a
figure on a proposed change before anyone makes it. Each variant is a gunicorn started here on
a database and broker of its own (migrated first, no worker: the created jobs stay pending).

- asgi-now: the Procfile's command (uvicorn worker, ASGI), as the instance runs it;
- asgi-now-persistent-db: the same with CONN_MAX_AGE (bench/web/settings_persistent_db.py);
- asgi-async-chain: the Procfile's command with an all-async middleware chain (bench/web/settings_async_chain.py);
- wsgi-gthread: the previous Procfile's command (gthread, 2 workers x 8 threads);
- wsgi-gthread-persistent-db: the same with CONN_MAX_AGE (bench/web/settings_persistent_db.py).
"""

import http.client
import multiprocessing
import os
import signal
import subprocess
import sys
import time

from bench import apiload
from bench.common import Context
from bench.support import REPO_ROOT, Api, Instance, free_port, peak_rss_mb, summary

ASGI = ["--worker-class", "uvicorn_worker.UvicornWorker", "--workers", "2"]
WSGI = ["--worker-class", "gthread", "--workers", "2", "--threads", "8"]
VARIANTS = {
    "asgi-now": (["hubfly.asgi:application", "--config", "python:hubfly.gunicorn_conf", *ASGI], None),
    "asgi-now-persistent-db": (["hubfly.asgi:application", "--config", "python:hubfly.gunicorn_conf", *ASGI],
                               "bench.web.settings_persistent_db"),
    "asgi-async-chain": (["bench.web.asgi_async_chain:application", "--config", "python:hubfly.gunicorn_conf", *ASGI],
                         "bench.web.settings_async_chain"),
    "wsgi-gthread": (["hubfly.wsgi:application", *WSGI], None),
    "wsgi-gthread-persistent-db": (["hubfly.wsgi:application", *WSGI], "bench.web.settings_persistent_db"),
}


def run(ctx: Context) -> None:
    data_dir = ctx.root / "run" / "webvariants"
    probe = Instance(data_dir=data_dir, infra=ctx.infra, callback_url=ctx.receiver.url)
    probe.port = free_port()
    env = probe.environment()
    env["PATH"] = f"{REPO_ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    (data_dir / "log").mkdir(parents=True, exist_ok=True)
    for command in (["migrate", "--noinput", "-v", "0"], ["init_broker"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=REPO_ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    b = "4b web variants"
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        for name, (args, settings_module) in VARIANTS.items():
            port = free_port()
            venv = {**env, "PORT": str(port)}
            if settings_module:
                venv["DJANGO_SETTINGS_MODULE"] = settings_module
            log = open(data_dir / "log" / f"{name}.log", "wb")
            proc = subprocess.Popen(["gunicorn", *args, "--bind", f"127.0.0.1:{port}", "--timeout", "120",
                                     "--access-logfile", "-"], cwd=REPO_ROOT, env=venv, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                _wait_healthy(port, probe.token, proc)
                holder = _Target(port, probe.token)
                created = apiload.load(holder, pool, "create", 8, ctx.n(96, 2000), [], ctx.n(3, 15))
                reads1 = apiload.load(holder, pool, "read", 1, ctx.n(100, 3000), created["created"], ctx.n(3, 15))
                reads8 = apiload.load(holder, pool, "read", 8, ctx.n(400, 12000), created["created"], ctx.n(3, 15))
                pids = [int(p) for p in subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True,
                                                       text=True).stdout.split()]
                rss = peak_rss_mb([p for p in pids if "gunicorn" in _cmd(p)])
                for label, result in (("create, 8 clients", created), ("read, 1 client", reads1),
                                      ("read, 8 clients", reads8)):
                    s = summary(result["latencies"])
                    ctx.add(b, f"{name}: {label}: throughput", "req/s", result["rate"])
                    ctx.add(b, f"{name}: {label}: latency", "ms", result["latencies"], percentiles=True)
                    print(f"  {name}: {label}: {result['rate']:.0f} req/s, p50 {s['p50']:.1f} ms, "
                          f"p95 {s['p95']:.1f} ms", flush=True)
                ctx.add(b, f"{name}: peak RSS of its gunicorn processes", "MB", rss)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                log.close()


class _Target:
    """What apiload.load needs of a Context: the port and token of the server under test."""

    def __init__(self, port: int, token: str):
        class _Instance:
            pass

        self.instance = _Instance()
        self.instance.port, self.instance.token = port, token
        self.git = type("G", (), {"url": "http://127.0.0.1:9"})()


def _cmd(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""


def _wait_healthy(port: int, token: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    api = Api(port, token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            if api.request("GET", "/healthz")[0] == 200:
                api.close()
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer /healthz")
