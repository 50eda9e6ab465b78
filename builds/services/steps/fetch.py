"""Fetching exactly the requested commit or ref into a fresh workspace.

A shallow fetch of one commit is tried first; servers that refuse to serve an arbitrary
commit (and short SHAs, which cannot be fetched by name) fall back to fetching branches and
tags. git always gets `--` before positional arguments, no terminal prompt, no config from
the host user, and only the http(s) and ssh transports.

The source rules hold all the way to the fetch: git connects only to the addresses the host
was checked at (curl's resolve pin, ssh's HostName), follows no redirect, stops after
GIT_TIMEOUT_SECONDS, and may write GIT_MAX_BYTES (the checkout included) while the disk keeps
MIN_FREE_DISK free.

Submodules (a `.gitmodules` with gitlinks in the tree, as static site themes are kept) are
fetched at the commit the tree records, each under the same rules as the main repository: its
URL (relative ones resolved against the main repository's) must pass the source rules, so
file://, local paths and refused hosts fail the job with SOURCE_REFUSED naming the submodule.
"""

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from builds import errors
from builds.errors import TransientError, UserError
from builds.joblog import masking
from builds.services import process
from builds.services.steps import source_rules

# The workspace's disk filled up while git wrote to it: this host's fault, retried (perhaps elsewhere).
_NO_SPACE = re.compile(r"no space left on device|disk quota exceeded", re.I)
_TRANSIENT = re.compile(
    r"could not resolve host|connection refused|connection timed out|timed out|failed to connect|"
    r"couldn't connect|connection reset|early eof|rpc failed|the remote end hung up|"
    r"returned error: 5\d\d|gnutls|ssl|temporary failure|network is unreachable|no route to host",
    re.I,
)
_AUTH = re.compile(r"authentication failed|returned error: 40[13]|permission denied|could not read username", re.I)
_MISSING_REF = re.compile(r"couldn't find remote ref|not our ref|no such remote ref|unadvertised object", re.I)
_FULL_SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_REDIRECT = re.compile(r"returned error: 30\d", re.I)
# git's words for a server that cannot send a shallow history (a dumb HTTP server): handled by
# fetching the whole history, so the log says that instead of git's "fatal:" line.
_NO_SHALLOW = re.compile(r"does not support shallow", re.I)
# Every file and directory counts as at least one filesystem block: a million empty files
# fill a disk (its inodes) too.
_BLOCK = 4096
_SSH_COMMAND = "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
MAX_SUBMODULES = 20  # in all, nested ones included
MAX_SUBMODULE_DEPTH = 3


@dataclass
class Source:
    url: str
    ref: str = ""
    commit_sha: str = ""
    addresses: tuple[str, ...] = ()  # where the host was checked; empty: connect wherever it resolves


def checked_source(*, url: str, ref: str = "", commit_sha: str = "") -> Source:
    """The source with the addresses its host may be fetched from; SOURCE_REFUSED if the
    rules refuse it (checked now, in the worker: DNS may answer otherwise than at submit)."""
    try:
        addresses = source_rules.check_host_allowed(source_rules.parse_repository(url))
    except source_rules.SourceError as exc:
        raise UserError(str(exc), code=errors.SOURCE_REFUSED) from None
    return Source(url=url, ref=ref, commit_sha=commit_sha, addresses=addresses)


