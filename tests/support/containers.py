"""Running a pushed image with runc, the way a container runtime would, to check that it works.

The image's layers are fetched from the registry and unpacked into a root filesystem (OCI
whiteouts applied), and an OCI runtime config is made from the image config: the command
(Entrypoint + Cmd), environment, working directory and user. The container gets its own
network namespace holding only a loopback interface, so its port never clashes with anything
on the host; requests reach it by entering that namespace (nsenter) for one HTTP request.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from tests.support import registry

RUNC = "runc"
_HTTP_GET = """\
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    response = opener.open(sys.argv[1], timeout=5)
except urllib.error.HTTPError as exc:
    response = exc
sys.stdout.write(str(response.status if hasattr(response, "status") else response.code) + "\\n")
sys.stdout.flush()
sys.stdout.buffer.write(response.read())
"""


class ContainerError(AssertionError):
    pass


def unpack_image(registry_addr: str, repo: str, tag: str, rootfs: Path) -> dict:
    """Unpacks repo:tag into rootfs (which must not exist yet) and returns its image config."""
    manifest = registry.get_image_manifest(registry_addr, repo, tag)
    config = json.loads(registry.get_blob(registry_addr, repo, manifest["config"]["digest"]))
    rootfs.mkdir(parents=True)
    for layer in manifest["layers"]:
        _unpack_layer(registry_addr, repo, layer["digest"], rootfs)
    return config


@contextmanager
def image_rootfs(registry_addr: str, repo: str, tag: str, bundle: Path, base_cache: Path | None = None):
    """Yields (rootfs, image config) for repo:tag, made in bundle.

    With base_cache, the image's first layers (its base image: Debian and a runtime) are
    unpacked once into base_cache, keyed by their digests, and serve as the read-only lower
    directory of an overlay mount; only the layers above them are unpacked per run, into the
    mounted tree, so whiteouts and ownership are applied exactly as by a plain unpack. Making
    files is slow here, and base layers hold most of them.
    """
    manifest = registry.get_image_manifest(registry_addr, repo, tag)
    config = json.loads(registry.get_blob(registry_addr, repo, manifest["config"]["digest"]))
    digests = [layer["digest"] for layer in manifest["layers"]]
    rootfs = bundle / "rootfs"
    rootfs.mkdir()
    mounted, start = False, 0
    try:
        if base_cache is not None and len(digests) > 1:
            depth = min(BASE_LAYERS, len(digests) - 1)
            lower = _cached_base(registry_addr, repo, digests[:depth], base_cache)
            upper, work = bundle / "upper", bundle / "overlay-work"
            upper.mkdir()
            work.mkdir()
            options = f"lowerdir={lower},upperdir={upper},workdir={work}"
            mount = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)],
                                   capture_output=True, text=True)
            mounted = mount.returncode == 0  # else a plain unpack of every layer
            start = depth if mounted else 0
        for digest in digests[start:]:
            _unpack_layer(registry_addr, repo, digest, rootfs)
        yield rootfs, config
    finally:
        if mounted and subprocess.run(["umount", str(rootfs)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(rootfs)], capture_output=True)


BASE_LAYERS = 2
BASE_CACHE_DAYS = 7


def _cached_base(registry_addr: str, repo: str, digests: list[str], cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:32]
    target = cache / key
    if target.is_dir():
        os.utime(target)  # in use: not pruned
        return target
    for stale in cache.iterdir():  # bases no image has used for a week
        if stale.name != key and time.time() - stale.stat().st_mtime > BASE_CACHE_DAYS * 86400:
            shutil.rmtree(stale, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
    for digest in digests:
        _unpack_layer(registry_addr, repo, digest, partial)
    try:
        os.rename(partial, target)
    except OSError:  # another session made it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _unpack_layer(registry_addr: str, repo: str, digest: str, rootfs: Path) -> None:
    with tempfile.TemporaryFile() as blob:
        blob.write(registry.get_blob(registry_addr, repo, digest))
        blob.seek(0)
        with tarfile.open(fileobj=blob, mode="r:*") as tar:
            _apply_layer(tar, rootfs)


def _apply_layer(tar: tarfile.TarFile, rootfs: Path) -> None:
    root = str(rootfs.resolve())
    for member in tar:
        name = member.name.lstrip("/").removeprefix("./")
        if not name or name == ".":
            continue
        directory, _, base = name.rpartition("/")
        parent = _inside(root, directory)
        if base == ".wh..wh..opq":  # opaque directory: what lower layers put there is gone
            for entry in os.listdir(parent) if os.path.isdir(parent) else ():
                _remove(os.path.join(parent, entry))
            continue
        if base.startswith(".wh."):
            _remove(os.path.join(parent, base[len(".wh."):]))
            continue
        target = os.path.join(parent, base)
        if os.path.lexists(target) and not (member.isdir() and os.path.isdir(target) and not os.path.islink(target)):
            _remove(target)  # never write through a symlink a lower layer left there
        member.name = name
        tar.extract(member, root, set_attrs=True, numeric_owner=True, filter=_trusted_inside(root))


def _trusted_inside(root: str):
    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        _inside(root, member.name.rpartition("/")[0])
        if member.islnk():
            _inside(root, member.linkname)
        return member

    return check


def _inside(root: str, relative: str) -> str:
    """root/relative with symlinks resolved, refusing anything that leaves root."""
    path = os.path.realpath(os.path.join(root, relative)) if relative else root
    if path != root and not path.startswith(root + "/"):
        raise ContainerError(f"layer entry {relative!r} leads outside the root filesystem")
    return path


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _user_ids(rootfs: Path, user: str) -> tuple[int, int]:
    """uid and gid for the image config's User ("name", "uid", "name:group" or "uid:gid")."""
    name, _, group = (user or "0").partition(":")

    def entry(file: str, column: int, value: str) -> list[str] | None:
        for line in (rootfs / "etc" / file).read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[column] == value:
                return fields
        return None

    user_entry = entry("passwd", 2 if name.isdigit() else 0, name)
    if user_entry is None and not name.isdigit():
        raise ContainerError(f"user {name!r} is not in the image's /etc/passwd")
    uid = int(name) if name.isdigit() else int(user_entry[2])
    gid = int(user_entry[3]) if user_entry else 0
    if group:
        group_entry = None if group.isdigit() else entry("group", 0, group)
        if group_entry is None and not group.isdigit():
            raise ContainerError(f"group {group!r} is not in the image's /etc/group")
        gid = int(group) if group.isdigit() else int(group_entry[2])
    return uid, gid


