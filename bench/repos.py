"""The repositories the benchmarks build, served over smart HTTP by the tests' git server.

Every build repository gets a fresh commit with new content before each build, so the service
and the by-hand run each copy (and, where there is one, RUN) something BuildKit has not seen.
The long-history repository for the git benchmark is generated once with `git fast-import`
and kept under the benchmark's data directory.
"""

import hashlib
import json
import os
import random
import subprocess
import uuid
from pathlib import Path

from tests.support.gitserver import GitServer, Repo, git

TRIVIAL = "FROM scratch\nCOPY stamp.txt /stamp.txt\n"


def sleeping(seconds: float) -> str:
    """A Debian build whose RUN takes `seconds` and is re-run on every new commit."""
    return f"FROM debian:bookworm-slim\nCOPY stamp.txt /stamp.txt\nRUN sleep {seconds:g}\n"


class BuildRepo:
    def __init__(self, server: GitServer, name: str, files: dict[str, str]):
        self.repo: Repo = server.repo(name)
        self.files = dict(files)
        self.head = self.repo.commit({**self.files, "stamp.txt": uuid.uuid4().hex + "\n"}, message="initial")

    @property
    def url(self) -> str:
        return self.repo.url

    def new_commit(self) -> str:
        """A commit whose only change is stamp.txt: new build context content, same Dockerfile."""
        self.head = self.repo.commit({"stamp.txt": uuid.uuid4().hex + "\n"})
        return self.head

    def change(self, path: str, content: str) -> str:
        self.files[path] = content
        self.head = self.repo.commit({path: content}, message=f"change {path}")
        return self.head


# --- the realistic app -----------------------------------------------------------------------

NODE_DOCKERFILE = """\
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --no-audit --no-fund
COPY . .
ENV PORT=3000
EXPOSE 3000
CMD ["node", "server.js"]
"""

NODE_PACKAGE = {
    "name": "bench-app", "version": "1.0.0", "private": True, "main": "server.js",
    "scripts": {"start": "node server.js"},
    "dependencies": {"express": "4.21.2", "pino": "9.6.0", "zod": "3.24.1", "dayjs": "1.11.13"},
    "engines": {"node": "20.x"},  # the Node version the local base images provide
}

SIMULATED_DOCKERFILE = """\
FROM debian:bookworm-slim
WORKDIR /app
COPY deps.txt ./
# Stands in for a dependency install: slow, writes many files, depends only on deps.txt.
RUN sleep {seconds} && mkdir -p vendor && for i in $(seq 1 {files}); do head -c 20000 /dev/urandom > vendor/lib$i.so; done
COPY . .
CMD ["sh", "-c", "cat /app/server.txt"]
"""


def server_js(line: str) -> str:
    return (
        "const express = require('express');\n"
        "const app = express();\n"
        f"app.get('/', (req, res) => res.send({json.dumps(line)}));\n"
        "app.listen(process.env.PORT || 3000);\n"
    )


def node_lockfile(cache_dir: Path) -> str:
    """package-lock.json for NODE_PACKAGE, made once with the host's npm and kept."""
    key = hashlib.sha256(json.dumps(NODE_PACKAGE, sort_keys=True).encode()).hexdigest()[:12]
    lock = cache_dir / f"package-lock-{key}.json"
    if lock.exists():
        return lock.read_text()
    work = cache_dir / "npm-lock-work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "package.json").write_text(json.dumps(NODE_PACKAGE, indent=2))
    subprocess.run(["npm", "install", "--package-lock-only", "--no-audit", "--no-fund", "--ignore-scripts"],
                   cwd=work, check=True, capture_output=True, timeout=300)
    text = (work / "package-lock.json").read_text()
    lock.write_text(text)
    return text


def node_app_files(cache_dir: Path, zero_config: bool) -> dict[str, str]:
    files = {
        "package.json": json.dumps(NODE_PACKAGE, indent=2) + "\n",
        "package-lock.json": node_lockfile(cache_dir),
        "server.js": server_js("hello 0"),
    }
    if not zero_config:
        files["Dockerfile"] = NODE_DOCKERFILE
    return files


def simulated_app_files(seconds: int = 2, files: int = 300) -> dict[str, str]:
    return {"Dockerfile": SIMULATED_DOCKERFILE.format(seconds=seconds, files=files), "deps.txt": "libfoo==1.0\nlibbar==2.3\n", "server.txt": "hello 0\n"}


# --- the long-history repository -------------------------------------------------------------


def long_history(root: Path, *, commits: int, large_files: int, versions: int, large_mb: float,
                 keep_large: int) -> Path:
    """A bare repository with `commits` commits over 200 source files, plus `large_files` random
    (incompressible) files of `large_mb` MB, each rewritten `versions` times over the history;
    only `keep_large` of them are still in the last commit (the rest were deleted, as assets
    moved out of a repository are). Made once per shape, then reused."""
    name = f"long-{commits}c-{large_files}x{versions}x{large_mb:g}mb-keep{keep_large}.git"
    bare = root / name
    if (bare / "bench-complete").exists():
        return bare
    subprocess.run(["rm", "-rf", str(bare)], check=True)
    root.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    rng = random.Random(42)
    large_at = {}  # commit number -> (file index, version)
    for index in range(large_files):
        for version in range(versions):
            at = 1 + (index * versions + version) * (commits - 2) // (large_files * versions)
            large_at[at] = (index, version)
    delete_at = {commits - 1 - i: i for i in range(large_files - keep_large)}
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=bare, stdin=subprocess.PIPE,
                            env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(root)})
    out = proc.stdin

    def data(payload: bytes) -> None:
        out.write(b"data %d\n" % len(payload))
        out.write(payload)
        out.write(b"\n")

    stamp = 1_600_000_000
    for number in range(1, commits + 1):
        out.write(b"commit refs/heads/main\n")
        out.write(b"mark :%d\n" % number)
        out.write(b"committer bench <bench@example.invalid> %d +0000\n" % (stamp + number * 60))
        data(f"change {number}".encode())
        if number > 1:
            out.write(b"from :%d\n" % (number - 1))
        module = rng.randrange(200)
        body = "".join(f"export const value{i} = {rng.randrange(10**9)}; // {number}\n" for i in range(40))
        out.write(f"M 100644 inline src/module{module:03d}.js\n".encode())
        data(body.encode())
        if number in large_at:
            index, version = large_at[number]
            out.write(f"M 100644 inline assets/large{index}.bin\n".encode())
            data(rng.randbytes(int(large_mb * 1024 * 1024)))
        if number in delete_at:
            out.write(f"D assets/large{delete_at[number]}.bin\n".encode())
    out.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    git("config", "http.receivepack", "false", cwd=bare)
    git("repack", "-adq", cwd=bare)
    (bare / "bench-complete").write_text("")
    return bare


def repo_size_mb(bare: Path) -> float:
    return sum(p.stat().st_size for p in (bare / "objects").rglob("*") if p.is_file()) / 1024 / 1024
