"""Rust (Cargo) binaries: built in release mode with the registry and target directory as cache
mounts (so a rebuild only recompiles what changed), run on slim Debian as a non-root user.

Fixes the Go original's broken plain-Rust template (facts 13.23): no cargo-chef recipe that
does not exist, and the source is copied before it is built.
"""

import re

from builds.dockerfile import versions
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, PROJECT, Detection, Recipe
from builds.dockerfile.writer import Cache, Dockerfile

DEFAULT_PORT = 8080
FRAMEWORKS = {"axum": 3000, "actix-web": 8080, "rocket": 8000, "warp": 3030, "poem": 3000}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_CACHES = (Cache("cargo-registry", "/usr/local/cargo/registry"), Cache("cargo-git", "/usr/local/cargo/git"))


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    if not files.is_file("Cargo.toml"):
        return None
    cargo = files.read_toml("Cargo.toml")
    det = Detection("rust", PROJECT, package_manager="cargo")
    if cargo is None:
        det.fatal = files.problems[-1] if files.problems else "Cargo.toml cannot be read"
        return det
    package = cargo.get("package") if isinstance(cargo.get("package"), dict) else {}
    deps = cargo.get("dependencies") if isinstance(cargo.get("dependencies"), dict) else {}
    det.framework = next((name for name in FRAMEWORKS if name in deps), None)
    det.version_request, det.version_source = _rust_version(files, package)
    det.hints["openssl"] = "openssl" in deps or "native-tls" in deps or "openssl-sys" in (files.read_text("Cargo.lock") or "")
    binary = _binary(files, cargo, package)
    if binary is None:
        det.fatal = "Cargo.toml builds no binary (no [[bin]], default-run or src/main.rs); set runCommand"
        return det
    if not _NAME.fullmatch(binary):
        det.fatal = f"the binary name {binary!r} has characters the generated Dockerfile cannot use; set runCommand"
        return det
    locked = " --locked" if files.is_file("Cargo.lock") else ""
    det.build = f"cargo build --release{locked}"
    det.run = "./app"
    det.hints["binary"] = binary
    det.confidence, det.port = ENTRY_POINT, _port(files) or FRAMEWORKS.get(det.framework, DEFAULT_PORT)
    return det


def _binary(files: RepoFiles, cargo: dict, package: dict) -> str | None:
    bins = [b.get("name") for b in cargo.get("bin", []) if isinstance(b, dict)] if isinstance(cargo.get("bin"), list) else []
    name = package.get("default-run") or (bins[0] if len(bins) == 1 else None)
    if not name and files.is_file("src/main.rs"):
        name = package.get("name")
    return name if isinstance(name, str) and name else None


def _rust_version(files: RepoFiles, package: dict) -> tuple[str | None, str | None]:
    toolchain = files.read_toml("rust-toolchain.toml") if files.is_file("rust-toolchain.toml") else None
    channel = ((toolchain or {}).get("toolchain") or {}).get("channel") if isinstance((toolchain or {}).get("toolchain"), dict) else None
    if not channel:
        channel = versions.version_file_line(files.read_text("rust-toolchain"))
        channel = re.sub(r"^channel\s*=\s*['\"]?([^'\"]*)['\"]?$", r"\1", channel or "")  # old TOML-less form
    if isinstance(channel, str) and re.match(r"^\d+\.\d+", channel):
        return f">={channel}", "rust-toolchain"
    tool = versions.tool_versions(files.read_text(".tool-versions"), ("rust",))
    if tool and re.match(r"^\d+\.\d+", tool):
        return f">={tool}", ".tool-versions"
    if isinstance(package.get("rust-version"), str):
        return f">={package['rust-version']}", "Cargo.toml rust-version"
    return None, None


def _port(files: RepoFiles) -> int | None:
    match = re.search(r"(?:0\.0\.0\.0|\[::\]):(\d{2,5})", files.read_text("src/main.rs") or "")
    return int(match.group(1)) if match and 0 < int(match.group(1)) < 65536 else None


def render(recipe: Recipe, files: RepoFiles) -> str:
    binary = recipe.hints.get("binary")
    df = Dockerfile(tolerant=recipe.hints.get("lock_fallback", ())).stage(recipe.images["build"], "build")
    df.workdir("/app")
    df.copy_source()
    if recipe.install:
        df.run(recipe.install, _CACHES)
    if recipe.build:
        # target/ is a cache mount, so the binary is copied out in the same step.
        target = Cache("cargo-target", "/app/target")
        copy_out = f" && cp target/release/{binary} /app/app" if binary else ""
        df.run(f"{recipe.build}{copy_out}", _CACHES + (target,))

    df.stage(recipe.images["run"])
    if recipe.hints.get("openssl"):
        df.run("apt-get update && apt-get install -y --no-install-recommends libssl3 && rm -rf /var/lib/apt/lists/*")
    df.create_user()
    df.copy("/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt", from_stage="build")
    df.copy("/app", "/app", from_stage="build", chown=True)  # before WORKDIR: see node.render
    df.workdir("/app")
    env = {"PORT": recipe.port}
    if recipe.framework == "rocket":
        env.update(ROCKET_ADDRESS="0.0.0.0", ROCKET_PORT=recipe.port)
    df.env(**env)
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()