def oci_config(image_config: dict, rootfs: Path, args: list[str] | None = None, env: dict | None = None) -> dict:
    config = image_config.get("config") or {}
    command = args or (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
    uid, gid = _user_ids(rootfs, config.get("User") or "0")
    environment = list(config.get("Env") or []) + [f"{k}={v}" for k, v in (env or {}).items()]
    bundle = rootfs.parent
    # `runc spec` writes its default config (namespaces, mounts, capabilities) into the bundle.
    subprocess.run([RUNC, "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": False}
    spec["hostname"] = "app"
    process = spec["process"]
    process.update(terminal=False, args=command, env=environment, cwd=config.get("WorkingDir") or "/",
                   user={"uid": uid, "gid": gid})
    # The default namespaces (pid, network, ipc, uts, mount) stay: a network namespace of its own
    # has only loopback, which runc brings up.
    return spec


class Container:
    def __init__(self, bundle: Path, container_id: str, log_path: Path, pid: int):
        self.bundle, self.id, self.log_path, self.pid = bundle, container_id, log_path, pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def http_get(self, port: int, path: str = "/", timeout: float = 60) -> tuple[int, str]:
        """(status, body) of GET http://127.0.0.1:port/path inside the container's network,
        retried until the server answers or the deadline passes."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running():
                raise ContainerError(f"the container exited before answering on port {port}:\n{self.log()}")
            result = subprocess.run(
                ["nsenter", f"--net=/proc/{self.pid}/ns/net", sys.executable, "-c", _HTTP_GET,
                 f"http://127.0.0.1:{port}{path}"],
                capture_output=True, timeout=30,
            )
            if result.returncode == 0:
                status, _, body = result.stdout.partition(b"\n")
                return int(status), body.decode(errors="replace")
            last = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
            time.sleep(0.2)
        raise ContainerError(f"nothing answered on port {port} within {timeout}s ({last}):\n{self.log()}")


@contextmanager
def run_image(registry_addr: str, repo: str, tag: str, *, work_dir: Path, base_cache: Path | None = None,
              env: dict | None = None):
    """Runs repo:tag detached under runc; yields (Container, rootfs, image config)."""
    bundle = Path(tempfile.mkdtemp(prefix="bundle-", dir=work_dir))
    state = bundle / "runc-state"
    container_id = f"hubfly-test-{uuid.uuid4().hex[:12]}"
    try:
        with image_rootfs(registry_addr, repo, tag, bundle, base_cache) as (rootfs, image_config):
            spec = oci_config(image_config, rootfs, env=env)
            (bundle / "config.json").write_text(json.dumps(spec, indent=1))
            log_path = bundle / "container.log"
            log_path.touch()
            log_path.chmod(0o666)  # an unprivileged server reopens /dev/stdout (Apache, nginx)
            pid_file = bundle / "container.pid"
            try:
                with open(log_path, "ab") as log:
                    result = subprocess.run(
                        [RUNC, "--root", str(state), "run", "--detach", "--bundle", str(bundle),
                         "--pid-file", str(pid_file), container_id],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=60,
                    )
                if result.returncode != 0:
                    raise ContainerError(f"runc run failed ({result.returncode}):\n{log_path.read_text(errors='replace')}")
                yield Container(bundle, container_id, log_path, int(pid_file.read_text())), rootfs, image_config
            finally:
                subprocess.run([RUNC, "--root", str(state), "kill", container_id, "KILL"], capture_output=True)
                subprocess.run([RUNC, "--root", str(state), "delete", "--force", container_id], capture_output=True)
    finally:
        if not _mounted_under(bundle):  # never remove files through a mount that stayed
            shutil.rmtree(bundle, ignore_errors=True)


def _mounted_under(path: Path) -> bool:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1].startswith(prefix) for line in mounts)
