"""Writing Dockerfile text: instructions, cache mounts, the non-root user and the start command.

Only text that is ours or that passed the allowlist reaches these helpers; paths and ports are
validated by the callers. Cache mounts are namespaced by the HUBFLY_CACHE_ID build argument
(the pipeline passes one per project) so one tenant's build cannot plant files in another's
package cache.
"""

import json
import re
from dataclasses import dataclass

CACHE_ARG = "HUBFLY_CACHE_ID"
APP_USER = "app"
APP_UID = 10001
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9:._/@%+,=-]+$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_ENV_VALUE = re.compile(r"^[A-Za-z0-9:._/@%+,=-]*$")


@dataclass(frozen=True)
class Cache:
    name: str  # short id suffix, e.g. "npm"
    target: str
    sharing: str | None = None  # "locked" for caches a tool cannot share (apt)

    def mount(self) -> str:
        sharing = f",sharing={self.sharing}" if self.sharing else ""
        return f"--mount=type=cache,id=${{{CACHE_ARG}}}-{self.name},target={self.target}{sharing}"


class Dockerfile:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._stage_has_cache_arg = False

    def stage(self, image: str, name: str | None = None) -> "Dockerfile":
        if self.lines:
            self.lines.append("")
        self.lines.append(f"FROM {image}" + (f" AS {name}" if name else ""))
        self._stage_has_cache_arg = False
        return self

    def comment(self, text: str) -> "Dockerfile":
        self.lines.append(f"# {text}")
        return self

    def raw(self, line: str) -> "Dockerfile":
        self.lines.append(line)
        return self

    def workdir(self, path: str) -> "Dockerfile":
        self.lines.append(f"WORKDIR {path}")
        return self

    def env(self, **values: str | int) -> "Dockerfile":
        if values:
            self.lines.append("ENV " + " ".join(f"{key}={env_value(str(value))}" for key, value in values.items()))
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
        self.lines.append(" ".join(["COPY", *flags, *sources, dest]))
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
            self.lines.append(f"ARG {CACHE_ARG}=default")
            self._stage_has_cache_arg = True
        mounts = "".join(cache.mount() + " " for cache in caches)
        self.lines.append(f"RUN {mounts}{command}")
        return self

    def file(self, path: str, content: str) -> "Dockerfile":
        """A file written from a quoted here-document (no variable expansion)."""
        assert "\nEOF\n" not in f"\n{content}\n"
        self.lines.append(f"COPY <<'EOF' {path}")
        self.lines.extend(content.rstrip("\n").split("\n"))
        self.lines.append("EOF")
        return self

    def create_user(self) -> "Dockerfile":
        # Images that already have a user called "app" (e.g. the .NET runtime) keep theirs.
        return self.run(
            f"getent passwd {APP_USER} >/dev/null || "
            f"useradd --create-home --no-log-init --uid {APP_UID} --user-group {APP_USER}"
        )

    def user(self) -> "Dockerfile":
        self.lines.append(f"USER {APP_USER}")
        return self

    def expose(self, port: int) -> "Dockerfile":
        self.lines.append(f"EXPOSE {port}")
        return self

    def start(self, command: str, instruction: str = "CMD") -> "Dockerfile":
        self.lines.append(f"{instruction} {start_command(command)}")
        return self

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def env_value(value: str) -> str:
    return value if _ENV_VALUE.match(value) else json.dumps(value)


def start_command(command: str) -> str:
    """The JSON-array form of a start command.

    A command of plain words runs directly (exec form). Anything that needs a shell (variable
    expansion, "&&", quotes, a leading VAR=value) runs as ["/bin/sh", "-c", ...] with the last
    command exec'd so it receives signals as PID 1; a leading assignment goes through `env`
    ("exec VAR=value cmd" is not valid shell).
    """
    parts = [part.strip() for part in command.split("&&")]
    words = parts[0].split(" ")
    if len(parts) == 1 and all(_PLAIN_WORD.match(w) for w in words) and not _ASSIGNMENT.match(words[0]):
        return json.dumps(words)
    last = parts[-1]
    if not last.startswith(("exec ", "cd ")):
        words = last.split(" ")
        assignments = 0
        while assignments < len(words) - 1 and _ASSIGNMENT.match(words[assignments]):
            assignments += 1
        last = ("exec env " if assignments else "exec ") + last
    return json.dumps(["/bin/sh", "-c", " && ".join(parts[:-1] + [last])])

