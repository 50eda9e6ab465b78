"""What a runtime detector reports and what a Dockerfile template receives."""

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# How sure a detector is that the directory is an app of its runtime. The strongest wins;
# on a tie the detector listed first (node, bun, python, go, ...) wins.
ENTRY_POINT = 3  # found what to start (a start script, manage.py, package main, ...)
PROJECT = 2  # a buildable project, but nothing says how it starts
MARKER = 1  # a bare marker file

_SAFE_PATH = re.compile(r"^[A-Za-z0-9._@+-]+(?:/[A-Za-z0-9._@+-]+)*$")


@dataclass
class Detection:
    runtime: str
    confidence: int
    framework: str | None = None
    package_manager: str | None = None
    version_request: str | None = None  # e.g. ">=18" or "3.12.4"
    version_source: str | None = None  # the file it came from, for messages
    install: str | None = None
    build: str | None = None
    run: str | None = None
    port: int | None = None
    static_dir: str | None = None  # set when the output is served as static files ("." = as is)
    warnings: list[str] = field(default_factory=list)
    fatal: str | None = None  # why this app cannot be built, if it is the one chosen
    hints: dict = field(default_factory=dict)  # template details (dependency files, setup steps...)


@dataclass(frozen=True)
class Recipe:
    """Everything a template needs; commands have already passed the allowlist."""

    runtime: str
    version: str
    images: dict[str, str]  # role -> image reference, from runtimes.json
    framework: str | None
    package_manager: str | None
    install: str | None
    build: str | None
    run: str | None
    port: int
    static_dir: str | None = None
    static_image: str | None = None  # the static server image, when static_dir is set
    app_subdir: str = ""  # where the app sits inside the build context ("" = at its root)
    hints: dict = field(default_factory=dict)


def safe_relative_path(value: object) -> str | None:
    """A relative path made only of ordinary characters, normalised ("./dist/" -> "dist"),
    or None; such a path can go into a COPY line without quoting or escaping."""
    if not isinstance(value, str):
        return None
    parts = [p for p in PurePosixPath(value.strip()).parts if p != "."]
    if not parts:
        return "."
    text = "/".join(parts)
    if value.strip().startswith("/") or ".." in parts or not _SAFE_PATH.fullmatch(text):
        return None
    return text
