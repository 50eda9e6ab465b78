"""Writing Dockerfile text: instructions, cache mounts, the non-root user and the start command.

Only text that is ours or that passed the allowlist reaches these helpers; paths and ports are
validated by the callers. As a last line of defence a line holding a newline or other control
character, or ending in the escape character (a backslash), is refused with DOCKERFILE_INVALID:
either would let a value from the repository start or join an instruction. Cache mounts are
namespaced by the HUBFLY_CACHE_ID build argument (the pipeline passes one per project) so one
tenant's build cannot plant files in another's package cache.
"""

import json
import re
from dataclasses import dataclass

from builds import errors
from builds.dockerfile import lockfile
from builds.errors import UserError

CACHE_ARG = "HUBFLY_CACHE_ID"
APP_USER = "app"
APP_UID = 10001
_PLAIN_WORD = re.compile(r"[A-Za-z0-9:._/@%+,=-]+")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_ENV_VALUE = re.compile(r"[A-Za-z0-9:._/@%+,=-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Cache:
    name: str  # short id suffix, e.g. "npm"
    target: str
    sharing: str | None = None  # "locked" for caches a tool cannot share (apt)

    def mount(self) -> str:
        sharing = f",sharing={self.sharing}" if self.sharing else ""
        return f"--mount=type=cache,id=${{{CACHE_ARG}}}-{self.name},target={self.target}{sharing}"


class Dockerfile:
    def __init__(self, *, tolerant: tuple[str, ...] | frozenset[str] = ()) -> None:
        """`tolerant`: the frozen installs (as written, e.g. "npm ci") that fall back to an
        unlocked install when the lockfile is out of date (builds.dockerfile.lockfile)."""
        self.lines: list[str] = []
        self._stage_has_cache_arg = False
        self._tolerant = frozenset(tolerant)

    def _add(self, line: str) -> None:
        if _CONTROL.search(line) or line.endswith("\\"):
            shown = line if len(line) <= 200 else line[:200] + "..."
            raise UserError(f"refusing to write {shown!r} into the generated Dockerfile: it holds a control "
                            "character or ends in a backslash", code=errors.DOCKERFILE_INVALID)
        self.lines.append(line)

    def stage(self, image: str, name: str | None = None) -> "Dockerfile":
        if self.lines:
            self._add("")
        self._add(f"FROM {image}" + (f" AS {name}" if name else ""))
        self._stage_has_cache_arg = False
        return self

    def comment(self, text: str) -> "Dockerfile":
        self._add(f"# {text}")
        return self

    def raw(self, line: str) -> "Dockerfile":
        self._add(line)
        return self

    def workdir(self, path: str) -> "Dockerfile":
        self._add(f"WORKDIR {path}")
        return self

    def env(self, **values: str | int) -> "Dockerfile":
        if values:
            self._add("ENV " + " ".join(f"{key}={env_value(str(value))}" for key, value in values.items()))
        return self

    def copy(self, sources: list[str] | str, dest: str, *, from_stage: str | None = None,
             chown: bool = False, exclude: tuple[str, ...] = ()) -> "Dockerfile":
        flags = []
        if from_stage:
            flags.append(f"--from={from_stage}")
        if chown:
            flags.append(f"--chown={APP_USER}:{APP_USER}")
        flags.extend(f"--exclude={pattern}" for pattern in exclude)
        sources = [sources] if isinstance(sources, str) else sources
        self._add(" ".join(["COPY", *flags, *sources, dest]))
        return self

    def copy_source(self, dest: str = ".") -> "Dockerfile":
        """The whole build context, without the checkout's .git directory."""
        return self.copy(".", dest, exclude=(".git",))

    def install_and_copy_source(self, install: str | None, dependency_files: list[str] | None,
                                caches: tuple[Cache, ...] | list[Cache] = ()) -> "Dockerfile":
        """Install dependencies before copying the source when the install needs only its
        manifests (a code change then keeps the dependency layer cached); otherwise copy the
        source first."""
        if install and dependency_files:
            self.copy(dependency_files, "./")
            self.run(install, caches)
            return self.copy_source()
        self.copy_source()
        if install:
            self.run(install, caches)
        return self

    def run(self, command: str, caches: tuple[Cache, ...] | list[Cache] = ()) -> "Dockerfile":
        if caches and not self._stage_has_cache_arg:
            self._add(f"ARG {CACHE_ARG}=default")
            self._stage_has_cache_arg = True
        mounts = "".join(cache.mount() + " " for cache in caches)
        if self._tolerant:
            command = lockfile.tolerant(command, self._tolerant)
        self._add(f"RUN {mounts}{command}")
        return self

    def file(self, path: str, content: str) -> "Dockerfile":
        """A file written from a quoted here-document (no variable expansion)."""
        assert "\nEOF\n" not in f"\n{content}\n"
        self._add(f"COPY <<'EOF' {path}")
        for line in content.rstrip("\n").split("\n"):
            self._add(line)
        self._add("EOF")
        return self

    def create_user(self) -> "Dockerfile":
        # Images that already have a user called "app" (e.g. the .NET runtime) keep theirs.
        return self.run(
            f"getent passwd {APP_USER} >/dev/null || "
            f"useradd --create-home --no-log-init --uid {APP_UID} --user-group {APP_USER}"
        )

    def user(self) -> "Dockerfile":
        self._add(f"USER {APP_USER}")
        return self

    def expose(self, port: int) -> "Dockerfile":
        self._add(f"EXPOSE {port}")
        return self

    def start(self, command: str, instruction: str = "CMD") -> "Dockerfile":
        self._add(f"{instruction} {start_command(command)}")
        return self

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def env_value(value: str) -> str:
    return value if _ENV_VALUE.fullmatch(value) else json.dumps(value)


def start_command(command: str) -> str:
    """The JSON-array form of a start command.

    A command of plain words runs directly (exec form). Anything that needs a shell (variable
    expansion, "&&", quotes, a leading VAR=value) runs as ["/bin/sh", "-c", ...] with the last
    command exec'd so it receives signals as PID 1; a leading assignment goes through `env`
    ("exec VAR=value cmd" is not valid shell).
    """
    parts = [part.strip() for part in command.split("&&")]
    words = parts[0].split(" ")
    if len(parts) == 1 and all(_PLAIN_WORD.fullmatch(w) for w in words) and not _ASSIGNMENT.match(words[0]):
        return json.dumps(words)
    last = parts[-1]
    if not last.startswith(("exec ", "cd ")):
        words = last.split(" ")
        assignments = 0
        while assignments < len(words) - 1 and _ASSIGNMENT.match(words[assignments]):
            assignments += 1
        last = ("exec env " if assignments else "exec ") + last
    return json.dumps(["/bin/sh", "-c", " && ".join(parts[:-1] + [last])])

