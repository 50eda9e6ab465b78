"""The static server stage: nginx serving a directory, for plain sites (static.py) and for the
JavaScript front ends built with Node (node.py).

The configuration is our own (written into the image, so the image's default site and
entrypoint scripts do not matter): a non-root user on an unprivileged port, logging to
stdout/stderr, never serving dot-files (.env, .git...).
"""

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



def nginx_conf(port: int, *, spa: bool) -> str:
    return (_NGINX_CONF.replace("{port}", str(port)).replace("{root}", WEB_ROOT)
            .replace("{fallback}", "/index.html" if spa else "=404"))


def server_stage(df: Dockerfile, image: str, port: int, *, from_stage: str | None, source: str,
                 spa: bool | None = None) -> None:
    """The final stage: nginx serving `source` (a path in from_stage, or "." for the context).
    A single-page app (by default: built output) answers unknown paths with its index.html."""
    df.stage(image)
    df.create_user()
    df.file(CONFIG_PATH, nginx_conf(port, spa=from_stage is not None if spa is None else spa))
    if from_stage:
        df.copy(source, f"{WEB_ROOT}/", from_stage=from_stage)
    else:
        df.copy(".", f"{WEB_ROOT}/", exclude=(".git",))
    df.user()
    df.env(PORT=port)
    df.expose(port)
    df.raw('CMD ["nginx", "-c", "' + CONFIG_PATH + '", "-e", "stderr", "-g", "daemon off;"]')
