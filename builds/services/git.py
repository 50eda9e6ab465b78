"""Fetching exactly the requested commit or ref into a fresh workspace.

A shallow fetch of one commit is tried first; servers that refuse to serve an arbitrary
commit (and short SHAs, which cannot be fetched by name) fall back to fetching branches and
tags. git always gets `--` before positional arguments, no terminal prompt, no config from
the host user, and only the http(s) and ssh transports.
"""

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from builds import errors
from builds.errors import TransientError, UserError
from builds.services import process

_TRANSIENT = re.compile(
    r"could not resolve host|connection refused|connection timed out|timed out|failed to connect|"
    r"couldn't connect|connection reset|early eof|rpc failed|the remote end hung up|"
    r"returned error: 5\d\d|gnutls|ssl|temporary failure|network is unreachable|no route to host",
    re.I,
)
_AUTH = re.compile(r"authentication failed|returned error: 40[13]|permission denied|could not read username", re.I)
_MISSING_REF = re.compile(r"couldn't find remote ref|not our ref|no such remote ref|unadvertised object", re.I)
_FULL_SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass
class Source:
    url: str
    ref: str = ""
    commit_sha: str = ""


def git_env(home: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ALLOW_PROTOCOL": "https:http:ssh",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
    }
    for name in ("GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR", "http_proxy", "https_proxy", "no_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


class Fetcher:
    def __init__(self, *, checkout: Path, guard: process.Guard, log, home: Path):
        self.checkout = checkout
        self.guard = guard
        self.log = log
        self.env = git_env(home)

    def git(self, *args: str, check: bool = True) -> process.Result:
        argv = [settings.GIT_BIN, "-c", "protocol.file.allow=never", "-c", "advice.detachedHead=false",
                "-c", "core.hooksPath=/dev/null", "-C", str(self.checkout), *args]
        result = process.run(argv, guard=self.guard, env=self.env, line=self.log.line, tick=self.log.tick)
        if check and result.returncode != 0:
            raise classify("\n".join(result.tail))
        return result

    def fetch(self, source: Source) -> str:
        """Check out the requested commit (or ref, or default branch); returns the full SHA."""
        self.checkout.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q")
        if source.commit_sha:
            self._fetch_commit(source)
        else:
            self._shallow_fetch(source.url, source.ref or "HEAD", check=True)
            self.git("checkout", "-q", "--detach", "FETCH_HEAD")
        return self._head()

    def _shallow_fetch(self, url: str, what: str, *, check: bool) -> process.Result:
        result = self.git("fetch", "--depth=1", "--no-tags", "--", url, what, check=False)
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
                self.git("checkout", "-q", "--detach", "FETCH_HEAD")
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
        self.git("checkout", "-q", "--detach", found.tail[-1].strip())

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


def classify(output: str) -> errors.BuildError:
    last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "git failed")
    if _MISSING_REF.search(output):
        return UserError(f"the requested ref or commit does not exist: {last}", code=errors.SOURCE_NOT_FOUND)
    if _AUTH.search(output):
        return UserError(f"the repository refused access: {last}", code="SOURCE_AUTH_FAILED")
    if re.search(r"returned error: 404|repository .* not found|does not appear to be a git repository|not found", output, re.I):
        return UserError(f"the repository was not found: {last}", code=errors.SOURCE_NOT_FOUND)
    if _TRANSIENT.search(output):
        return TransientError(f"the git host could not be reached: {last}", code=errors.GIT_UNAVAILABLE)
    return UserError(f"git failed: {last}", code="GIT_FAILED")
