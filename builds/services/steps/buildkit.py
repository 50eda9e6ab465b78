"""Building and pushing with buildctl, and reading what happened from its output.

Non-secret `env` entries become build args; secrets reach `RUN --mount=type=secret` through
`--secret id=KEY,env=VAR` with the value only in buildctl's environment, never in argv.
Resource limits are BuildKit's per-build cgroup options, hard limits on every RUN step.
buildctl authenticates to the registry with a docker config file of the builder's own
(REGISTRY_USERNAME/REGISTRY_PASSWORD), never readable by the build. Each build carries a source
policy (builds.services.steps.egress) and, for a build without a network, BuildKit's
`force-network-mode=none`.

Every image carries the OCI annotations and labels of `image_metadata` (source without
credentials, revision, created, title, job id) and, unless the job opted out, SLSA provenance
and an SBOM as attestations (ATTEST_PROVENANCE, ATTEST_SBOM, SBOM_SCANNER_IMAGE).

The image is pushed by digest only (`push-by-digest=true`): buildctl never writes a tag. The
attempt that still holds the job's lease writes it afterwards (builds.services.steps.registry), so a
build that outlived its lease cannot move a tag another attempt wrote.
"""

import base64
import csv
import io
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from builds import errors
from builds.errors import TransientError, UserError
from builds.services.steps import egress

_STEP = re.compile(r"^#(\d+) (\[[^\]]+\] .*)$")
_STEP_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")
# A project's first build: there is no cache manifest to import yet. buildctl reports it as an
# ERROR line and carries on; it is expected, so the log says what it means instead.
_NO_CACHE_YET = re.compile(r"^#(\d+) ERROR: failed to configure registry cache importer: .*\bnot found\b")
_STEP_DONE = re.compile(r"^#(\d+) (DONE|CACHED)\b")
_VERTEX = re.compile(r"^#(\d+) (\S.*)$")
_VERTEX_DONE = re.compile(r"^#(\d+) DONE (\d+(?:\.\d+)?)s$")
_VERTEX_CACHED = re.compile(r"^#(\d+) CACHED$")
# A Dockerfile instruction's vertex: "[2/3] RUN ..." or "[build 2/5] COPY ...".
_DOCKERFILE_STEP = re.compile(r"^\[(?:[^\]\s]+ )?\d+/\d+\] ")
_EXPORT = "exporting to image"
# The scanner `attest:sbom` runs when SBOM_SCANNER_IMAGE names none (BuildKit's default).
DEFAULT_SBOM_SCANNER = "docker/buildkit-syft-scanner:stable-1"
_CPU_PERIOD = 100_000


@dataclass
class BuildRequest:
    context_dir: Path
    dockerfile_dir: Path
    dockerfile_name: str
    repository: str  # <registry>/<path>, without a tag: the image is pushed by digest
    cache_ref: str | None
    metadata_file: Path
    build_args: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # id -> value
    memory_mb: int | None = None
    cpu: float | None = None
    # Namespaces RUN --mount=type=cache ids, so one tenant's build can never read or plant
    # files in another tenant's package caches.
    cache_namespace: str | None = None
    generated: bool = False
    network_none: bool = False
    source_policy_file: Path | None = None
    attestations: bool = True
    # OCI annotations of the manifest (and of the index attestations make), and image labels.
    metadata: dict[str, str] = field(default_factory=dict)
    # Recorded in the provenance (BuildKit's vcs:source / vcs:revision frontend options).
    vcs_source: str = ""
    vcs_revision: str = ""


def image_metadata(*, source: str, revision: str, created: str, title: str, job_id: str) -> dict[str, str]:
    """The annotations and labels every image gets; `source` must be free of credentials."""
    return {
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.title": title,
        JOB_ID_KEY: job_id,
    }


JOB_ID_KEY = "dev.hubfly.builder.job-id"


