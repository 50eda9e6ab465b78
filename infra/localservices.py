"""Start the local infrastructure a build needs: a plain-HTTP registry that only the builder
may write to, and a rootful buildkitd whose RUN steps get a network of their own.

Used by `scripts/run` (`python -m infra.localservices up ...`), the test fixtures and the
benchmarks. Standard library and bcrypt only, so it runs before (and without) Django.

- The registry asks for credentials on every request (htpasswd). They come from
  REGISTRY_USERNAME/REGISTRY_PASSWORD, or are generated once into DATA_DIR/registry-credentials
  (0600), where the service's settings find them too.
- Official images (`FROM debian:...`) resolve through the registry's `hubfly-mirror/docker.io/`
  namespace: a tenant's images are `<user>/<project>` (two components, three for the build
  cache), so no job's push can ever land on an image other jobs pull.
- buildkitd runs RUN steps on a CNI bridge with the egress policy of infra.buildnet, installed
  before it starts and removed when it stops.
"""

import argparse
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt

from infra import buildnet, probes

MIRROR_PREFIX = "hubfly-mirror/docker.io"
REGISTRY_START_SECONDS = 20.0
BUILDKITD_START_SECONDS = 60.0
POLL_SECONDS = 0.2


class ServiceError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/local/bin:/usr/bin:/usr/sbin")
    if not found:
        raise ServiceError(f"{name} is not installed (scripts/install-buildkit.sh installs BuildKit)")
    return found


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def registry_credentials(data_dir: Path) -> Credentials:
    """REGISTRY_USERNAME/REGISTRY_PASSWORD, else the pair generated once into DATA_DIR."""
    username, password = os.environ.get("REGISTRY_USERNAME", ""), os.environ.get("REGISTRY_PASSWORD", "")
    if username and password:
        return Credentials(username, password)
    path = Path(data_dir) / "registry-credentials"
    try:
        user, _, secret = path.read_text().strip().partition(":")
        if user and secret:
            return Credentials(user, secret)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    generated = Credentials("hubfly", secrets.token_urlsafe(24))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race
        return registry_credentials(data_dir)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{generated.username}:{generated.password}\n")
    return generated


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def registry_reachable(addr: str, timeout: float = 1.0) -> bool:
    try:
        return probes.registry(f"http://{addr}", timeout=timeout, direct=True) == "ok"
    except (OSError, ValueError):
        return False


def buildkitd_reachable(addr: str, timeout: float = 5.0) -> bool:
    try:
        probes.buildkit_workers(find_binary("buildctl"), addr, timeout=timeout)
    except (ServiceError, probes.ProbeFailed, subprocess.TimeoutExpired, OSError, ValueError):
        return False
    return True


