"""Choosing what to build: the repository's own Dockerfile, or a generated one.

The repository is hostile: every path is resolved and must stay inside the checkout, the
Dockerfile must be a regular file of sane size, and it is copied into a directory of our own
before buildctl sees it, so a symlinked Dockerfile can never make us read a host file.

A Dockerfile may pick the BuildKit frontend that parses it (`# syntax=<image>`): code of the
repository's choosing that BuildKit would run. Whichever Dockerfile buildctl is given, the image
it names must be a repository listed in BUILD_FRONTEND_ALLOW, else FRONTEND_NOT_ALLOWED.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from builds import errors
from builds.buildsettings import BuildSettings
from builds.dockerfile import plan_build
from builds.errors import UserError
from hubfly.env import ConfigError

MAX_DOCKERFILE_BYTES = 1024 * 1024


@dataclass
class BuildInputs:
    context_dir: Path
    dockerfile_dir: Path
    dockerfile_name: str
    generated: bool
    summary: str  # one line for the log
    plan: dict | None = None  # what detection/generation decided, for the log and the job


def inside(root: Path, candidate: Path) -> Path:
    """The real path of candidate, if it lies within root; else a WORKING_DIR_INVALID error."""
    real_root = root.resolve()
    real = candidate.resolve()
    if real != real_root and real_root not in real.parents:
        raise UserError(f"{candidate.relative_to(root)} leads outside the repository", code=errors.WORKING_DIR_INVALID)
    return real


def directory(root: Path, relative: str, field: str) -> Path:
    path = inside(root, root / relative) if relative else root.resolve()
    if not path.is_dir():
        raise UserError(f"{field} {relative!r} is not a directory in the repository", code=errors.WORKING_DIR_INVALID)
    return path


def read_repository_dockerfile(root: Path, app_dir: Path, relative: str) -> bytes | None:
    """Contents of the Dockerfile at app_dir/relative, None when there is none."""
    candidate = app_dir / relative
    if not os.path.lexists(candidate):
        return None
    real = candidate.resolve()
    real_root = root.resolve()
    if real_root not in real.parents:
        raise UserError(f"{relative} points outside the repository", code=errors.DOCKERFILE_INVALID)
    if not real.is_file():
        raise UserError(f"{relative} is not a regular file", code=errors.DOCKERFILE_INVALID)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_DOCKERFILE_BYTES + 1)
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise UserError(f"{relative} is larger than 1 MiB", code=errors.DOCKERFILE_INVALID)
    return data


def prepare(*, checkout: Path, build_config: dict, working_dir: str, out_dir: Path, log) -> BuildInputs:
    app_dir = directory(checkout, working_dir, "workingDir")
    wanted = BuildSettings.of(build_config)
    context_dir = directory(checkout, wanted.build_context_dir, "buildContextDir") if wanted.build_context_dir else app_dir
    dockerfile_rel = wanted.dockerfile_path or "Dockerfile"
    out_dir.mkdir(parents=True, exist_ok=True)

    data = read_repository_dockerfile(checkout, app_dir, dockerfile_rel)
    if data is not None:
        check_frontend(data)
        (out_dir / "Dockerfile").write_bytes(data)
        return BuildInputs(context_dir, out_dir, "Dockerfile", False, f"using the repository's {dockerfile_rel}")
    if wanted.dockerfile_path:
        raise UserError(f"dockerfilePath {dockerfile_rel!r} does not exist", code=errors.DOCKERFILE_NOT_FOUND)

    plan = generate(app_dir=app_dir, checkout=checkout, build_config=build_config)
    if plan is None:
        raise UserError(
            "the repository has no Dockerfile and buildConfig names no runtime (set runtime, or isAutoBuild)",
            code=errors.DOCKERFILE_NOT_FOUND,
        )
    check_frontend(plan.dockerfile.encode())
    (out_dir / "Dockerfile").write_text(plan.dockerfile)
    for warning in plan.warnings:
        log.line(f"warning: {warning}")
    log.line(plan_summary(plan))
    log.lines("generated Dockerfile:\n" + plan.dockerfile)
    # A monorepo workspace installs from the repository root, so the plan names its context.
    context = directory(checkout, plan.context_dir if plan.context_dir != "." else "", "build context")
    framework = f" ({plan.framework})" if plan.framework else ""
    return BuildInputs(context, out_dir, "Dockerfile", True,
                       f"generated a Dockerfile for {plan.runtime} {plan.version}{framework}", plan.as_dict())


def plan_summary(plan) -> str:
    """One log line of what the generator chose, beside the Dockerfile that says it in full."""
    parts = [("package manager", plan.package_manager), ("install", plan.install_command),
             ("build", plan.build_command), ("start", plan.run_command or "the static file server")]
    return "plan: " + "; ".join(f"{name}: {value}" for name, value in parts if value)


def generate(*, app_dir: Path, checkout: Path, build_config: dict):
    """A BuildPlan from buildConfig or detection, or None when there is nothing to go on."""
    if not BuildSettings.of(build_config).generated:
        return None
    return plan_build(app_dir, build_config, repo_root=checkout)


# --- The frontend a Dockerfile selects --------------------------------------------------------

# BuildKit's directive line (parser/directives.go) is `^#\s*(key)\s*=\s*(value)\s*$`, also with
# `//`, read only until the first line that is not one. We read every comment line before the
# first instruction, with leading blanks and any Unicode space allowed: a superset of what
# BuildKit may take for a directive. The value is trimmed of Go's `\s` only, so it is never
# cleaner than the one BuildKit would use. (No lazy `.+?\s*$`: quadratic on a long line.)
_DIRECTIVE = re.compile(r"\s*(?:#|//)\s*([A-Za-z][A-Za-z0-9]*)\s*=(.*)")
_GO_SPACE = " \t\n\f\r"
_MAX_REFERENCE = 1024
_DOMAIN_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"((?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*)"  # the repository
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",  # digest
    re.ASCII,
)


def frontend_references(data: bytes) -> list[str]:
    """Every image reference the Dockerfile could select as its frontend: `# syntax=` (and
    BuildKit's other spellings: `//` comments, a JSON document's "syntax" key)."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    values = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        if not line.lstrip().startswith(("#", "//")):
            break  # the first instruction: directives come before it
        match = _DIRECTIVE.match(line)
        if match and match.group(1).lower() == "syntax" and match.group(2).strip(_GO_SPACE):
            values.append(match.group(2).strip(_GO_SPACE))
    body = text.partition("\n")[2] if text.startswith("#!") else text  # BuildKit skips a shebang line
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("syntax"), str):
        values.append(document["syntax"])
    return [value.split(" ", 1)[0] for value in values]  # BuildKit passes the rest as arguments


