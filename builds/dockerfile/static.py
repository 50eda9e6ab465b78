"""Static sites: a directory with index.html served as it is, and the static server stage that
JavaScript front ends (Vite, CRA, Angular...) are served from after their build.

The server is nginx with a configuration of our own (written into the image, so the image's
default site and entrypoint scripts do not matter), running as a non-root user on an
unprivileged port, logging to stdout/stderr, never serving dot-files (.env, .git...).
"""

import dataclasses

from builds.dockerfile import node
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import MARKER, Detection, Recipe
from builds.dockerfile.writer import Dockerfile

DEFAULT_PORT = 8080
WEB_ROOT = "/srv/www"
CONFIG_PATH = "/etc/hubfly/nginx.conf"
_NGINX_CONF = """\
worker_processes auto;
pid /tmp/nginx.pid;
error_log stderr warn;
events {
    worker_connections 1024;
}
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    server_tokens off;
    client_body_temp_path /tmp/nginx-client-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    gzip on;
    gzip_types text/plain text/css application/javascript application/json application/xml image/svg+xml;
    server {
        listen {port};
        root {root};
        index index.html;
        location ~ /\\.(?!well-known/) {
            return 404;
        }
        location / {
            try_files $uri $uri/ {fallback};
        }
    }
}
"""


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    """A plain site (index.html); asked for explicitly, also a JS project built into files."""
    if runtime == "static" and files.is_file("package.json"):
        built = node.detect(files)
        if built is not None and built.build and not built.fatal:
            det = Detection("static", MARKER, framework=built.framework or "static-frontend",
                            package_manager=built.package_manager, install=built.install, build=built.build,
                            port=DEFAULT_PORT, static_dir=built.static_dir or "dist", warnings=built.warnings)
            det.hints.update(built.hints, node_version_request=built.version_request,
                             node_version_source=built.version_source)
            return det
    if not files.is_file("index.html"):
        return None
    return Detection("static", MARKER, framework="static-site", port=DEFAULT_PORT, static_dir=".")


def nginx_conf(port: int, *, spa: bool) -> str:
    return (_NGINX_CONF.replace("{port}", str(port)).replace("{root}", WEB_ROOT)
            .replace("{fallback}", "/index.html" if spa else "=404"))


def server_stage(df: Dockerfile, image: str, port: int, *, from_stage: str | None, source: str) -> None:
    """The final stage: nginx serving `source` (a path in from_stage, or "." for the context)."""
    df.stage(image)
    df.create_user()
    df.file(CONFIG_PATH, nginx_conf(port, spa=from_stage is not None))
    if from_stage:
        df.copy(source, f"{WEB_ROOT}/", from_stage=from_stage)
    else:
        df.copy(".", f"{WEB_ROOT}/", exclude=(".git",))
    df.user()
    df.env(PORT=port)
    df.expose(port)
    df.raw('CMD ["nginx", "-c", "' + CONFIG_PATH + '", "-e", "stderr", "-g", "daemon off;"]')


def render(recipe: Recipe, files: RepoFiles) -> str:
    if recipe.build and recipe.hints.get("node_image"):
        # A JS project built with Node, then served: the Node template does both stages.
        as_node = dataclasses.replace(recipe, images={"build": recipe.hints["node_image"]},
                                      static_image=recipe.images["run"])
        return node.render(as_node, files)
    df = Dockerfile()
    server_stage(df, recipe.images["run"], recipe.port, from_stage=None, source=".")
    return df.text()