def public_url(url: str) -> str:
    """The repository URL as images and attestations name it: without user, password or query
    (tokens travel in either). An scp-like `user@host:path` is left as it is: no secret there."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def require_free_disk(workspace: Path) -> None:
    """Refuse (as our failure, to be retried) a workspace that could leave the disk with less
    than MIN_FREE_DISK free once its fetch has written GIT_MAX_BYTES."""
    free = shutil.disk_usage(workspace).free
    if free - settings.GIT_MAX_BYTES < settings.MIN_FREE_DISK:
        raise TransientError(
            f"only {free} bytes free for the workspace; a fetch may write GIT_MAX_BYTES "
            f"({settings.GIT_MAX_BYTES}) and MIN_FREE_DISK ({settings.MIN_FREE_DISK}) must stay free",
            code=errors.DISK_SPACE_LOW,
        )


def disk_used(root: Path) -> int:
    """Bytes the tree under root takes, as the fetch's budget counts them (see _BLOCK)."""
    total = 0
    pending = [str(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                    except FileNotFoundError:  # git renames and removes temporary files as it goes
                        continue
                    total += max(_blocks(st.st_size), st.st_blocks * 512)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def _blocks(size: int) -> int:
    return max(_BLOCK, -(-size // _BLOCK) * _BLOCK)


class SpaceWatch:
    """While git runs: the checkout may hold GIT_MAX_BYTES and the disk must keep MIN_FREE_DISK
    free. Walking the tree costs time, so it is walked at most every half second, and less
    often when a walk is slow; checking the free space is one system call."""

    def __init__(self, root: Path):
        self.root = root
        self.max_bytes = settings.GIT_MAX_BYTES
        self.min_free = settings.MIN_FREE_DISK
        self._next_walk = 0.0

    def check(self, *, walk: bool = False) -> None:
        free = shutil.disk_usage(self.root).free
        if free < self.min_free:
            raise TransientError(
                f"the disk has {free} bytes free, less than MIN_FREE_DISK ({self.min_free}); fetch stopped",
                code=errors.DISK_SPACE_LOW,
            )
        started = time.monotonic()
        if not walk and started < self._next_walk:
            return
        used = disk_used(self.root)
        self._next_walk = time.monotonic() + max(0.5, 10 * (time.monotonic() - started))
        if used > self.max_bytes:
            raise UserError(
                f"the repository takes more than GIT_MAX_BYTES ({self.max_bytes} bytes) to fetch; fetch stopped",
                code=errors.SOURCE_TOO_LARGE,
            )

    def expect(self, more: int) -> None:
        """Refuse before writing `more` bytes that would not fit."""
        used = disk_used(self.root)
        if used + more > self.max_bytes:
            raise UserError(
                f"checking the commit out would take {used + more} bytes, more than GIT_MAX_BYTES "
                f"({self.max_bytes}); nothing was checked out",
                code=errors.SOURCE_TOO_LARGE,
            )


def pin(url: str, addresses: tuple[str, ...]) -> tuple[list[str], str]:
    """git options and an ssh command that make git connect only to `addresses` (the ones the
    host was checked at), whatever the host's name resolves to by the time git looks it up."""
    if not addresses:
        return [], _SSH_COMMAND
    repo = source_rules.parse_repository(url)
    if _is_address(repo.host):
        return [], _SSH_COMMAND
    if repo.scheme == "ssh":
        # ssh takes one HostName. HostKeyAlias: the host key stays the name's, not the address's.
        return [], f"{_SSH_COMMAND} -o HostName={addresses[0]} -o HostKeyAlias={shlex.quote(repo.host)}"
    port = repo.port or (443 if repo.scheme == "https" else 80)
    listed = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
    return ["-c", f"http.curloptResolve={repo.host}:{port}:{listed}"], _SSH_COMMAND


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _search_path() -> str:
    return settings.INHERITED_ENV.get("PATH", "/usr/bin:/bin")


def git_env(home: Path) -> dict[str, str]:
    env = {
        "PATH": _search_path(),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ALLOW_PROTOCOL": "https:http:ssh",
        "GIT_SSH_COMMAND": _SSH_COMMAND,
    }
    for name in ("GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR", "http_proxy", "https_proxy", "no_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if name in settings.INHERITED_ENV:
            env[name] = settings.INHERITED_ENV[name]
    return env


class Fetcher:
    def __init__(self, *, checkout: Path, guard: process.Guard, log, home: Path):
        self.checkout = checkout
        self.guard = guard
        self.log = log
        self.env = git_env(home)
        self.options: list[str] = []
        self.space = SpaceWatch(checkout)
        self.deadline = float("inf")

    def git(self, *args: str, check: bool = True, line: Callable[[str], None] | None = None) -> process.Result:
        argv = [settings.GIT_BIN, "-c", "protocol.file.allow=never", "-c", "advice.detachedHead=false",
                "-c", "core.hooksPath=/dev/null", "-c", "http.followRedirects=false", *self.options,
                "-C", str(self.checkout), *args]
        result = process.run(argv, guard=self.guard, env=self.env, line=line or self.log.line, tick=self._tick)
        self.space.check(walk=True)  # a command that ended between two walks
        if check and result.returncode != 0:
            raise classify("\n".join(result.tail))
        return result

    def _tick(self) -> None:
        self.log.tick()
        if time.monotonic() >= self.deadline:
            raise UserError(
                f"fetching the source took longer than GIT_TIMEOUT_SECONDS ({settings.GIT_TIMEOUT_SECONDS} s)",
                code=errors.SOURCE_TIMEOUT,
            )
        self.space.check()

    def fetch(self, source: Source) -> str:
        """Check out the requested commit (or ref, or default branch); returns the full SHA."""
        self.deadline = time.monotonic() + settings.GIT_TIMEOUT_SECONDS
        self.options, self.env["GIT_SSH_COMMAND"] = pin(source.url, source.addresses)
        self.checkout.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q")
        if source.commit_sha:
            self._fetch_commit(source)
        else:
            self._shallow_fetch(source.url, source.ref or "HEAD", check=True)
            self._checkout("FETCH_HEAD")
        head = self._head()
        self._fetch_submodules(source.url, self.checkout, depth=1, budget=[MAX_SUBMODULES])
        return head

    def _fetch_submodules(self, parent_url: str, tree: Path, *, depth: int, budget: list[int]) -> None:
        """Each submodule of the checkout at `tree` (one with a gitlink in the tree; `.gitmodules`
        entries without one are ignored, as git does), fetched into its path under the source
        rules; its .git is removed afterwards, so the build context holds files only."""
        for path, url, sha in submodules(tree):
            if depth > MAX_SUBMODULE_DEPTH or budget[0] <= 0:
                raise UserError(f"the repository has more than {MAX_SUBMODULES} submodules or nests them deeper "
                                f"than {MAX_SUBMODULE_DEPTH} levels", code=errors.SOURCE_REFUSED)
            budget[0] -= 1
            resolved = resolve_submodule_url(parent_url, url)
            try:
                source = checked_source(url=resolved, commit_sha=sha)
            except UserError as exc:
                raise UserError(f"submodule {path!r} ({url}): {exc}", code=errors.SOURCE_REFUSED) from None
            self.log.line(f"fetching submodule {path} from {masking.mask_url_credentials(resolved)} at {sha}")
            target = tree / path
            sub = Fetcher(checkout=target, guard=self.guard, log=self.log, home=Path(self.env["HOME"]))
            sub.deadline, sub.space = self.deadline, self.space
            sub.options, sub.env["GIT_SSH_COMMAND"] = pin(source.url, source.addresses)
            target.mkdir(parents=True, exist_ok=True)
            sub.git("init", "-q")
            sub._fetch_commit(source)
            sub._fetch_submodules(resolved, target, depth=depth + 1, budget=budget)
            shutil.rmtree(target / ".git")

    def _checkout(self, commit: str) -> None:
        """Check out `commit`, refusing first a tree that would not fit in GIT_MAX_BYTES (a
        small pack can expand to any size)."""
        size = 0

        def add(line: str) -> None:
            nonlocal size
            fields = line.partition("\t")[0].split()
            if len(fields) == 4:
                size += _blocks(int(fields[3])) if fields[3].isdigit() else _BLOCK

        self.git("ls-tree", "-r", "-t", "-l", commit, line=add)
        self.space.expect(size)
        self.git("checkout", "-q", "--detach", commit)

    def _shallow_fetch(self, url: str, what: str, *, check: bool) -> process.Result:
        def line(text: str) -> None:
            if not _NO_SHALLOW.search(text):
                self.log.line(text)

        result = self.git("fetch", "--depth=1", "--no-tags", "--", url, what, check=False, line=line)
        if result.returncode != 0 and any("shallow" in line for line in result.tail):
            self.log.line("the server cannot send shallow history; fetching it whole")
            result = self.git("fetch", "--no-tags", "--", url, what, check=False)
        if check and result.returncode != 0:
            raise classify("\n".join(result.tail))
        return result

    def _fetch_commit(self, source: Source) -> None:
        sha = source.commit_sha
        if _FULL_SHA.match(sha):
            result = self._shallow_fetch(source.url, sha, check=False)
            if result.returncode == 0:
                self._checkout("FETCH_HEAD")
                return
            error = classify("\n".join(result.tail))
            if error.retryable or error.code != errors.SOURCE_NOT_FOUND:
                raise error
            self.log.line("the server does not serve single commits; fetching branches and tags instead")
        refspecs = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"]
        if source.ref:
            refspecs.append(source.ref)
        self.git("fetch", "--no-tags", "--", source.url, *refspecs)
        found = self.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{sha}^{{commit}}", check=False)
        if found.returncode != 0:
            raise UserError(f"commit {sha} was not found in the repository", code=errors.COMMIT_NOT_FOUND)
        self._checkout(found.tail[-1].strip())

    def _head(self) -> str:
        # A detached HEAD is the commit's SHA in .git/HEAD: no fifth git process per build.
        try:
            head = (self.checkout / ".git" / "HEAD").read_text().strip()
        except OSError:
            head = ""
        if _FULL_SHA.match(head):
            return head
        out = subprocess.run(
            [settings.GIT_BIN, "-C", str(self.checkout), "rev-parse", "HEAD"],
            capture_output=True, text=True, env=self.env, timeout=30, check=True,
        )
        return out.stdout.strip()


def submodules(tree: Path) -> list[tuple[str, str, str]]:
    """(path, url, commit) of each submodule the checkout at `tree` records: a `.gitmodules`
    entry whose path holds a gitlink. A path that is not plain (absolute, `..`, a dot-file
    name such as .git) is refused, so no fetch writes outside its own directory."""
    modules = tree / ".gitmodules"
    if not modules.is_file() or modules.is_symlink():
        return []
    listed = subprocess.run(
        [settings.GIT_BIN, "config", "--file", str(modules), "--null", "--get-regexp", r"^submodule\..*\.(path|url)$"],
        capture_output=True, text=True, timeout=30, env={"PATH": _search_path(),
                                                           "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"},
    )
    entries: dict[str, dict[str, str]] = {}
    for item in filter(None, listed.stdout.split("\0")):
        key, _, value = item.partition("\n")
        name, _, field = key[len("submodule."):].rpartition(".")
        entries.setdefault(name, {})[field] = value
    gitlinks = _gitlinks(tree)
    found = []
    for name, entry in entries.items():
        path, url = entry.get("path", "").strip("/"), entry.get("url", "")
        if path not in gitlinks:
            continue
        parts = path.split("/")
        if not url or path.startswith("/") or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise UserError(f"submodule {name!r} has a path or URL that cannot be fetched safely: {path!r}",
                            code=errors.SOURCE_REFUSED)
        found.append((path, url, gitlinks[path]))
    return found


def _gitlinks(tree: Path) -> dict[str, str]:
    out = subprocess.run([settings.GIT_BIN, "-C", str(tree), "ls-tree", "-r", "-z", "HEAD"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": _search_path(), "GIT_CONFIG_NOSYSTEM": "1",
                              "HOME": "/nonexistent"})
    links = {}
    for item in filter(None, out.stdout.split("\0")):
        meta, _, path = item.partition("\t")
        mode, kind, sha = meta.split()
        if mode == "160000" and kind == "commit":
            links[path] = sha
    return links


def resolve_submodule_url(parent: str, url: str) -> str:
    """A submodule URL as git resolves it: `./x` and `../x` are relative to the parent
    repository's URL; anything else stands as written (and meets the source rules as such)."""
    if not url.startswith(("./", "../")):
        return url
    base = parent.rstrip("/")
    for part in url.split("/"):
        if part == "..":
            base = base.rsplit("/", 1)[0] if "/" in base.split("://", 1)[-1] else base
        elif part not in (".", ""):
            base = f"{base}/{part}"
    return base


def classify(output: str) -> errors.BuildError:
    last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "git failed")
    if _REDIRECT.search(output):
        # Redirects are off: the rules checked this host, not wherever it points.
        return UserError(f"the git server answered with a redirect, which is not followed: {last}",
                         code=errors.SOURCE_REFUSED)
    if _MISSING_REF.search(output):
        return UserError(f"the requested ref or commit does not exist: {last}", code=errors.SOURCE_NOT_FOUND)
    if _AUTH.search(output):
        return UserError(f"the repository refused access: {last}", code=errors.SOURCE_AUTH_FAILED)
    if re.search(r"returned error: 404|repository .* not found|does not appear to be a git repository|not found", output, re.I):
        return UserError(f"the repository was not found: {last}", code=errors.SOURCE_NOT_FOUND)
    if _NO_SPACE.search(output):
        return TransientError(f"the workspace's disk is full: {last}", code=errors.DISK_SPACE_LOW)
    if _TRANSIENT.search(output):
        return TransientError(f"the git host could not be reached: {last}", code=errors.GIT_UNAVAILABLE)
    return UserError(f"git failed: {last}", code=errors.GIT_FAILED)