def normalised_repository(reference: str) -> str | None:
    """The repository a reference names, as BuildKit resolves it (`docker/dockerfile:1` ->
    `docker.io/docker/dockerfile`), or None when it is not a valid reference."""
    match = _REFERENCE.fullmatch(reference) if len(reference) <= _MAX_REFERENCE else None
    if match is None:
        return None
    name = match.group(1)
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, path = "docker.io", name
    else:
        domain, path = first, rest
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return f"{domain}/{path}"


def allowed_frontends() -> set[str]:
    allowed = set()
    for entry in settings.BUILD_FRONTEND_ALLOW:
        match = _REFERENCE.fullmatch(entry)
        if match is None or match.group(1) != entry:
            raise ConfigError(f"BUILD_FRONTEND_ALLOW: {entry!r} is not an image repository (without tag or digest)")
        allowed.add(normalised_repository(entry))
    return allowed


def check_frontend(data: bytes) -> None:
    """A FRONTEND_NOT_ALLOWED UserError when the Dockerfile selects a frontend image that
    BUILD_FRONTEND_ALLOW does not list."""
    allowed = allowed_frontends()
    for reference in frontend_references(data):
        if normalised_repository(reference) not in allowed:
            raise UserError(
                f"the Dockerfile's syntax directive names the frontend {reference[:200]!r}, which is not "
                f"allowed (allowed: {', '.join(settings.BUILD_FRONTEND_ALLOW)})",
                code=errors.FRONTEND_NOT_ALLOWED,
            )
