"""Make every image docker-compose.yml uses, without Docker Hub, and load them into a Docker
engine (scripts/compose-test).

A registry and a buildkitd of our own (infra.localservices) build the images with BuildKit's
Dockerfile frontend; `FROM debian:bookworm-slim`, `python:3.11-slim-bookworm` and
`moby/buildkit:v0.32.2` resolve to the registry's docker.io mirror, where
tests/support/baseimages.py puts Debian and Python made from Debian's packages, and where the
BuildKit binaries of this machine's install are pushed as moby/buildkit. The images are honest
about what they are:

- hubfly-builder:latest and hubfly-buildkitd:v0.32.2: the project's Dockerfile and
  configs/buildkitd.Dockerfile as they are;
- registry:2.8: Debian's docker-registry (distribution 2.8) with the upstream image's config;
- postgres:15: Debian's PostgreSQL 15, with an entrypoint that does what the official one does
  with POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB on an empty data directory;
- rabbitmq:3.10: Debian's rabbitmq-server 3.10, with RABBITMQ_DEFAULT_USER / _PASS.

BuildKit's cache (kept under the given state directory) makes a rebuild cheap, and an image is
loaded into the engine (`docker load`) only when its id there differs.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

from infra import localservices
from tests.support import baseimages, registry

ROOT = Path(__file__).resolve().parents[2]
BUILDKIT_VERSION = "v0.32.2"

REGISTRY_DOCKERFILE = """\
FROM debian:bookworm-slim
RUN apt-get update \\
 && apt-get install -y --no-install-recommends docker-registry wget \\
 && rm -rf /var/lib/apt/lists/* \\
 && ln -s docker-registry /usr/bin/registry \\
 && dpkg-query -W -f '${Version}' docker-registry | grep -q '^2\\.8\\.' \\
 && mkdir -p /var/lib/registry
COPY config.yml /etc/docker/registry/config.yml
VOLUME ["/var/lib/registry"]
EXPOSE 5000
ENTRYPOINT ["registry"]
CMD ["serve", "/etc/docker/registry/config.yml"]
"""
# The upstream image's configuration (distribution-library-image's config-example.yml).
REGISTRY_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""

POSTGRES_DOCKERFILE = """\
FROM debian:bookworm-slim
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
RUN mkdir -p /etc/postgresql-common/createcluster.d \\
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends postgresql-15 \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /var/run/postgresql "$PGDATA" && chown postgres:postgres /var/run/postgresql "$PGDATA" \\
 && postgres --version | grep -q ' 15\\.'
COPY docker-entrypoint.sh /usr/local/bin/
VOLUME ["/var/lib/postgresql/data"]
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
"""
POSTGRES_ENTRYPOINT = """\
#!/bin/sh
# What the official image's entrypoint does for `postgres`: as root, own PGDATA and come back as
# postgres; on an empty PGDATA, initdb with POSTGRES_USER / POSTGRES_PASSWORD and create
# POSTGRES_DB; then run the server listening on every address, password auth from the network.
set -eu
if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user=${POSTGRES_USER:-postgres}
  pwfile=$(mktemp)
  printf '%s\\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}" > "$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  db=${POSTGRES_DB:-$user}
  if [ "$db" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 -q --username "$user" --dbname postgres -c "CREATE DATABASE \\"$db\\""
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
fi
exec "$@"
"""

RABBITMQ_DOCKERFILE = """\
FROM debian:bookworm-slim
ENV LANG=C.UTF-8
RUN apt-get update \\
 && apt-get install -y --no-install-recommends rabbitmq-server \\
 && rm -rf /var/lib/apt/lists/* \\
 && dpkg-query -W -f '${Version}' rabbitmq-server | grep -q '^3\\.10\\.'
COPY docker-entrypoint.sh /usr/local/bin/
VOLUME ["/var/lib/rabbitmq"]
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 5672
CMD ["rabbitmq-server"]
"""
RABBITMQ_ENTRYPOINT = """\
#!/bin/sh
# What the official image does with RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS: they become
# the default user (created on the first start), here through rabbitmq.conf.
set -eu
conf=/etc/rabbitmq/rabbitmq.conf
: > "$conf"
[ -n "${RABBITMQ_DEFAULT_USER:-}" ] && echo "default_user = $RABBITMQ_DEFAULT_USER" >> "$conf"
[ -n "${RABBITMQ_DEFAULT_PASS:-}" ] && echo "default_pass = $RABBITMQ_DEFAULT_PASS" >> "$conf"
echo "loopback_users = none" >> "$conf"
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq "$conf"
if [ "${1:-}" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
  # The server's own script as process 1 (Debian's wrapper in /usr/sbin would sit between it
  # and `docker stop`'s SIGTERM, which the script turns into a clean shutdown).
  shift
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq \
    /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
"""

# name -> (Dockerfile text or a repository file, extra files of the context, docker.io names)
RECIPES = {
    "hubfly-builder": ("Dockerfile", None, ("hubfly-builder:latest",)),
    "hubfly-buildkitd": ("configs/buildkitd.Dockerfile", None, (f"hubfly-buildkitd:{BUILDKIT_VERSION}",)),
    "registry": (REGISTRY_DOCKERFILE, {"config.yml": REGISTRY_CONFIG}, ("registry:2.8",)),
    "postgres": (POSTGRES_DOCKERFILE, {"docker-entrypoint.sh": POSTGRES_ENTRYPOINT}, ("postgres:15",)),
    "rabbitmq": (RABBITMQ_DOCKERFILE, {"docker-entrypoint.sh": RABBITMQ_ENTRYPOINT}, ("rabbitmq:3.10",)),
}
DEFAULT_IMAGES = ("hubfly-builder", "hubfly-buildkitd", "registry")
SCALE_IMAGES = ("postgres", "rabbitmq")


class ImageError(RuntimeError):
    pass


def make_images(state_dir: Path, docker: list[str], names=DEFAULT_IMAGES, log=print) -> dict[str, str]:
    """Builds the named images and loads into the engine `docker` (an argv prefix) each one it
    does not have with that id. Returns the image ids by name."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    registry_addr = f"127.0.0.1:{port}"
    buildkit_addr = f"unix://{state_dir / 'buildkitd.sock'}"
    reg = localservices.start_registry(state_dir, registry_addr, state_dir / "registry.log")
    credentials = localservices.registry_credentials(state_dir)
    saved = {k: os.environ.get(k) for k in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")}
    os.environ.update(REGISTRY_USERNAME=credentials.username, REGISTRY_PASSWORD=credentials.password)
    try:
        bk = localservices.start_buildkitd(state_dir, buildkit_addr, registry_addr, state_dir / "buildkitd.log")
        try:
            cache = baseimages.default_cache_dir()
            log("compose images: base images (debian, python) from Debian's packages")
            baseimages.ensure_base_images(registry_addr, cache, buildkit_addr, ("debian", "python"))
            _push_moby_buildkit(registry_addr, cache)
            ids = {}
            for name in names:
                log(f"compose images: {name}")
                ids[name] = _build_and_load(name, buildkit_addr, registry_addr, state_dir, docker)
            return ids
        finally:
            localservices.stop(bk)
    finally:
        localservices.stop(reg)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def debian_layer() -> dict:
    """The debian:bookworm-slim layer baseimages made (for the compose registry's mirror)."""
    return baseimages._debian_layer(baseimages.default_cache_dir())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _push_moby_buildkit(registry_addr: str, cache: Path) -> None:
    """moby/buildkit:v0.32.2 as Dockerfile's `COPY --from` reads it: this machine's BuildKit
    binaries (scripts/install-buildkit.sh builds them from the Go module proxy) on Debian."""
    binaries = {}
    for name in ("buildkitd", "buildctl"):
        path = Path(localservices.find_binary(name))
        binaries[name] = path
    version = subprocess.run([str(binaries["buildkitd"]), "--version"], capture_output=True, text=True).stdout
    if f" {BUILDKIT_VERSION} " not in version + " ":
        raise ImageError(f"BuildKit {BUILDKIT_VERSION} is wanted; this machine has {version.strip()}")
    key = baseimages._key("moby-buildkit", BUILDKIT_VERSION, *(p.stat().st_size for p in binaries.values()))

    def fill(tar) -> None:
        baseimages._add_dir(tar, "usr")
        baseimages._add_dir(tar, "usr/bin")
        for name, path in binaries.items():
            baseimages._add_bytes(tar, f"usr/bin/{name}", path.read_bytes(), 0o755)

    base = debian_layer()
    layer = baseimages._cached_layer(cache, "moby-buildkit", key, f"BuildKit {BUILDKIT_VERSION} binaries", fill)
    config = baseimages._image_config([base, layer], cmd=[])
    config["config"]["Entrypoint"] = ["buildkitd"]
    registry.push_image(registry_addr, f"{localservices.MIRROR_PREFIX}/moby/buildkit", (BUILDKIT_VERSION,),
                        config, [base, layer])


def _build_and_load(name: str, buildkit_addr: str, registry_addr: str, state_dir: Path, docker: list[str]) -> str:
    source, files, tags = RECIPES[name]
    with tempfile.TemporaryDirectory(dir=state_dir) as tmp:
        tmp = Path(tmp)
        if files is None:
            context, dockerfile_dir, filename = ROOT, ROOT / Path(source).parent, Path(source).name
        else:
            context = dockerfile_dir = tmp / "context"
            context.mkdir()
            (context / "Dockerfile").write_text(source)
            for file_name, text in files.items():
                (context / file_name).write_text(text)
                (context / file_name).chmod(0o755)
            filename = "Dockerfile"
        metadata, tarball = tmp / "metadata.json", tmp / "image.tar"
        names = ",".join(f"docker.io/library/{tag}" for tag in tags)
        argv = [
            localservices.find_binary("buildctl"), "--addr", buildkit_addr, "build", "--progress", "plain",
            "--frontend", "dockerfile.v0", "--opt", f"filename={filename}",
            "--local", f"context={context}", "--local", f"dockerfile={dockerfile_dir}",
            "--output", f"type=docker,name={names},dest={tarball}", "--metadata-file", str(metadata),
        ]  # fmt: skip
        with registry.docker_config(registry_addr) as config_dir:
            result = subprocess.run(argv, env={**os.environ, "DOCKER_CONFIG": config_dir},
                                    capture_output=True, text=True)
        with open(state_dir / "buildctl.log", "a") as handle:
            handle.write(result.stdout + result.stderr)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.splitlines()[-30:])
            raise ImageError(f"building {name} failed:\n{tail}")
        image_id = json.loads(metadata.read_text())["containerimage.config.digest"]
        have = subprocess.run([*docker, "image", "inspect", "--format", "{{.Id}}", tags[0]],
                              capture_output=True, text=True).stdout.strip()
        if have != image_id:
            subprocess.run([*docker, "load", "--quiet", "--input", str(tarball)], check=True, capture_output=True)
        return image_id
