"""RabbitMQ from Debian's `rabbitmq-server` package, run by the scale-out tests.

The node is the tests' own: its own node name, erlang cookie, epmd (on a port of its own, so a
system RabbitMQ and its epmd on 4369 are neither used nor disturbed), AMQP and distribution
ports picked free on 127.0.0.1, and its mnesia, log and config files under the test root. It
runs in the foreground as a child of the test and can be stopped and started again on the same
data (a broker restart).
"""

import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RabbitMQ:
    def __init__(self, root: Path, *, consumer_timeout_ms: int):
        self.root = root
        self.port, self.dist_port, self.epmd_port = _free_port(), _free_port(), _free_port()
        self.node = f"hubfly-test-{secrets.token_hex(4)}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        home = root / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # RabbitMQ before 3.12 ignores the builds queue's x-consumer-timeout argument: this
            # server-wide setting is what holds there (README, "Scaling out").
            f"consumer_timeout = {consumer_timeout_ms}\n"
            "log.console = true\nlog.file = false\n"
        )
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        }
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"], env=self.env,
            stdout=open(root / "epmd.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self, timeout: float = 90) -> None:
        self.log_path = self.root / f"rabbitmq-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            [SERVER], env=self.env, cwd=self.root, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited:\n{self.log()[-3000:]}")
            if _listening(self.port) and self.ctl("await_startup", timeout=30).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"rabbitmq-server did not start within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 60) -> None:
        """A clean shutdown (SIGTERM), as a service manager stops it; the data stays."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        deadline = time.monotonic() + 30
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.stop()
        if self.epmd.poll() is None:
            self.epmd.terminate()
            self.epmd.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([CTL, "-n", self.node, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def ctl_json(self, *args: str):
        done = self.ctl(*args, "--formatter", "json")
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return json.loads(done.stdout)

    def eval(self, expression: str) -> str:
        done = self.ctl("eval", expression)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl eval: {done.stderr or done.stdout}")
        return done.stdout.strip()

    def queues(self) -> dict[str, dict]:
        """Every queue of the default vhost by name, with its arguments and message counts."""
        rows = self.ctl_json("list_queues", "name", "arguments", "messages_ready", "messages_unacknowledged",
                             "consumers")
        for row in rows:  # rabbitmqctl gives arguments as [name, type, value] triples
            row["arguments"] = {name: value for name, _, value in row["arguments"]}
        return {row["name"]: row for row in rows}