def registry_config(data_dir: Path, addr: str, htpasswd: Path | None = None) -> str:
    text = (
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
    if htpasswd is not None:
        text += f"auth:\n  htpasswd:\n    realm: hubfly-registry\n    path: {htpasswd}\n"
    return text


def htpasswd_line(credentials: Credentials) -> str:
    hashed = bcrypt.hashpw(credentials.password.encode(), bcrypt.gensalt(rounds=10)).decode()
    return f"{credentials.username}:{hashed}\n"


# The compose stack's buildkitd (docker-compose.yml): its registry on the compose network, the
# image's CNI plugins and the network state its entrypoint writes (configs/buildkitd-entrypoint.sh).
COMPOSE_BUILDKITD_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "buildkitd.toml"
COMPOSE_REGISTRY = "registry:5000"
COMPOSE_CNI = ("/var/lib/buildkit/buildnet/cni.conflist", "/usr/lib/cni")


def buildkitd_config(registry_addr: str, *, root: Path | None = None, mirror: bool = True,
                     cni: tuple[str, str] | None = None) -> str:
    """The one buildkitd configuration, for a local buildkitd (with its root and this host's
    build network) and for compose (configs/buildkitd.toml is this function's output,
    `python -m infra.localservices buildkitd-config > configs/buildkitd.toml`; a test checks
    that it is current). `cni`: the CNI configuration file and plugin directory of the network
    RUN steps get."""
    lines = [f'root = "{root}"', ""] if root is not None else []
    lines += [
        "[history]",
        "  maxAge = 172800",
        "  maxEntries = 50",
        "",
        "[worker.oci]",
        "  enabled = true",
    ]
    if cni is not None:
        # RUN steps in network namespaces of their own on our bridge; a small pool of ready
        # namespaces keeps the cost per step low (measured in bench/RESULTS.md).
        lines += [
            '  networkMode = "cni"',
            f'  cniConfigPath = "{cni[0]}"',
            f'  cniBinaryPath = "{cni[1]}"',
            "  cniPoolSize = 4",
        ]
    lines += [
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
        # registry's mirror namespace, so builds need no route to Docker Hub.
        lines += ["", '[registry."docker.io"]', f'  mirrors = ["{registry_addr}/{MIRROR_PREFIX}"]']
    return "\n".join(lines) + "\n"


def compose_buildkitd_config() -> str:
    header = ("# buildkitd configuration of docker-compose.yml, made by infra.localservices.buildkitd_config\n"
              "# (`python -m infra.localservices buildkitd-config > configs/buildkitd.toml`): the local\n"
              "# buildkitd gets the same, with its own paths. RUN steps get a network namespace of their own\n"
              "# on a CNI bridge whose egress policy the entrypoint installs (infra/buildnet.py).\n")
    return header + buildkitd_config(COMPOSE_REGISTRY, mirror=False, cni=COMPOSE_CNI)


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


def start_registry(
    data_dir: Path, addr: str = "127.0.0.1:5000", log_path: Path | None = None, credentials: Credentials | None = None
) -> subprocess.Popen:
    """A registry on addr that answers only requests with the credentials (default:
    registry_credentials(data_dir))."""
    data_dir = Path(data_dir).resolve()
    (data_dir / "registry").mkdir(parents=True, exist_ok=True)
    credentials = credentials or registry_credentials(data_dir)
    htpasswd = data_dir / "registry.htpasswd"
    _write_private(htpasswd, htpasswd_line(credentials))
    config = data_dir / "registry.yml"
    config.write_text(registry_config(data_dir, addr, htpasswd))
    proc = _spawn([find_binary("docker-registry"), "serve", str(config)], log_path)
    _wait_until(proc, lambda: registry_reachable(addr), REGISTRY_START_SECONDS, f"registry on {addr}", log_path)
    return proc


def start_buildkitd(
    data_dir: Path, addr: str, registry_addr: str, log_path: Path | None = None, mirror: bool = True,
    network: "buildnet.BuildNetwork | None | bool" = True,
) -> subprocess.Popen:
    """buildkitd on addr. network=True (the default) gives RUN steps the build network that
    BUILD_* configure (infra.buildnet.from_environment), applied before the daemon starts and
    removed by stop(); False runs them on the host's network (only for tests that need it)."""
    data_dir = Path(data_dir).resolve()
    root = data_dir / "buildkit"
    root.mkdir(parents=True, exist_ok=True)
    if network is True:
        network = buildnet.from_environment(data_dir / "buildnet")
    network = network or None
    if network is not None:
        network.apply()
    config = data_dir / "buildkitd.toml"
    cni = (str(network.config_path), buildnet.cni_binary_dir()) if network is not None else None
    config.write_text(buildkitd_config(registry_addr, root=root, mirror=mirror, cni=cni))
    socket_path = _unix_socket_path(addr)
    if socket_path is not None:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [find_binary("buildkitd"), "--config", str(config), "--addr", addr, "--root", str(root)]
    try:
        proc = _spawn(argv, log_path)
    except BaseException:
        if network is not None:
            network.remove()
        raise
    proc.build_network = network
    proc.buildkit_root = root
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
            break
        except subprocess.TimeoutExpired:
            continue
    network = getattr(proc, "build_network", None)
    if network is not None:
        # The policy and the bridge go with the daemon that used them, and so do the network
        # namespaces of its pool that a daemon stopped in a hurry left mounted.
        proc.build_network = None
        network.remove()
        for namespace in (Path(proc.buildkit_root) / "net" / "cni").glob("*"):
            subprocess.run(["umount", str(namespace)], capture_output=True)
            namespace.unlink(missing_ok=True)


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
            started.append(start_registry(data_dir, registry_addr, log_dir / "registry.log",
                                          registry_credentials(data_dir)))
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
    parser = argparse.ArgumentParser(prog="python -m infra.localservices")
    # Defaults from the variables the service reads too (hubfly/settings.py), so `up` starts what
    # the service will look for; the launcher runs without Django, so it reads them itself.
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the registry and buildkitd unless reachable, stay in the foreground")
    up.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    up.add_argument("--log-dir", default=os.environ.get("LOG_DIR", "./log"))
    up.add_argument("--registry", default=os.environ.get("REGISTRY_URL", "localhost:5000"))
    up.add_argument(
        "--buildkit-addr", default=os.environ.get("BUILDKIT_ADDR", "unix:///run/buildkit/buildkitd.sock")
    )
    auth = sub.add_parser("registry-auth", help="write the registry's htpasswd file for the builder's credentials "
                          "(REGISTRY_USERNAME/REGISTRY_PASSWORD, or generated once into the data directory)")
    auth.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    auth.add_argument("--htpasswd", required=True, help="where the registry reads its htpasswd file")
    sub.add_parser("buildkitd-config", help="print the compose stack's buildkitd configuration "
                   "(configs/buildkitd.toml)")
    args = parser.parse_args(argv)
    if args.command == "buildkitd-config":
        print(compose_buildkitd_config(), end="")
        return 0
    if args.command == "registry-auth":
        path = Path(args.htpasswd)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, htpasswd_line(registry_credentials(Path(args.data_dir))))
        # The registry reads it as another user: readable, but only the hash is in it.
        path.chmod(0o644)
        return 0
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
