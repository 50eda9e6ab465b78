"""Benchmark 6: fetching one commit of a long-history repository, the way the worker does
(`builds.services.steps.fetch.Fetcher`: init, shallow fetch of the SHA, checkout), versus a full
`git clone`, both over smart HTTP from the local git server."""

import os
import shutil
import subprocess
import time
import uuid

from bench.common import Context
from bench.repos import long_history, repo_size_mb
from tests.support.gitserver import GitServer, git


class _NoLog:
    def line(self, text: str) -> None:
        pass

    def tick(self) -> None:
        pass


def service_fetch(url: str, sha: str, work) -> None:
    from builds.services import process
    from builds.services.steps import fetch as git_step

    home = work / "home"
    home.mkdir(parents=True)
    guard = process.Guard(deadline=time.monotonic() + 1800)
    fetcher = git_step.Fetcher(checkout=work / "src", guard=guard, log=_NoLog(), home=home)
    got = fetcher.fetch(git_step.Source(url=url, commit_sha=sha))
    assert got == sha, (got, sha)


def full_clone(url: str, work) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_TERMINAL_PROMPT": "0"}
    work.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--", url, str(work / "src")], check=True, env=env,
                   stdin=subprocess.DEVNULL, capture_output=True)


def run(ctx: Context) -> None:
    shape = (dict(commits=300, large_files=2, versions=2, large_mb=0.5, keep_large=1) if ctx.short
             else dict(commits=5000, large_files=4, versions=3, large_mb=8, keep_large=1))
    root = ctx.root / "cache" / "git"
    started = time.time()
    bare = long_history(root, **shape)
    made = time.time() - started
    server = GitServer(root)  # serves the cached repository; never close() it: that deletes root
    try:
        url = f"{server.url}/{bare.name}"
        sha = git("rev-parse", "main", cwd=bare)
        shallow, full, checkout_mb = [], [], 0.0
        for i in range(ctx.n(2, 5)):
            for kind in (("shallow", "full") if i % 2 == 0 else ("full", "shallow")):
                work = ctx.root / "run" / f"gitbench-{uuid.uuid4().hex[:8]}"
                t = time.perf_counter()
                if kind == "shallow":
                    service_fetch(url, sha, work)
                    shallow.append(time.perf_counter() - t)
                    checkout_mb = sum(p.stat().st_size for p in (work / "src").rglob("*") if p.is_file()) / 2**20
                else:
                    full_clone(url, work)
                    full.append(time.perf_counter() - t)
                shutil.rmtree(work, ignore_errors=True)
    finally:
        server.httpd.shutdown()
    b = "6 git"
    desc = (f"{shape['commits']} commits, {shape['large_files']} random {shape['large_mb']:g} MB files x "
            f"{shape['versions']} versions, {shape['keep_large']} kept at HEAD; packed {repo_size_mb(bare):.0f} MB")
    ctx.note(f"long-history repository: {desc} (made or found in the cache in {made:.1f} s)")
    ctx.add(b, "worker's fetch of one commit (init + shallow fetch + checkout)", "s", shallow)
    ctx.add(b, "full git clone", "s", full)
    ctx.add(b, "full clone / one-commit fetch", "x", [f / s for f, s in zip(full, shallow)], ">= 5x")
    ctx.add(b, "checked-out tree (incl. .git) after one-commit fetch", "MB", checkout_mb)
