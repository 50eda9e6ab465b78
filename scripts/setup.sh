#!/usr/bin/env bash
# Installs what the service (and, with --dev, its tests) needs on a Debian machine:
# git, runc, a registry and debootstrap from Debian; buildkitd/buildctl built from the Go
# module proxy; Python dependencies in ./.venv. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# iptables, iproute2 and the CNI plugins give every RUN step a network of its own with our egress
# policy (infra/buildnet.py).
needs="git:git runc:runc docker-registry:docker-registry curl:curl iptables:iptables ip:iproute2 \
  /usr/lib/cni/bridge:containernetworking-plugins"
# Tests also make base images (debootstrap), run the scale-out suite on PostgreSQL + Redis and
# RabbitMQ, drive the admin in a headless browser, and run docker-compose.yml on a Docker engine
# of their own (scripts/compose-test); bench/apiwrk.py loads the API with wrk.
[ $dev = 1 ] && needs="$needs debootstrap:debootstrap redis-server:redis-server chromium:chromium /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core \
  /usr/lib/postgresql/15/bin/postgres:postgresql /usr/lib/rabbitmq/bin/rabbitmq-server:rabbitmq-server \
  /usr/sbin/dockerd:docker.io /usr/bin/docker-compose:docker-compose wrk:wrk"
missing=()
for pair in $needs; do
  binary=${pair%:*} package=${pair##*:}
  case "$binary" in
    /*) [ -e "$binary" ] || missing+=("$package") ;;
    *) command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing+=("$package") ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's package starts a system RabbitMQ on install. The tests run a node of their own (own
  # ports and epmd), so one installed here only for them is stopped and not started at boot.
  # The same for Debian's Docker engine: the compose test runs an engine of its own (own socket).
  if [ -d /run/systemd/system ]; then
    for unit in rabbitmq-server:rabbitmq-server docker.io:"docker.socket docker"; do
      if [[ " ${missing[*]} " == *" ${unit%%:*} "* ]]; then
        $sudo systemctl disable --now ${unit#*:} >/dev/null 2>&1 || true
      fi
    done
  fi
fi

if ! command -v buildctl >/dev/null 2>&1 || ! command -v buildkitd >/dev/null 2>&1; then
  bash scripts/install-buildkit.sh
fi

requirements=requirements.txt
[ $dev = 1 ] && requirements=requirements-dev.txt
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.installed-$(cat requirements.txt "$requirements" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "setup: installing Python packages from $requirements"
  .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
  touch "$stamp"
fi
