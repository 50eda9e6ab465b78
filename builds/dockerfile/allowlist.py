"""The command allowlist (configs/allowed-commands.json): which commands may reach a generated
Dockerfile's RUN and CMD lines.

Format: {"prebuild": [...], "build": [...], "run": [...]} (keys starting with "_" are ignored).
The install command (prebuildCommand/installCommand) is checked against "prebuild", the build
command against "build", the start command against "run".

Matching rules:
- A command containing a newline or any other control character is refused outright.
- The command is split on "&&" and every part, trimmed and with runs of spaces collapsed, must
  match a pattern of the phase's list by itself. So "npm ci && npm run build" passes in a
  phase listing both commands, while "npm run build && rm -rf /" is refused because
  "rm -rf /" matches nothing. No other shell operator is understood: ";", "||", "|", "&",
  "$(...)", backticks, redirections and quotes can only pass where a pattern spells them out
  literally, which is why patterns may not contain "&&" themselves (list each part instead).
- In a pattern "*" stands for one or more characters of [A-Za-z0-9:._/-], so a wildcard can
  never absorb a space, quote or shell metacharacter. Everything else matches literally.

The allowlist shapes what a generated Dockerfile may run; it is not a sandbox (a repository's
own build script can run anything inside the build container). The host never runs any of it.
"""

import functools
import re
from pathlib import Path

from django.conf import settings

from hubfly.env import ConfigError, read_json_file

from builds import errors
from builds.errors import UserError

PHASES = ("prebuild", "build", "run")
WILDCARD = "[A-Za-z0-9:._/-]+"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _normalise(part: str) -> str:
    return re.sub(" +", " ", part).strip()


def _compile(pattern: str) -> re.Pattern:
    return re.compile(WILDCARD.join(re.escape(piece) for piece in pattern.split("*")))


class Allowlist:
    def __init__(self, patterns: dict[str, list[str]], source: str):
        self.patterns = patterns
        self.source = source
        self._compiled = {phase: [_compile(p) for p in patterns.get(phase, [])] for phase in PHASES}

    def refusal(self, phase: str, command: str) -> str | None:
        """Why the command may not run in the phase, or None when it may."""
        if _CONTROL.search(command):
            return "it contains a newline or control character"
        parts = [_normalise(part) for part in command.strip().split("&&")]
        if not parts or not any(parts):
            return "it is empty"
        for part in parts:
            if not part:
                return "it has an empty part around '&&'"
            if not any(regex.fullmatch(part) for regex in self._compiled[phase]):
                if len(parts) == 1:
                    return f"it matches no pattern in the {phase} list"
                return f"its part {part!r} matches no pattern in the {phase} list"
        return None

    def allows(self, phase: str, command: str) -> bool:
        return self.refusal(phase, command) is None

    def check(self, phase: str, command: str, *, field: str | None = None) -> str:
        """The command as it will be written (parts trimmed, joined by " && "), or a
        COMMAND_NOT_ALLOWED UserError naming the command and the phase."""
        reason = self.refusal(phase, command)
        if reason is not None:
            label = f"{field} " if field else ""
            shown = command if len(command) <= 200 else command[:200] + "..."
            raise UserError(
                f"{label}{shown!r} is not allowed in the {phase} phase: {reason}",
                code=errors.COMMAND_NOT_ALLOWED,
            )
        return " && ".join(_normalise(part) for part in command.strip().split("&&"))


def parse_allowlist(data: object, source: str) -> Allowlist:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object with {', '.join(PHASES)} lists")
    patterns: dict[str, list[str]] = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if key not in PHASES:
            raise ConfigError(f"{source}: unknown phase {key!r} (phases: {', '.join(PHASES)})")
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list of command patterns")
        for pattern in value:
            if not isinstance(pattern, str) or not pattern.strip() or _CONTROL.search(pattern):
                raise ConfigError(f"{source}: {key}: bad pattern {pattern!r}")
            if "&&" in pattern:
                raise ConfigError(f"{source}: {key}: pattern {pattern!r} contains '&&'; list each part separately")
            if "**" in pattern:
                raise ConfigError(f"{source}: {key}: pattern {pattern!r} has '**'; use a single '*'")
        patterns[key] = [_normalise(p) for p in value]
    return Allowlist(patterns, source)


def allowlist_file() -> Path:
    return Path(settings.ALLOWED_COMMANDS_FILE)


def load_allowlist(path: Path | str | None = None) -> Allowlist:
    """The allowlist (ALLOWED_COMMANDS_FILE, else configs/allowed-commands.json), cached per path."""
    return _load(str(path or allowlist_file()))


@functools.lru_cache(maxsize=8)
def _load(path: str) -> Allowlist:
    return parse_allowlist(read_json_file(path, "allowlist"), path)
