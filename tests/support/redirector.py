"""Git servers on a chosen loopback address and port, for the source-rule tests.

Each serves repositories like tests/support/gitserver.py (real `git http-backend`), records
every path it was asked for, and can instead answer every request with a redirect.
"""

import shutil
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from tests.support.gitserver import Repo, _Handler


class _RecordingHandler(_Handler):
    def _cgi(self):
        self.server.requests.append(self.path)
        if self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super()._cgi()


class LoopbackGitServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, redirect_to: str = ""):
        self.root = root
        self.httpd = ThreadingHTTPServer((host, port), _RecordingHandler)
        root.mkdir(parents=True, exist_ok=True)
        self.httpd.root = root
        self.httpd.delays = {}
        self.httpd.requests = []
        self.httpd.redirect_to = redirect_to
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    @property
    def requests(self) -> list[str]:
        return list(self.httpd.requests)

    def repo(self, name: str) -> Repo:
        return Repo(self, name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.root, ignore_errors=True)


def servers_on_one_port(root: Path, hosts: tuple[str, ...]) -> list[LoopbackGitServer]:
    """One server per loopback address, all on the same port (so that only the address a
    client connects to decides which one answers)."""
    for attempt in range(20):
        first = LoopbackGitServer(root / f"{attempt}-{hosts[0]}", hosts[0])
        servers = [first]
        try:
            for host in hosts[1:]:
                servers.append(LoopbackGitServer(root / f"{attempt}-{host}", host, first.port))
            return servers
        except OSError:  # that port is taken on another address; try another
            for server in servers:
                server.close()
    raise RuntimeError(f"no port free on all of {hosts}")
