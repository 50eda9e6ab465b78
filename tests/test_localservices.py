"""The local registry and buildkitd start, build real Dockerfiles, push, and enforce limits.

No Django here: run alone with `python -m pytest -p no:django tests/test_localservices.py`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import localservices
from tests.support import baseimages, registry

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_SECONDS = 600
MEMORY_LIMIT_BYTES = 64 * 1024 * 1024
READ_MEMORY_LIMIT = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
READ_CPU_LIMIT = (
    "cat /sys/fs/cgroup/cpu.max 2>/dev/null"
    " || echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, deadline_seconds: float, what: str) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("services")
    registry_addr = f"127.0.0.1:{free_port()}"
    buildkit_addr = f"unix://{data_dir}/run/buildkitd.sock"
    started = []
    try:
        started.append(localservices.start_registry(data_dir, registry_addr, data_dir / "registry.log"))
        started.append(
            localservices.start_buildkitd(data_dir, buildkit_addr, registry_addr, data_dir / "buildkitd.log")
        )
        images = baseimages.ensure_base_images(
            registry_addr,
            baseimages.default_cache_dir(),
            buildkit_addr,
            images=("debian", "dockerfile-frontend", "node", "python", "golang"),
        )
        yield {"registry": registry_addr, "buildkit": buildkit_addr, "images": images, "data_dir": data_dir}
    finally:
        for proc in reversed(started):
            localservices.stop(proc)


def buildctl_build(services, context: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [
        "buildctl", "--addr", services["buildkit"], "build", "--progress", "plain",
        "--frontend", "dockerfile.v0", "--local", f"context={context}", "--local", f"dockerfile={context}",
        *extra,
    ]  # fmt: skip
    with registry.docker_config(services["registry"]) as config_dir:
        env = {**os.environ, "DOCKER_CONFIG": config_dir}
        return subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS, env=env)


def make_context(path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (path / name).write_text(content)
    return path


def test_registry_is_unreachable_after_stop(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    proc = localservices.start_registry(tmp_path, addr)
    assert localservices.registry_reachable(addr)
    localservices.stop(proc)
    assert proc.poll() is not None
    assert not localservices.registry_reachable(addr)


def test_build_from_debian_is_pushed_with_the_digest_the_registry_reports(services, tmp_path):
    context = make_context(
        tmp_path / "app",
        "FROM debian:bookworm-slim\nRUN echo built > /built.txt\nCOPY hello.txt /hello.txt\n",
        {"hello.txt": "hello\n"},
    )
    image = f"{services['registry']}/test/app:job-1"
    metadata = tmp_path / "metadata.json"
    result = buildctl_build(
        services, context, "--output", f"type=image,name={image},push=true", "--metadata-file", str(metadata)
    )
    assert result.returncode == 0, result.stderr
    pushed_digest = json.loads(metadata.read_text())["containerimage.digest"]
    assert registry.manifest_digest(services["registry"], "test/app", "job-1") == pushed_digest
    config = registry.get_image_config(services["registry"], "test/app", "job-1")
    base_repo, base_tags = baseimages.mirror_repository("debian")
    base_config = registry.get_image_config(services["registry"], base_repo, base_tags[0])
    assert config["rootfs"]["diff_ids"][:1] == base_config["rootfs"]["diff_ids"]
    assert len(config["rootfs"]["diff_ids"]) == 3


def test_syntax_directive_builds_with_the_local_frontend_image(services, tmp_path):
    context = make_context(
        tmp_path / "app",
        "# syntax=docker/dockerfile:1\nFROM debian:bookworm-slim AS base\n"
        "RUN <<EOF\nmkdir /out\necho from-heredoc > /out/result\nEOF\n"
        "FROM scratch\nCOPY --from=base /out /\n",
    )
    out = tmp_path / "out"
    result = buildctl_build(services, context, "--output", f"type=local,dest={out}")
    assert result.returncode == 0, result.stderr
    assert "docker.io/docker/dockerfile:1" in result.stderr
    assert (out / "result").read_text() == "from-heredoc\n"


def test_memory_and_cpu_options_limit_every_run_step(services, tmp_path):
    context = make_context(
        tmp_path / "app",
        "FROM debian:bookworm-slim AS base\n"
        f"RUN mkdir /out && ({READ_MEMORY_LIMIT}) > /out/memory\n"
        f"RUN ({READ_CPU_LIMIT}) > /out/cpu\n"
        "FROM scratch\nCOPY --from=base /out /\n",
    )
    out = tmp_path / "out"
    result = buildctl_build(
        services, context,
        "--opt", f"memory={MEMORY_LIMIT_BYTES}", "--opt", "cpuquota=50000", "--opt", "cpuperiod=100000",
        "--output", f"type=local,dest={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "memory").read_text().strip() == str(MEMORY_LIMIT_BYTES)
    assert (out / "cpu").read_text().split() == ["50000", "100000"]


def test_run_step_using_more_than_the_memory_limit_fails(services, tmp_path):
    context = make_context(
        tmp_path / "app", "FROM debian:bookworm-slim\nRUN dd if=/dev/zero of=/dev/null bs=256M count=1\n"
    )
    result = buildctl_build(services, context, "--opt", f"memory={MEMORY_LIMIT_BYTES}")
    assert result.returncode != 0
    assert "exit code: 137" in result.stderr, result.stderr[-3000:]


def test_runtime_images_hold_the_versions_they_are_named_after(services, tmp_path):
    checks = {
        "node:20-bookworm-slim": "node --version | grep -q '^v20[.]' && npm --version && corepack --version",
        "python:3.11-slim-bookworm": "python --version | grep -q '^Python 3[.]11[.]' && pip --version"
        " && python -m venv /tmp/venv",
        "golang:1.23-bookworm": "go version | grep -q ' go1[.]23[.]'",
    }
    for name, command in checks.items():
        context = make_context(tmp_path / name.split(":")[0], f"FROM {name}\nRUN {command}\n")
        result = buildctl_build(services, context)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"


def test_base_images_rerun_from_cache_keeps_digests(services):
    repo, tags = baseimages.mirror_repository("debian")
    before = registry.manifest_digest(services["registry"], repo, tags[0])
    started = time.monotonic()
    baseimages.ensure_base_images(services["registry"], baseimages.default_cache_dir(), images=("debian",))
    assert time.monotonic() - started < 10
    assert registry.manifest_digest(services["registry"], repo, tags[0]) == before
    assert registry.manifest_digest(services["registry"], repo, tags[1]) == before


def test_ensure_services_starts_only_what_is_not_running(services, tmp_path):
    buildkit_addr = f"unix://{tmp_path}/run/buildkitd.sock"
    started = localservices.ensure_services(tmp_path, services["registry"], buildkit_addr, tmp_path / "log")
    try:
        assert [Path(proc.args[0]).name for proc in started] == ["buildkitd"]
        assert localservices.buildkitd_reachable(buildkit_addr)
    finally:
        for proc in started:
            localservices.stop(proc)
    assert not localservices.buildkitd_reachable(buildkit_addr)


def test_up_command_runs_until_sigterm_and_stops_what_it_started(tmp_path):
    registry_addr = f"127.0.0.1:{free_port()}"
    buildkit_addr = f"unix://{tmp_path}/run/buildkitd.sock"
    argv = [
        sys.executable, "-m", "infra.localservices", "up", "--data-dir", str(tmp_path / "data"),
        "--log-dir", str(tmp_path / "log"), "--registry", registry_addr, "--buildkit-addr", buildkit_addr,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: localservices.registry_reachable(registry_addr), 30, "the registry")
        wait_for(lambda: localservices.buildkitd_reachable(buildkit_addr), 90, "buildkitd")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not localservices.registry_reachable(registry_addr)
    assert not localservices.buildkitd_reachable(buildkit_addr)


def test_registry_auth_writes_an_htpasswd_for_the_generated_credentials(tmp_path):
    import bcrypt

    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")}
    htpasswd = tmp_path / "auth" / "htpasswd"
    argv = [sys.executable, "-m", "infra.localservices", "registry-auth", "--data-dir", str(tmp_path / "data"),
            "--htpasswd", str(htpasswd)]
    subprocess.run(argv, cwd=REPO_ROOT, env=env, check=True)
    credentials = (tmp_path / "data" / "registry-credentials")
    assert credentials.stat().st_mode & 0o777 == 0o600
    username, _, password = credentials.read_text().strip().partition(":")
    user, _, hashed = htpasswd.read_text().strip().partition(":")
    assert user == username and bcrypt.checkpw(password.encode(), hashed.encode())
    # Run again: the same credentials, not new ones.
    subprocess.run(argv, cwd=REPO_ROOT, env=env, check=True)
    assert credentials.read_text().strip() == f"{username}:{password}"


def test_localservices_loads_neither_django_nor_celery():
    """It waits beside the service for as long as the service runs (scripts/run): the Celery app
    the hubfly package used to load on import was ~15 MB of it."""
    probe = "import sys, infra.localservices; print(sorted({'django', 'celery', 'kombu'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "hubfly.settings"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_compose_buildkitd_config_is_the_one_the_local_buildkitd_gets():
    """One buildkitd configuration: configs/buildkitd.toml is buildkitd_config's output for the
    compose network, and differs from a local buildkitd's only in paths and the registry."""
    made = subprocess.run([sys.executable, "-m", "infra.localservices", "buildkitd-config"],
                          capture_output=True, text=True, check=True).stdout
    assert made == localservices.COMPOSE_BUILDKITD_CONFIG.read_text(), (
        "configs/buildkitd.toml is not current: python -m infra.localservices buildkitd-config > configs/buildkitd.toml")
    local = localservices.buildkitd_config("127.0.0.1:5000", root=Path("/tmp/root"), mirror=False,
                                           cni=("/tmp/cni.conflist", "/tmp/cni"))
    assert _settings_of(made) == _settings_of(local)


def _settings_of(config: str) -> list[str]:
    """A buildkitd configuration's lines without comments, paths and the registry's section."""
    return [line for line in config.splitlines() if line.strip() and not line.startswith("#")
            and "/" not in line and "registry" not in line and "5000" not in line]
