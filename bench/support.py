"""What every benchmark needs: statistics, a keep-alive API client, /proc readings, and a live
instance started the README's way (`scripts/run`) against a registry and buildkitd of our own.

Standard library only, so the driver runs with the project's virtualenv and nothing else.
"""

import http.client
import json
import math
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
    }


@dataclass
class Figure:
    """One reported number: a summary over runs (or one value), its unit and the target."""

    bench: str
    name: str
    unit: str
    values: list[float]
    target: str = ""
    note: str = ""
    percentiles: bool = False

    def row(self) -> dict:
        return {"bench": self.bench, "name": self.name, "unit": self.unit, "target": self.target,
                "note": self.note, **summary(self.values)}


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    if unit in ("s", "x", "%"):
        return f"{value:.2f}"
    if unit in ("req/s", "MB", "builds/min"):
        return f"{value:.1f}"
    return f"{value:g}"


def format_table(figures: list[Figure]) -> str:
    lines = ["| bench | figure | n | median | min | max | p50 | p95 | unit | target | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in figures:
        s = summary(f.values)
        if not s["n"]:
            lines.append(f"| {f.bench} | {f.name} | 0 | | | | | | {f.unit} | {f.target} | {f.note or 'no data'} |")
            continue
        p = (fmt(s["p50"], f.unit), fmt(s["p95"], f.unit)) if f.percentiles else ("", "")
        lines.append(
            f"| {f.bench} | {f.name} | {s['n']} | {fmt(s['median'], f.unit)} | {fmt(s['min'], f.unit)} | "
            f"{fmt(s['max'], f.unit)} | {p[0]} | {p[1]} | {f.unit} | {f.target} | {f.note} |"
        )
    return "\n".join(lines)


# --- /proc -----------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children_map(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def status_kb(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _read(f"/proc/{pid}/status"), re.M)
    return int(match[1]) if match else 0


def pss_kb(pid: int) -> int:
    match = re.search(r"^Pss:\s+(\d+) kB", _read(f"/proc/{pid}/smaps_rollup"), re.M)
    return int(match[1]) if match else 0


def cpu_seconds(pid: int) -> float:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def load_average() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3])


def machine_line() -> str:
    model = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    return f"{os.cpu_count()} cores ({model[1].strip() if model else 'unknown cpu'}), load average {load_average()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- log timestamps --------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z\] (.*)$")


def log_events(text: str) -> list[tuple[float, str]]:
    """(epoch seconds, text) for each line of a job log."""
    events = []
    for line in text.splitlines():
        if match := _LOG_LINE.match(line):
            stamp = datetime.fromisoformat(match[1] + "+00:00").timestamp()
            events.append((stamp, match[2]))
    return events


def first_event(events: list[tuple[float, str]], prefix: str) -> float | None:
    return next((t for t, text in events if text.startswith(prefix)), None)


# --- the API ---------------------------------------------------------------------------------


class Api:
    """A keep-alive HTTP/1.1 client for one instance; one per thread or process."""

    def __init__(self, port: int, token: str, host: str = "127.0.0.1"):
        self.host, self.port, self.token = host, port, token
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a keep-alive connection the server closed is reopened once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, payload
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: dict | None = None, expect: tuple[int, ...] = (200, 201)) -> dict:
        status, payload = self.request(method, path, body)
        if status not in expect:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {payload[:300]!r}")
        return json.loads(payload)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def job_body(job_id: str, repo_url: str, *, project: str = "bench", user: str = "bench", commit: str = "",
             build_config: dict | None = None) -> dict:
    source = {"gitRepository": repo_url}
    if commit:
        source["commitSha"] = commit
    return {"id": job_id, "projectId": project, "userId": user, "sourceType": "git", "sourceInfo": source,
            "buildConfig": build_config or {}}


# --- callbacks -------------------------------------------------------------------------------


