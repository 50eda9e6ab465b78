"""configs/runtimes.json: which base images a runtime and version build on.

Format (an operator's file; base images are never named in Python):

    {"node": {"aliases": ["nodejs"], "default": "22",
              "versions": {"22": {"build": "node:22-bookworm-slim", "run": "node:22-bookworm-slim"}}},
     ...}

Each version maps image roles to image references. The roles a runtime uses are listed in
ROLES below ("build" for the toolchain stage, "run" for the final stage, plus a few
runtime-specific ones). A file that does not have this shape is an operator error: loading it
raises ConfigError naming the file and the entry.
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from hubfly.env import ConfigError, read_json_file

from builds.dockerfile import versions


# Roles each runtime's generator reads; a version entry missing one is refused at load time.
ROLES = {
    "node": ("build", "run"),
    "bun": ("build", "run"),
    "python": ("build", "run"),
    "go": ("build", "run"),
    "static": ("run",),
    "rust": ("build", "run"),
    "java": ("maven", "gradle", "run"),
    "dotnet": ("build", "run"),
    "php": ("composer", "run"),
    "ruby": ("build", "run"),
    "deno": ("build", "run"),
    "hugo": ("build",),  # the site is served by the static runtime's image
}
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._-]*(?::[0-9]+)?(?:/[a-z0-9._-]+)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Runtime:
    name: str
    default: str
    images: dict[str, dict[str, str]]  # version -> role -> image reference

    @property
    def versions(self) -> list[str]:
        return list(self.images)

    def resolve(self, request: str | None) -> str | None:
        """The known version a request means (see versions.resolve); the default for None."""
        if request is None:
            return self.default
        return versions.resolve(request, self.versions, self.default)


class Runtimes:
    def __init__(self, runtimes: dict[str, Runtime], aliases: dict[str, str], source: str):
        self.runtimes = runtimes
        self.aliases = aliases
        self.source = source

    def get(self, name: str) -> Runtime | None:
        key = name.strip().lower()
        return self.runtimes.get(self.aliases.get(key, key))

    def names(self) -> list[str]:
        return list(self.runtimes)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __getitem__(self, name: str) -> Runtime:
        runtime = self.get(name)
        if runtime is None:
            raise KeyError(name)
        return runtime


def parse_runtimes(data: object, source: str) -> Runtimes:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {message}")

    if not isinstance(data, dict) or not data:
        raise fail("expected a JSON object of runtimes")
    runtimes: dict[str, Runtime] = {}
    aliases: dict[str, str] = {}
    for name, entry in data.items():
        if name.startswith("_"):
            continue  # "_comment" and the like
        if name not in ROLES:
            raise fail(f"unknown runtime {name!r} (known: {', '.join(ROLES)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("versions"), dict) or not entry["versions"]:
            raise fail(f"{name}: expected {{\"default\": ..., \"versions\": {{...}}}}")
        images: dict[str, dict[str, str]] = {}
        for version, roles in entry["versions"].items():
            if not _VERSION.fullmatch(version):
                raise fail(f"{name}: bad version key {version!r}")
            if not isinstance(roles, dict):
                raise fail(f"{name} {version}: expected an object of image roles")
            for role in ROLES[name]:
                image = roles.get(role)
                if not isinstance(image, str) or not _IMAGE.fullmatch(image):
                    raise fail(f"{name} {version}: role {role!r} needs an image reference, got {image!r}")
            images[version] = {role: roles[role] for role in ROLES[name]}
        default = entry.get("default")
        if default not in images:
            raise fail(f"{name}: default {default!r} is not one of its versions")
        for alias in entry.get("aliases", []):
            if not isinstance(alias, str) or not _NAME.fullmatch(alias):
                raise fail(f"{name}: bad alias {alias!r}")
            aliases[alias] = name
        runtimes[name] = Runtime(name=name, default=default, images=images)
    return Runtimes(runtimes, aliases, source)


def runtimes_file() -> Path:
    return Path(settings.RUNTIMES_FILE)


def load_runtimes(path: Path | str | None = None) -> Runtimes:
    """The runtimes config (RUNTIMES_FILE, else configs/runtimes.json), cached per path."""
    return _load(str(path or runtimes_file()))


@functools.lru_cache(maxsize=8)
def _load(path: str) -> Runtimes:
    return parse_runtimes(read_json_file(path, "runtimes"), path)
