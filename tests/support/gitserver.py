"""A real git server for tests: smart HTTP through `git http-backend`, on loopback.

Repositories are made with real git commands; `Repo.commit(files)` adds a commit and returns
its SHA, so tests can build older commits, branches and tags.
"""

import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {out.stderr}")
    return out.stdout.strip()


class Repo:
    def __init__(self, server: "GitServer", name: str):
        self.server = server
        self.name = name
        self.bare = server.root / f"{name}.git"
        self.work = server.root / "_work" / name
        self.work.mkdir(parents=True)
        git("init", "-q", "-b", "main", str(self.work), cwd=server.root)
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=server.root)
        git("config", "http.receivepack", "false", cwd=self.bare)
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=self.bare)

    @property
    def url(self) -> str:
        return f"{self.server.url}/{self.name}.git"

    def commit(self, files: dict[str, str | bytes | None], message: str = "change", branch: str = "main") -> str:
        """Write (or, with None, delete) files, commit, push; returns the commit SHA."""
        current = git("rev-parse", "--abbrev-ref", "HEAD", cwd=self.work) if self._has_commits() else "main"
        if current != branch:
            exists = branch in git("branch", "--list", branch, cwd=self.work)
            git("checkout", "-q", *([] if exists else ["-b"]), branch, cwd=self.work)
        for path, content in files.items():
            target = self.work / path
            if content is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", str(self.bare), f"{branch}:{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def symlink(self, path: str, target: str, message: str = "symlink") -> str:
        link = self.work / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", str(self.bare), "HEAD:main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str) -> None:
        git("tag", name, cwd=self.work)
        git("push", "-q", str(self.bare), f"refs/tags/{name}", cwd=self.work)

    def _has_commits(self) -> bool:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.work, capture_output=True).returncode == 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()

    def _cgi(self):
        path, _, query = self.path.partition("?")
        delay = self.server.delays.get(path.strip("/").split("/")[0].removesuffix(".git"), 0)
        if delay:  # a slow git host, to catch a job while it fetches
            time.sleep(delay)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = out.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GitServer:
    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.httpd = ThreadingHTTPServer((host, 0), _Handler)
        self.httpd.root = root
        self.httpd.delays = {}  # repository name -> seconds to wait before answering
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self._names: set[str] = set()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def repo(self, name: str) -> Repo:
        if name in self._names:
            raise ValueError(f"repository {name} exists")
        self._names.add(name)
        return Repo(self, name)

    def slow_down(self, name: str, seconds: float) -> None:
        self.httpd.delays[name] = seconds

    def close(self) -> None:
        self.httpd.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)
