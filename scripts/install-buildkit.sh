#!/usr/bin/env bash
# Builds buildkitd, buildctl and the Dockerfile frontend from the Go module proxy.
#
# `go install` refuses BuildKit's module (its go.mod has exclude directives), so the module
# source is downloaded and built in place. Binaries land in $BIN_DIR (default /usr/local/bin
# for root, ~/.local/bin otherwise); the frontend binary goes to $BIN_DIR/../lib/hubfly/.
set -euo pipefail

VERSION=${BUILDKIT_VERSION:-v0.32.2}
if [ "$(id -u)" = 0 ]; then BIN_DIR=${BIN_DIR:-/usr/local/bin}; else BIN_DIR=${BIN_DIR:-$HOME/.local/bin}; fi
FRONTEND_DIR=${FRONTEND_DIR:-$BIN_DIR/../lib/hubfly}

have_version() {
  "$BIN_DIR/buildctl" --version 2>/dev/null | grep -q " $VERSION " &&
    "$BIN_DIR/buildkitd" --version 2>/dev/null | grep -q " $VERSION " &&
    [ -x "$FRONTEND_DIR/dockerfile-frontend" ]
}
if have_version; then
  echo "buildkit $VERSION already installed in $BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { echo "install-buildkit: Go is needed to build BuildKit" >&2; exit 1; }
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
echo "downloading github.com/moby/buildkit@$VERSION"
src=$(GOFLAGS=-mod=mod go mod download -json "github.com/moby/buildkit@$VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$src" buildkit
chmod -R u+w buildkit
cd buildkit
mkdir -p "$BIN_DIR" "$FRONTEND_DIR"
echo "building buildkitd and buildctl $VERSION (a few minutes the first time)"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
ldflags="-X github.com/moby/buildkit/version.Version=$VERSION"
go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/buildkitd" ./cmd/buildkitd
go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/buildctl" ./cmd/buildctl
go build -trimpath -o "$FRONTEND_DIR/dockerfile-frontend" ./frontend/dockerfile/cmd/dockerfile-frontend
"$BIN_DIR/buildctl" --version
