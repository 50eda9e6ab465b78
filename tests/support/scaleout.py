"""PostgreSQL and Redis from Debian's packages, started for the scale-out test run."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text(errors='replace')[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


def start_postgres(root: Path) -> tuple[str, subprocess.Popen]:
    """A throwaway cluster owned by the `postgres` user (PostgreSQL refuses to run as root)."""
    data = root / "pgdata"
    data.mkdir(parents=True)
    os.chmod(root.parent, 0o711)  # the postgres user must reach its directory
    shutil.chown(root, "postgres")
    shutil.chown(data, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "hubfly", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    port = _free_port()
    log = root / "postgres.log"
    argv = [*as_postgres, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"]
    proc = _launch_postgres(argv, port, log)
    for _ in range(50):
        made = subprocess.run([*as_postgres, "psql",
                               "-h", "127.0.0.1", "-p", str(port), "-U", "hubfly", "-d", "postgres",
                               "-c", "CREATE DATABASE hubfly"], capture_output=True)
        if made.returncode == 0:
            break
        time.sleep(0.2)
    return f"postgres://hubfly@127.0.0.1:{port}/hubfly", proc


def _launch_postgres(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(port, proc, "postgres", log)
    # The port opens before the server takes connections (it replays its log first).
    for _ in range(300):
        if subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0:
            break
        time.sleep(0.1)
    proc.restart_with = (argv, port, log)
    return proc


def restart_postgres(proc: subprocess.Popen, down_seconds: float) -> subprocess.Popen:
    """Stop the server for real (every connection is gone, new ones are refused while it is
    down), keep it down for `down_seconds`, start it again on the same port and data; the new
    server process is returned."""
    argv, port, log = proc.restart_with
    stop(proc)
    time.sleep(down_seconds)
    return _launch_postgres(argv, port, log)


def start_redis(root: Path) -> tuple[str, subprocess.Popen]:
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = root / "redis.log"
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    _wait_port(port, proc, "redis", log)
    return f"redis://127.0.0.1:{port}/0", proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