def _csv_field(items: list[str]) -> str:
    """buildctl reads --output as one CSV record: a value with a comma or quote must be quoted."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(items)
    return out.getvalue()


def _attest_opts(req: BuildRequest) -> list[str]:
    if not req.attestations:
        return []
    argv = []
    if settings.ATTEST_PROVENANCE != "off":
        argv += ["--opt", f"attest:provenance=mode={settings.ATTEST_PROVENANCE}"]
    if settings.ATTEST_SBOM:
        generator = f"generator={settings.SBOM_SCANNER_IMAGE}" if settings.SBOM_SCANNER_IMAGE else ""
        argv += ["--opt", f"attest:sbom={generator}"]
    return argv


def makes_index(req: BuildRequest) -> bool:
    """Whether the push is an index (attestation manifests ride beside the image's)."""
    return bool(_attest_opts(req))


def command(req: BuildRequest) -> tuple[list[str], dict[str, str]]:
    """The buildctl argv and the extra environment that carries secret values."""
    insecure = ",registry.insecure=true" if settings.REGISTRY_INSECURE else ""
    output = ["type=image", f"name={req.repository}", "push=true", "push-by-digest=true"]
    if settings.REGISTRY_INSECURE:
        output.append("registry.insecure=true")
    for key, value in req.metadata.items():
        output.append(f"annotation.{key}={value}")
        if makes_index(req):
            output.append(f"annotation-index.{key}={value}")
    argv = [
        settings.BUILDCTL_BIN, "--addr", settings.BUILDKIT_ADDR, "build",
        "--frontend", "dockerfile.v0",
        "--local", f"context={req.context_dir}",
        "--local", f"dockerfile={req.dockerfile_dir}",
        "--opt", f"filename={req.dockerfile_name}",
        "--progress", "plain",
        "--output", _csv_field(output),
        "--metadata-file", str(req.metadata_file),
    ]
    for key, value in req.metadata.items():
        argv += ["--opt", f"label:{key}={value}"]
    argv += _attest_opts(req)
    if req.vcs_source:
        argv += ["--opt", f"vcs:source={req.vcs_source}"]
    if req.vcs_revision:
        argv += ["--opt", f"vcs:revision={req.vcs_revision}"]
    for key, value in sorted(req.build_args.items()):
        argv += ["--opt", f"build-arg:{key}={value}"]
    if req.cache_namespace:
        argv += ["--opt", f"build-arg:BUILDKIT_CACHE_MOUNT_NS={req.cache_namespace}"]
        if req.generated:
            argv += ["--opt", f"build-arg:HUBFLY_CACHE_ID={req.cache_namespace}"]
    env = {}
    for index, (key, value) in enumerate(sorted(req.secrets.items())):
        var = f"HUBFLY_SECRET_{index}"
        env[var] = value
        argv += ["--secret", f"id={key},env={var}"]
    if req.network_none:
        argv += ["--opt", "force-network-mode=none"]
    if req.source_policy_file:
        argv += ["--source-policy-file", str(req.source_policy_file)]
    if req.memory_mb:
        limit = req.memory_mb * 1024 * 1024
        argv += ["--opt", f"memory={limit}", "--opt", f"memswap={limit}"]
    if req.cpu:
        argv += ["--opt", f"cpuperiod={_CPU_PERIOD}", "--opt", f"cpuquota={max(1000, int(req.cpu * _CPU_PERIOD))}"]
    if req.cache_ref:
        argv += [
            "--import-cache", f"type=registry,ref={req.cache_ref}{insecure}",
            "--export-cache", f"type=registry,ref={req.cache_ref},mode=max,ignore-error=true{insecure}",
        ]
    return argv, env


def buildctl_env(extra: dict[str, str]) -> dict[str, str]:
    inherited = settings.INHERITED_ENV
    env = {"PATH": inherited.get("PATH", "/usr/bin:/bin"), "HOME": inherited.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    for name in ("DOCKER_CONFIG", "SSL_CERT_FILE", "SSL_CERT_DIR", "BUILDKIT_HOST"):
        if name in inherited:
            env[name] = inherited[name]
    config_dir = docker_config_dir()
    if config_dir is not None:
        env["DOCKER_CONFIG"] = str(config_dir)
    env.update(extra)
    return env


_written_config: str | None = None


def docker_config_dir() -> Path | None:
    """A docker config directory holding the registry credentials, for buildctl (which hands
    them to buildkitd for pushes and pulls). None without REGISTRY_USERNAME: the operator's
    DOCKER_CONFIG, if any, applies as it is."""
    global _written_config
    if not settings.REGISTRY_USERNAME:
        return None
    token = base64.b64encode(f"{settings.REGISTRY_USERNAME}:{settings.REGISTRY_PASSWORD}".encode()).decode()
    text = json.dumps({"auths": {settings.REGISTRY_URL: {"auth": token}}})
    directory = settings.DATA_DIR / "docker"
    if _written_config != text:
        directory.mkdir(mode=0o700, exist_ok=True)
        # A name of this thread's own: the slots of a threads pool write it at once after a start.
        tmp = directory / f"config.json.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, directory / "config.json")
        _written_config = text
    return directory


def readable_line(line: str) -> str:
    """buildctl's output line as the job's log shows it: expected, handled conditions in plain
    words; every other line (its real errors included) as buildctl wrote it."""
    if match := _NO_CACHE_YET.match(line):
        return f"#{match[1]} no build cache yet for this project"
    return line


def read_digest(metadata_file: Path) -> str:
    try:
        return json.loads(metadata_file.read_text()).get("containerimage.digest", "")
    except (OSError, ValueError):
        return ""


@dataclass
class Vertex:
    name: str
    started_at: float  # wall clock, when buildctl first named it
    seconds: float | None = None
    cached: bool = False


class ProgressTracker:
    """Follows buildctl's plain progress output: which step runs, which one failed, and each
    vertex's start, duration (its DONE line) and whether the cache answered it (CACHED)."""

    def __init__(self):
        self.steps: dict[str, str] = {}
        self.vertices: dict[str, Vertex] = {}
        self.current: str | None = None
        self.failed_step: str | None = None
        self.failure: str | None = None
        self.done: set[str] = set()  # numbers of the steps that ended

    def feed(self, line: str) -> None:
        self._time(line)
        if match := _STEP.match(line):
            self.steps[match[1]] = match[2]
            self.current = match[2]
        elif match := _STEP_DONE.match(line):
            self.done.add(match[1])
        elif _NO_CACHE_YET.match(line):
            pass  # not a failure of the build
        elif match := _STEP_ERROR.match(line):
            self.failed_step = self.steps.get(match[1], self.failed_step)
            self.failure = match[2]

    def _time(self, line: str) -> None:
        if match := _VERTEX_DONE.match(line):
            if vertex := self.vertices.get(match[1]):
                vertex.seconds = float(match[2])
        elif match := _VERTEX_CACHED.match(line):
            if vertex := self.vertices.get(match[1]):
                vertex.cached, vertex.seconds = True, 0.0
        elif (match := _VERTEX.match(line)) and match[1] not in self.vertices:
            name = match[2]
            if name.startswith("[") or name == _EXPORT or name.startswith("exporting "):
                self.vertices[match[1]] = Vertex(name=name, started_at=time.time())

    def running_step(self) -> str | None:
        """The Dockerfile step started last of those still running (buildctl prints an
        earlier step's header again when it reports more of it), as failure.step names it."""
        running = [name for number, name in self.steps.items() if number not in self.done]
        return _failed_step_name(running[-1]) if running else None

    def dockerfile_steps(self) -> list[dict]:
        """The Dockerfile's instructions as the job shows them, in the order buildctl began them."""
        steps = [v for v in self.vertices.values() if _DOCKERFILE_STEP.match(v.name)]
        return [
            {"index": index, "name": v.name, "startedAt": _iso(v.started_at), "seconds": v.seconds, "cached": v.cached}
            for index, v in enumerate(steps, 1)
        ]

    def export_seconds(self) -> float:
        """How long the image's export and push took (BuildKit's "exporting to image")."""
        return sum(v.seconds or 0.0 for v in self.vertices.values() if v.name == _EXPORT)

    def progress(self) -> dict | None:
        if not self.current:
            return None
        position = re.match(r"\[(?:[^\]\s]+ )?(\d+)/(\d+)\]", self.current)
        if position:
            return {"step": int(position[1]), "total": int(position[2]), "name": _step_name(self.current)}
        return {"step": None, "total": None, "name": self.current}


def _step_name(step: str) -> str:
    return step.split("] ", 1)[-1]


def _failed_step_name(step: str) -> str | None:
    """The Dockerfile step a failed buildctl step stands for: BuildKit resolves a FROM image in
    an "[internal] load metadata for <image>" step; other internal steps are no Dockerfile step."""
    if step.startswith("[internal] "):
        image = step.removeprefix("[internal] load metadata for ")
        return f"FROM {image}" if image != step else None
    return _step_name(step)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"


def classify_failure(tracker: ProgressTracker, tail: list[str]) -> errors.BuildError:
    """The error for a failed buildctl run, naming the step that failed when buildctl said."""
    error = _classify(tracker, tail)
    if tracker.failed_step and error.step is None:
        error.step = _failed_step_name(tracker.failed_step)
    return error


def _classify(tracker: ProgressTracker, tail: list[str]) -> errors.BuildError:
    output = "\n".join(tail)
    reason = next((ln for ln in reversed(tail) if ln.startswith("error:")), tracker.failure or (tail[-1] if tail else ""))
    reason = reason.removeprefix("error: ").strip()
    scanner = egress.image_name(settings.SBOM_SCANNER_IMAGE or DEFAULT_SBOM_SCANNER)
    if settings.ATTEST_SBOM and f"failed to resolve source metadata for {scanner}" in output:
        # The operator's setting, not the repository's base image: ours to fix, and retried
        # like any image a registry did not serve.
        return TransientError(
            f"the SBOM scanner image {scanner} cannot be pulled (set SBOM_SCANNER_IMAGE to one buildkitd can pull, "
            f"or ATTEST_SBOM=false): {reason}", code=errors.SBOM_SCANNER_UNAVAILABLE,
        )
    if re.search(r"denied by policy", output):
        return UserError(
            f"the build tried to fetch a source that builds may not reach: {reason}", code=errors.EGRESS_REFUSED
        )
    if re.search(r"did not complete successfully: exit code", output):
        step = tracker.failed_step or "a build step"
        code = re.search(r"exit code: (\d+)", output)
        return UserError(
            f"{step} failed with exit code {code[1] if code else '?'}", code=errors.BUILD_STEP_FAILED
        )
    if re.search(r"no space left on device|disk quota exceeded", output, re.I):
        return TransientError(f"a disk of the build host is full: {reason}", code=errors.DISK_SPACE_LOW)
    if re.search(r"failed to (dial|connect)|connection error|no such file or directory.*buildkitd|"
                 r"buildkitd\.sock|Unavailable desc|context deadline exceeded|transport is closing", output):
        return TransientError(f"buildkitd is not reachable: {reason}", code=errors.BUILDKIT_UNAVAILABLE)
    if re.search(r"dockerfile parse error|failed to parse|unknown instruction|failed to read dockerfile|"
                 r"failed to solve: dockerfile", output, re.I):
        return UserError(f"the Dockerfile is invalid: {reason}", code=errors.DOCKERFILE_INVALID)
    if re.search(r"failed to (compute cache key|calculate checksum)\b.*\bnot found", output):
        # COPY or ADD of a path the repository (the build context) does not have: BuildKit says
        # `failed to compute cache key: failed to calculate checksum of ref ...: "/x": not found`.
        return UserError(f"a path the Dockerfile copies is not in the repository: {reason}",
                         code=errors.COPY_SOURCE_NOT_FOUND)
    if re.search(r"failed to (resolve source metadata|do request|push|copy)|pushing|connection refused|"
                 r"i/o timeout|no such host|TLS handshake|502 Bad Gateway|503 Service|EOF", output):
        if re.search(r"not found|404", output) and not re.search(r"connection refused|i/o timeout", output):
            return UserError(f"an image the build needs was not found: {reason}", code=errors.BASE_IMAGE_NOT_FOUND)
        return TransientError(f"the registry is not reachable: {reason}", code=errors.REGISTRY_UNAVAILABLE)
    return UserError(f"the build failed: {reason or 'buildctl exited with an error'}", code=errors.BUILD_FAILED)
