"""Start the local infrastructure a build needs: a plain-HTTP registry and a rootful buildkitd.

Used by the dev Procfile (`python -m hubfly.localservices up ...`) and by the test fixtures.
Standard library only, so it runs before (and without) Django.
"""

import argparse
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

REGISTRY_START_SECONDS = 20.0
BUILDKITD_START_SECONDS = 60.0
POLL_SECONDS = 0.2

# Loopback addresses must not go through an HTTP proxy taken from the environment.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/local/bin:/usr/bin:/usr/sbin")
    if not found:
        raise ServiceError(f"{name} is not installed (scripts/install-buildkit.sh installs BuildKit)")
    return found


def registry_reachable(addr: str, timeout: float = 1.0) -> bool:
    try:
        with _direct.open(f"http://{addr}/v2/", timeout=timeout) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        # 401 is a registry that wants credentials: it is up.
        return exc.code == 401
    except (OSError, ValueError):
        return False


def buildkitd_reachable(addr: str, timeout: float = 5.0) -> bool:
    try:
        buildctl = find_binary("buildctl")
    except ServiceError:
        return False
    try:
        result = subprocess.run(
            [buildctl, "--addr", addr, "debug", "workers"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def registry_config(data_dir: Path, addr: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n"
        "  level: info\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {data_dir / 'registry'}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: {addr}\n"
    )


def buildkitd_config(data_dir: Path, registry_addr: str, mirror: bool = True) -> str:
    lines = [
        f'root = "{data_dir / "buildkit"}"',
        "",
        "[history]",
        "  maxAge = 172800",
        "  maxEntries = 50",
        "",
        "[worker.oci]",
        "  enabled = true",
        '  platforms = ["linux/amd64"]',
        '  snapshotter = "auto"',
        "  gc = true",
        # The build cache keeps 2 GB at least and is trimmed above 20 GB or when the disk runs low.
        '  reservedSpace = "2GB"',
        '  maxUsedSpace = "20GB"',
        '  minFreeSpace = "10%"',
        "",
        "[worker.containerd]",
        "  enabled = false",
        "",
        f'[registry."{registry_addr}"]',
        "  http = true",
        "  insecure = true",
    ]
    if mirror:
        # Official images (debian:bookworm-slim, docker/dockerfile:1) resolve from the local
        # registry, so builds need no route to Docker Hub.
        lines += ["", '[registry."docker.io"]', f'  mirrors = ["{registry_addr}"]']
    return "\n".join(lines) + "\n"


def _spawn(argv: list[str], log_path: Path | None) -> subprocess.Popen:
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
    else:
        log = subprocess.DEVNULL
    try:
        # A session of its own: stop() can signal the daemon and everything it started.
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()


def _wait_until(proc: subprocess.Popen, check, deadline_seconds: float, what: str, log_path: Path | None):
    """Waits for check() to pass; on any failure (or interrupt) the process is stopped."""
    try:
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if check():
                return
            if proc.poll() is not None:
                raise ServiceError(f"{what} exited with status {proc.returncode}{_log_tail(log_path)}")
            time.sleep(POLL_SECONDS)
        raise ServiceError(f"{what} did not become reachable within {deadline_seconds:.0f}s{_log_tail(log_path)}")
    except BaseException:
        stop(proc)
        raise


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n" + "\n".join(text)


def start_registry(data_dir: Path, addr: str = "127.0.0.1:5000", log_path: Path | None = None) -> subprocess.Popen:
    data_dir = Path(data_dir).resolve()
    (data_dir / "registry").mkdir(parents=True, exist_ok=True)
    config = data_dir / "registry.yml"
    config.write_text(registry_config(data_dir, addr))
    proc = _spawn([find_binary("docker-registry"), "serve", str(config)], log_path)
    _wait_until(proc, lambda: registry_reachable(addr), REGISTRY_START_SECONDS, f"registry on {addr}", log_path)
    return proc


def start_buildkitd(
    data_dir: Path, addr: str, registry_addr: str, log_path: Path | None = None, mirror: bool = True
) -> subprocess.Popen:
    data_dir = Path(data_dir).resolve()
    root = data_dir / "buildkit"
    root.mkdir(parents=True, exist_ok=True)
    config = data_dir / "buildkitd.toml"
    config.write_text(buildkitd_config(data_dir, registry_addr, mirror))
    socket_path = _unix_socket_path(addr)
    if socket_path is not None:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [find_binary("buildkitd"), "--config", str(config), "--addr", addr, "--root", str(root)]
    proc = _spawn(argv, log_path)
    _wait_until(proc, lambda: buildkitd_reachable(addr), BUILDKITD_START_SECONDS, f"buildkitd on {addr}", log_path)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _unix_socket_path(addr: str) -> Path | None:
    if addr.startswith("unix://"):
        return Path(addr[len("unix://") :])
    return None


def _is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def buildkit_addr_is_local(addr: str) -> bool:
    """True when we may start a buildkitd for addr: a unix socket or a loopback TCP port."""
    if _unix_socket_path(addr) is not None:
        return True
    parts = urlsplit(addr)
    return parts.scheme == "tcp" and _is_loopback_host(parts.hostname)


def registry_addr_is_local(addr: str) -> bool:
    return _is_loopback_host(urlsplit(f"//{addr}").hostname)


def ensure_services(data_dir: Path, registry_addr: str, buildkit_addr: str, log_dir: Path) -> list[subprocess.Popen]:
    data_dir, log_dir = Path(data_dir), Path(log_dir)
    started: list[subprocess.Popen] = []
    try:
        if not registry_reachable(registry_addr):
            if not registry_addr_is_local(registry_addr):
                raise ServiceError(f"registry {registry_addr} is not reachable and is not ours to start")
            started.append(start_registry(data_dir, registry_addr, log_dir / "registry.log"))
        if not buildkitd_reachable(buildkit_addr):
            if not buildkit_addr_is_local(buildkit_addr):
                raise ServiceError(f"buildkitd {buildkit_addr} is not reachable and is not ours to start")
            started.append(start_buildkitd(data_dir, buildkit_addr, registry_addr, log_dir / "buildkitd.log"))
    except BaseException:
        for proc in reversed(started):
            stop(proc)
        raise
    return started


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def _serve(args: argparse.Namespace) -> int:
    # Raised from the handler, so a signal during start-up still stops what was started so far
    # (a blocked signal mask would be inherited by the daemons).
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    started: list[subprocess.Popen] = []
    status = 0
    try:
        started = ensure_services(Path(args.data_dir), args.registry, args.buildkit_addr, Path(args.log_dir))
        print(
            f"localservices: registry {args.registry}, buildkitd {args.buildkit_addr} "
            f"({len(started)} started here)",
            flush=True,
        )
        while True:
            dead = [proc for proc in started if proc.poll() is not None]
            if dead:
                # A supervisor (honcho) should see us fail rather than keep a half-working set.
                print(f"localservices: {dead[0].args[0]} exited with {dead[0].returncode}", file=sys.stderr)
                status = 1
                break
            time.sleep(2)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for proc in reversed(started):
            stop(proc)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubfly.localservices")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the registry and buildkitd unless reachable, stay in the foreground")
    up.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    up.add_argument("--log-dir", default=os.environ.get("LOG_DIR", "./log"))
    up.add_argument("--registry", default=os.environ.get("REGISTRY_URL", "localhost:5000"))
    up.add_argument(
        "--buildkit-addr", default=os.environ.get("BUILDKIT_ADDR", "unix:///run/buildkit/buildkitd.sock")
    )
    args = parser.parse_args(argv)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
