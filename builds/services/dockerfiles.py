"""Choosing what to build: the repository's own Dockerfile, or a generated one.

The repository is hostile: every path is resolved and must stay inside the checkout, the
Dockerfile must be a regular file of sane size, and it is copied into a directory of our own
before buildctl sees it, so a symlinked Dockerfile can never make us read a host file.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from builds import errors
from builds.errors import UserError

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
    context_rel = build_config.get("buildContextDir")
    context_dir = directory(checkout, context_rel, "buildContextDir") if context_rel else app_dir
    dockerfile_rel = build_config.get("dockerfilePath") or "Dockerfile"
    out_dir.mkdir(parents=True, exist_ok=True)

    data = read_repository_dockerfile(checkout, app_dir, dockerfile_rel)
    if data is not None:
        (out_dir / "Dockerfile").write_bytes(data)
        return BuildInputs(context_dir, out_dir, "Dockerfile", False, f"using the repository's {dockerfile_rel}")
    if build_config.get("dockerfilePath"):
        raise UserError(f"dockerfilePath {dockerfile_rel!r} does not exist", code=errors.DOCKERFILE_NOT_FOUND)

    plan = generate(app_dir=app_dir, checkout=checkout, build_config=build_config)
    if plan is None:
        raise UserError(
            "the repository has no Dockerfile and buildConfig names no runtime (set runtime, or isAutoBuild)",
            code=errors.DOCKERFILE_NOT_FOUND,
        )
    (out_dir / "Dockerfile").write_text(plan.dockerfile)
    for warning in plan.warnings:
        log.line(f"warning: {warning}")
    log.lines("generated Dockerfile:\n" + plan.dockerfile)
    # A monorepo workspace installs from the repository root, so the plan names its context.
    context = directory(checkout, plan.context_dir if plan.context_dir != "." else "", "build context")
    framework = f" ({plan.framework})" if plan.framework else ""
    return BuildInputs(context, out_dir, "Dockerfile", True,
                       f"generated a Dockerfile for {plan.runtime} {plan.version}{framework}", plan.as_dict())


def generate(*, app_dir: Path, checkout: Path, build_config: dict):
    """A BuildPlan from buildConfig or detection, or None when there is nothing to go on."""
    if not (build_config.get("isAutoBuild") or build_config.get("runtime")):
        return None
    from builds.dockerfile import plan_build

    return plan_build(app_dir, build_config, repo_root=checkout)
