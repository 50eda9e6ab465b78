"""The real web process for tests and benchmarks: the `web:` line of configs/Procfile (gunicorn
with uvicorn's ASGI worker), on a free loopback port, against the test database."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra import localservices

REPO_ROOT = Path(__file__).resolve().parents[2]


def procfile_command(name: str = "web") -> str:
    for line in (REPO_ROOT / "configs" / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(f"no {name}: line in configs/Procfile")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    def __init__(self, log_path: Path, *, workers: int = 1, env: dict | None = None, bind_all: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        full_env = {**os.environ, **(env or {}), "PORT": str(self.port), "WEB_WORKERS": str(workers),
                    "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        # Loopback only unless asked: the Procfile binds 0.0.0.0, and only the isolation tests
        # need that (to show a build cannot reach the API on any address of the host).
        command = procfile_command("web")
        if not bind_all:
            command = command.replace("0.0.0.0:", "127.0.0.1:")
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=REPO_ROOT, env=full_env,
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web process exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"web process did not answer:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def rss_bytes(self) -> int:
        """Resident memory of the gunicorn master and its workers, from /proc."""
        total = 0
        for pid in [self.proc.pid, *self.worker_pids()]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            total += int(match[1]) * 1024 if match else 0
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            localservices.stop(self.proc, timeout=30)