class Receiver:
    """The callback target: records when each job's final outcome arrived."""

    def __init__(self):
        from tests.support.receiver import CallbackReceiver

        outer = self

        class _Recording(CallbackReceiver):
            def record(self, item):
                super().record(item)
                try:
                    job_id = json.loads(item.body).get("id")
                except ValueError:
                    return
                with outer._cond:
                    outer.arrived.setdefault(job_id, (item.at, json.loads(item.body)))
                    outer._cond.notify_all()

        self._cond = threading.Condition()
        self.arrived: dict[str, tuple[float, dict]] = {}
        self._server = _Recording()
        self.url = self._server.url

    def wait(self, job_ids: list[str], timeout: float) -> dict[str, tuple[float, dict]]:
        """Wait for the callbacks of all job_ids; returns {id: (received epoch, payload)}."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = [j for j in job_ids if j not in self.arrived]
                if not missing:
                    return {j: self.arrived[j] for j in job_ids}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no callback within {timeout:.0f}s for {len(missing)} job(s), e.g. {missing[0]}")
                self._cond.wait(min(left, 1.0))

    def close(self) -> None:
        self._server.close()


# --- infrastructure and the instance ---------------------------------------------------------


@dataclass
class Infra:
    """A registry and a buildkitd of the benchmark's own (buildkitd's docker.io mirror is that
    registry), kept across instance restarts; their storage persists under root."""

    root: Path
    registry_addr: str = ""
    buildkit_addr: str = ""
    procs: list = field(default_factory=list)

    def start(self, base_images: bool) -> dict:
        from infra import localservices

        self.root.mkdir(parents=True, exist_ok=True)
        log_dir = self.root / "log"
        self.registry_addr = f"127.0.0.1:{free_port()}"
        self.buildkit_addr = f"unix://{self.root}/buildkitd.sock"
        credentials = localservices.registry_credentials(self.root)
        # This process pushes base images and reads what builds pushed, with the builder's pair.
        os.environ.update({"REGISTRY_USERNAME": credentials.username, "REGISTRY_PASSWORD": credentials.password})
        self.procs.append(localservices.start_registry(self.root, self.registry_addr, log_dir / "registry.log",
                                                       credentials))
        self.procs.append(localservices.start_buildkitd(self.root, self.buildkit_addr, self.registry_addr,
                                                        log_dir / "buildkitd.log"))
        images = {}
        if base_images:
            from tests.support.baseimages import default_cache_dir, ensure_base_images

            images = ensure_base_images(self.registry_addr, default_cache_dir(), self.buildkit_addr,
                                        images=("debian", "dockerfile-frontend", "sbom-scanner"))
        return images

    def buildkitd_pid(self) -> int | None:
        for proc in self.procs:
            if "buildkitd" in " ".join(proc.args):
                return proc.pid
        return None

    def prune_build_cache(self) -> None:
        """Empties buildkitd's local cache (ours alone), for cold builds."""
        subprocess.run(["buildctl", "--addr", self.buildkit_addr, "prune", "--all"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)

    def stop(self) -> None:
        from infra import localservices

        for proc in reversed(self.procs):
            localservices.stop(proc)
        self.procs.clear()


class Instance:
    """hubfly-builder started with `scripts/run` (registry + buildkitd reachable already, so it
    starts web, worker and beat), in a process group of its own that stop() ends."""

    def __init__(self, *, data_dir: Path, infra: Infra, callback_url: str, env: dict[str, str] | None = None,
                 tree: Path = REPO_ROOT):
        self.tree = tree  # the checkout whose scripts/run starts the instance
        self.data_dir = data_dir
        self.infra = infra
        self.callback_url = callback_url
        self.extra_env = dict(env or {})
        self.token = secrets.token_urlsafe(18)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.output: Path | None = None

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
        env.update({
            "DATA_DIR": str(self.data_dir),
            "LOG_DIR": str(self.data_dir / "log"),
            "PORT": str(self.port),
            "REGISTRY_URL": self.infra.registry_addr,
            "REGISTRY_INSECURE": "true",
            "REGISTRY_USERNAME": os.environ.get("REGISTRY_USERNAME", ""),
            "REGISTRY_PASSWORD": os.environ.get("REGISTRY_PASSWORD", ""),
            "BUILDKIT_ADDR": self.infra.buildkit_addr,
            "CALLBACK_URL": self.callback_url,
            "BUILDER_API_TOKENS": self.token,
            "GIT_ALLOWED_HOSTS": "127.0.0.1,localhost",
        })
        env.pop("CALLBACK_SECRET", None)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120) -> None:
        self.port = free_port()
        (self.data_dir / "log").mkdir(parents=True, exist_ok=True)
        self.output = self.data_dir / "log" / f"run-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            ["bash", str(self.tree / "scripts/run")], cwd=self.tree, env=self.environment(),
            stdin=subprocess.DEVNULL, stdout=open(self.output, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        api = self.api()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scripts/run exited with {self.proc.returncode}:\n{self.tail()}")
            text = self.output.read_text(errors="replace")
            if re.search(r"worker\.\d+\s*\|.*builds@.* ready\.", text) and self.web_pids():
                try:
                    if api.request("GET", "/healthz")[0] == 200:
                        api.close()
                        return
                except (OSError, http.client.HTTPException):
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"the instance did not become ready within {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        if self.output is None or not self.output.exists():
            return ""
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])

    def api(self) -> Api:
        return Api(self.port, self.token)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # honcho runs each process in a session of its own, and scripts/run's shell exits on
        # SIGTERM at once: wait for every process of the instance, not for the shell, or the
        # SIGKILL below lands on honcho while it still stops them and leaves orphans.
        family = {pid: cmdline(pid) for pid in descendants(self.proc.pid)}
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self.signal_all(signal.SIGCONT, list(family))  # a paused worker must be able to exit
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(cmdline(pid) == line for pid, line in family.items()):
            time.sleep(0.1)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid, line in family.items():
            if cmdline(pid) == line:  # still the same process: not a reused pid
                self.signal_all(signal.SIGKILL, [pid])
        self.proc.wait()

    # processes of the instance, found by what they run

    def _pids(self, predicate) -> list[int]:
        if self.proc is None:
            return []
        return [pid for pid in descendants(self.proc.pid) if predicate(cmdline(pid))]

    def web_pids(self) -> list[int]:
        return self._pids(lambda c: "gunicorn" in c and "hubfly." in c and not c.startswith(("/bin/sh", "sh ")))

    def worker_pids(self) -> list[int]:
        """The build worker's main process and its pool processes (not the git/buildctl they run)."""
        return self._pids(lambda c: is_worker(c) and "maintenance" not in c)

    def maintenance_pids(self) -> list[int]:
        """A separate maintenance worker, where the Procfile has one."""
        return self._pids(lambda c: is_worker(c) and "maintenance" in c)

    def beat_pids(self) -> list[int]:
        return self._pids(lambda c: "celery" in c and " beat" in c and not c.startswith(("/bin/sh", "sh ")))

    def signal_all(self, sig: int, pids: list[int] | None = None) -> None:
        for pid in pids if pids is not None else self.worker_pids() + self.maintenance_pids() + self.beat_pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def is_worker(line: str) -> bool:
    """A Celery worker's command line: `celery ... worker` or `python -m hubfly.worker`."""
    return (("celery" in line and " worker" in line) or "hubfly.worker" in line) \
        and not line.startswith(("/bin/sh", "sh "))


def rss_mb(pids: list[int]) -> float:
    return sum(status_kb(p, "VmRSS") for p in pids) / 1024


def pss_mb(pids: list[int]) -> float:
    return sum(pss_kb(p) for p in pids) / 1024


def peak_rss_mb(pids: list[int]) -> float:
    return sum(status_kb(p, "VmHWM") for p in pids) / 1024


class Sampler:
    """Samples a memory reading every `interval` seconds in a thread; `peak` is the largest."""

    def __init__(self, read, interval: float = 0.25):
        self.read, self.interval, self.peak = read, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.read())
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
