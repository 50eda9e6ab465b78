"""Locked installs that survive a lockfile which no longer matches its manifest.

A generated install runs frozen first (npm ci, --frozen-lockfile, --immutable, cargo --locked,
uv --locked, bundler's deployment mode...). When it fails and the package manager's output
says the lockfile is out of date, the same step installs again without the lock and prints a
warning line; any other failure fails the build as before. The pipeline turns those lines into
the job's `warnings` (builds.services.pipeline). buildConfig.strictLockfile keeps the frozen
install alone.

The marker is printed as `hubfly-%s` + `warning`, so the RUN line BuildKit echoes into the log
never holds the marker text itself: only the fallback actually running prints it.
"""

import re
from dataclasses import dataclass

MARKER = "hubfly-warning: "
MARKER_LINE = re.compile(r"(?:^|\s)hubfly-warning: (.+)$")
_LOG = "/tmp/hubfly-install.log"
_RC = "/tmp/hubfly-install.rc"


@dataclass(frozen=True)
class Lock:
    strict: str  # the frozen command as the generator writes it
    relaxed: str  # the same install without the lock
    drift: str  # an extended regular expression matching the tool's "out of date" message
    lockfile: str  # named in the warning
    also: tuple[str, ...] = ()  # other names the lockfile may have


LOCKS = (
    Lock("npm ci", "npm install",
         r"in sync|from lock file|Invalid: lock file", "package-lock.json",
         ("npm-shrinkwrap.json",)),
    Lock("yarn install --frozen-lockfile", "yarn install", r"lockfile needs to be updated", "yarn.lock"),
    Lock("yarn install --immutable", "yarn install --no-immutable",
         r"YN0028|lockfile would have been modified", "yarn.lock"),
    Lock("pnpm install --frozen-lockfile", "pnpm install --no-frozen-lockfile",
         r"ERR_PNPM_OUTDATED_LOCKFILE|ERR_PNPM_LOCKFILE_CONFIG_MISMATCH|not up to date with", "pnpm-lock.yaml"),
    Lock("bun install --frozen-lockfile", "bun install", r"lockfile had changes", "bun.lock", ("bun.lockb",)),
    Lock("cargo build --release --locked", "cargo build --release",
         r"lock file .*(needs to be updated|because --locked)", "Cargo.lock"),
    Lock("uv sync --locked --no-dev --no-install-project", "uv sync --no-dev --no-install-project",
         r"needs to be updated, but .?--locked", "uv.lock"),
    Lock("poetry install --only main --no-interaction --no-root",
         "{ poetry lock --no-update || poetry lock; } && poetry install --only main --no-interaction --no-root",
         r"changed significantly since poetry.lock", "poetry.lock"),
    Lock("pipenv install --deploy --system", "pipenv install --system --skip-lock",
         r"Pipfile.lock .*out of date", "Pipfile.lock"),
    Lock("composer install --no-dev --no-interaction --prefer-dist --no-scripts --no-autoloader --ignore-platform-reqs",
         "composer update --no-dev --no-interaction --prefer-dist --no-scripts --no-autoloader --ignore-platform-reqs",
         r"not present in the lock file|lock file is not up to date|lock file .*out of date", "composer.lock"),
    Lock("bundle install", "BUNDLE_DEPLOYMENT=false BUNDLE_FROZEN=false bundle install",
         r"deployment mode after changing|frozen mode|Gemfile.lock to version control", "Gemfile.lock"),
)


def fallbacks(commands: list[str | None], has_file) -> tuple[str, ...]:
    """The frozen installs among the parts of `commands` whose lockfile exists (`has_file(name)`):
    `bundle install` and `composer install` are frozen only with a lockfile."""
    parts = {part for command in commands if command for part in command.split(" && ")}
    return tuple(sorted(lock.strict for lock in LOCKS
                        if lock.strict in parts and any(has_file(n) for n in (lock.lockfile, *lock.also))))


def tolerant(command: str, allowed: frozenset[str] | set[str]) -> str:
    """The command with each frozen install in it (parts joined by " && ") that is also in
    `allowed` made to fall back on drift; other parts are left as they are."""
    return " && ".join(_fallback(part) if part in allowed else part for part in command.split(" && "))


def _fallback(part: str) -> str:
    lock = next((lock for lock in LOCKS if part == lock.strict), None)
    if lock is None:
        return part
    message = (f"lockfile {lock.lockfile} does not match the manifest; installed without it "
               "(commit an updated lockfile, or set buildConfig.strictLockfile to fail instead)")
    return (f"{{ {{ {lock.strict} 2>&1; echo $? >{_RC}; }} | tee {_LOG}; "
            f"rc=$(cat {_RC}); rm -f {_RC}; "
            f"if [ \"$rc\" != 0 ]; then grep -qE '{lock.drift}' {_LOG} || exit \"$rc\"; "
            f"printf 'hubfly-%s: %s\\n' warning '{message}'; {lock.relaxed}; fi && rm -f {_LOG}; }}")


def warnings_in(line: str) -> str | None:
    """The warning a build log line carries, if it is a marker line."""
    match = MARKER_LINE.search(line)
    return match.group(1).strip()[:500] if match else None
