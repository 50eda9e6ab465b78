"""The production form for real: scripts/compose-test runs `python -m tests.support.compose`.

A Docker engine of our own (Debian's docker.io dockerd, as root, with its own data root, exec
root, pid file and socket under data/compose/; the machine's default socket is never used) runs
docker-compose.yml with Debian's docker-compose, on images made locally
(tests/support/composeimages.py). The stack gets a bridge network this test creates
(`external` in an override file), on which the test's git server and callback receiver listen
at the bridge's gateway address; nothing leaves this machine. The override also gives buildkitd
a config whose docker.io mirror is the compose registry, where the test puts debian:bookworm-slim.

The flow is the README's: up, /readyz, a job from git to `success`, the image pulled back from
the compose registry with the builder's credentials and its digest checked, a signed callback,
the admin with a superuser from `manage.py createsuperuser`; then `restart worker` in the middle
of a build (one success, one final callback), `up --scale worker=2` (builds on both, seen in
/dev/running-builds), `down` and `up` (jobs and logs kept in the named volumes). With
`--profile scale` the same runs on PostgreSQL and RabbitMQ.
"""

import argparse
import hashlib
import hmac
import html
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from infra import localservices
from tests.support import composeimages, registry
from tests.support.gitserver import GitServer
from tests.support.receiver import CallbackReceiver

ROOT = Path(__file__).resolve().parents[2]
DOCKERD = "/usr/sbin/dockerd"
# Debian's client, the engine's own version (the 28.x client some machines have in
# /usr/local/bin would negotiate the API down; this one needs nothing of the kind).
DOCKER = "/usr/bin/docker"
COMPOSE = "/usr/bin/docker-compose"
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ComposeTestError(AssertionError):
    pass


def log(message: str) -> None:
    print(f"compose-test [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ComposeTestError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


# The engine -------------------------------------------------------------------------------------

# Docker 20.10 gives a `privileged: true` container (buildkitd) every capability it knows,
# and runc fails ("unable to apply caps") where this process's bounding set lacks one, as in a
# container whose own engine took some away. This runtime is runc, with the capabilities of a
# container being created cut down to the bounding set we have; where nothing is missing it
# changes nothing. (Later engines do the same themselves.)
RUNC_BOUNDED = """\
#!/usr/bin/python3
import json, os, sys

args = sys.argv[1:]
path = None
if "create" in args or "run" in args:
    bundle = args[args.index("--bundle") + 1] if "--bundle" in args else "."
    path = os.path.join(bundle, "config.json")
elif "exec" in args and "--process" in args:  # healthchecks, docker exec
    path = args[args.index("--process") + 1]
if path:
    with open(path) as handle:
        spec = json.load(handle)
    bounding = next(int(line.split()[1], 16) for line in open("/proc/self/status") if line.startswith("CapBnd:"))
    names = {"CAP_" + name.upper(): bit for bit, name in enumerate([
            "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
            "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
            "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
            "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
            "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
            "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore"])}
    process = spec["process"] if "process" in spec else spec
    capabilities = process.get("capabilities") or {}
    for kind, listed in capabilities.items():
        capabilities[kind] = [c for c in listed if c not in names or bounding >> names[c] & 1]
    with open(path, "w") as handle:
        json.dump(spec, handle)
os.execv("{runc}", ["runc", *args])
"""


class Engine:
    """dockerd with everything of its own under `state`: no bridge of its own (`--bridge none`),
    no iptables rules, no change to IP forwarding, so it leaves the host's firewall (and
    infra/buildnet.py's chains) alone; the networks compose uses are plain bridges."""

    def __init__(self, state: Path, address_pool: str):
        self.state = state
        self.socket = state / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.address_pool = address_pool
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        runtime = self.state / "runc-bounded"
        runtime.write_text(RUNC_BOUNDED.replace("{runc}", shutil.which("runc") or "/usr/sbin/runc"))
        runtime.chmod(0o755)
        pidfile = self.state / "docker.pid"
        if pidfile.exists():  # a run that was killed: its daemon may still hold the data root
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
                wait_for(lambda: not pidfile.exists(), 30, "the old dockerd to stop")
            except (ValueError, ProcessLookupError):
                pidfile.unlink(missing_ok=True)
        argv = [
            DOCKERD, "--data-root", str(self.state / "docker"), "--exec-root", str(self.state / "exec"),
            "--pidfile", str(pidfile), "-H", self.host, "--bridge", "none", "--iptables=false",
            "--ip-forward=false", "--ip-masq=false", "--default-address-pool", f"base={self.address_pool},size=24",
            "--storage-driver", "overlay2", "--log-driver", "json-file",
            "--add-runtime", f"runc-bounded={runtime}", "--default-runtime", "runc-bounded",
        ]  # fmt: skip
        with open(self.state / "dockerd.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(lambda: self.docker("version", check=False).returncode == 0 or self._died(), 60, "dockerd")
        if self._died():
            raise ComposeTestError(f"dockerd exited: see {self.state / 'dockerd.log'}")

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.state / "client")}

    def docker(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run([DOCKER, *args], env=self.env(), capture_output=True, text=True, **kwargs)
        if check and result.returncode != 0:
            raise ComposeTestError(f"docker {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# The stack --------------------------------------------------------------------------------------


class Stack:
    def __init__(self, engine: Engine, project: str, subnet_index: int, work: Path, profile: str | None):
        self.engine, self.project, self.work, self.profile = engine, project, work, profile
        self.subnet = f"10.214.{subnet_index}.0/24"
        self.gateway = f"10.214.{subnet_index}.1"
        self.network = project
        self.token = secrets.token_hex(16)
        self.callback_secret = secrets.token_hex(16)
        self.web_port = composeimages.free_port()
        self.registry_port = composeimages.free_port()
        self.git: GitServer | None = None
        self.receiver: CallbackReceiver | None = None

    # --- setup
    def create(self) -> None:
        # What a run that was stopped (or --keep) left behind.
        label = f"label=com.docker.compose.project={self.project}"
        for kind in ("container", "volume"):
            leftover = self.engine.docker(kind, "ls", "-q", *(["-a"] if kind == "container" else []),
                                          "--filter", label).stdout.split()
            if leftover:
                self.engine.docker(kind, "rm", "-f", *leftover)
        self.engine.docker("network", "rm", self.network, check=False)
        self.engine.docker("network", "create", "--driver", "bridge", "--subnet", self.subnet,
                           "--gateway", self.gateway, self.network)
        self.git = GitServer(self.work / "git", host=self.gateway)
        self.receiver = CallbackReceiver(host=self.gateway)
        toml = (ROOT / "configs" / "buildkitd.toml").read_text()
        toml += f'\n[registry."docker.io"]\n  mirrors = ["registry:5000/{localservices.MIRROR_PREFIX}"]\n'
        (self.work / "buildkitd.toml").write_text(toml)
        override = {
            "networks": {"default": {"external": True, "name": self.network}},
            "services": {"buildkitd": {"volumes": [f"{self.work / 'buildkitd.toml'}:/etc/buildkit/buildkitd.toml:ro"]}},
        }
        (self.work / "override.yml").write_text(json.dumps(override, indent=1))

    def env(self) -> dict:
        git_port = self.git.httpd.server_address[1]
        env = {
            **self.engine.env(),
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_FILE": f"{ROOT / 'docker-compose.yml'}:{self.work / 'override.yml'}",
            "BUILDER_API_TOKENS": self.token,
            "CALLBACK_URL": self.receiver.url,
            "CALLBACK_SECRET": self.callback_secret,
            "GIT_ALLOWED_HOSTS": f"{self.gateway}:{git_port}",
            "WEB_PUBLISH": f"127.0.0.1:{self.web_port}",
            "REGISTRY_PUBLISH": f"127.0.0.1:{self.registry_port}",
            # One build per worker: a second job must wait for it, or go to a second worker.
            "MAX_CONCURRENT_BUILDS": "1",
        }
        if self.profile == "scale":
            env["COMPOSE_PROFILES"] = "scale"
            env["DATABASE_URL"] = "postgres://hubfly:hubfly@postgres:5432/hubfly"
            env["CELERY_BROKER_URL"] = "amqp://hubfly:hubfly@rabbitmq:5672//"
        for key in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD"):
            env.pop(key, None)
        return env

    def compose(self, *args: str, check: bool = True, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        profile = ["--profile", self.profile] if self.profile else []
        result = subprocess.run([COMPOSE, *profile, *args], cwd=ROOT, env=self.env(), capture_output=True,
                                text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise ComposeTestError(f"docker-compose {' '.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
        return result

    def destroy(self) -> None:
        try:
            self.compose("down", "--volumes", "--timeout", "20", check=False)
        finally:
            for server in (self.git, self.receiver):
                if server is not None:
                    server.close()
            self.engine.docker("network", "rm", self.network, check=False)

    # --- HTTP
    def api(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", data=data, headers=headers,
                                         method=method)
        try:
            with _direct.open(request, timeout=30) as response:
                raw, status, ctype = response.read(), response.status, response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            return 0, str(exc)
        return status, (json.loads(raw) if "json" in ctype else raw.decode(errors="replace"))

    def ready(self) -> bool:
        status, body = self.api("GET", "/readyz", auth=False)
        self.last_ready = body
        return status == 200

    def wait_ready(self, timeout: float = 300) -> None:
        self.last_ready = None
        try:
            wait_for(self.ready, timeout, "/readyz 200", interval=2)
        except ComposeTestError as exc:
            raise ComposeTestError(f"{exc}; last answer {self.last_ready}\n{self.logs()}") from None

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", *services, check=False).stdout[-6000:]

    def submit(self, repo_url: str, prefix: str) -> str:
        job_id = f"{prefix}-{secrets.token_hex(4)}"
        body = {"id": job_id, "projectId": "compose", "userId": "tester", "sourceType": "git",
                "sourceInfo": {"gitRepository": repo_url}, "buildConfig": {}}
        status, answer = self.api("POST", "/api/v1/jobs", body)
        if status != 201:
            raise ComposeTestError(f"POST /api/v1/jobs: {status} {answer}")
        return job_id

    def job(self, job_id: str) -> dict:
        status, answer = self.api("GET", f"/api/v1/jobs/{job_id}")
        if status != 200:
            raise ComposeTestError(f"GET job {job_id}: {status} {answer}")
        return answer

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> dict:
        job = {}

        def reached():
            nonlocal job
            job = self.job(job_id)
            return job["status"] in statuses

        try:
            wait_for(reached, timeout, f"job {job_id} to be {sorted(statuses)}", interval=1)
        except ComposeTestError as exc:
            raise ComposeTestError(f"{exc}; it is {job}\n{self.logs('worker')}") from None
        return job

    def registry_credentials(self) -> tuple[str, str]:
        text = self.compose("exec", "-T", "web", "cat", "/data/registry-credentials").stdout.strip()
        user, _, password = text.partition(":")
        return user, password


# The flow ---------------------------------------------------------------------------------------

DOCKERFILE = "FROM debian:bookworm-slim\nRUN echo {marker} > /built && sleep {sleep}\n"


def check_success(stack: Stack, job: dict) -> None:
    if job["status"] != "success":
        raise ComposeTestError(f"job {job['id']} ended {job['status']}: {job.get('errorCode')} {job.get('error')}"
                               f"\n{stack.logs('worker')}")


def check_callback(stack: Stack, job_id: str) -> None:
    got = stack.receiver.wait_for(job_id, timeout=120)
    item = got[0]
    expected = "v1=" + hmac.new(stack.callback_secret.encode(),
                                f"{item.headers['x-hubfly-timestamp']}.{item.headers['x-hubfly-event-id']}.".encode()
                                + item.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, item.headers.get("x-hubfly-signature", "")):
        raise ComposeTestError(f"the callback for {job_id} is not signed with CALLBACK_SECRET")
    if item.json.get("status") != "success":
        raise ComposeTestError(f"the callback for {job_id} says {item.json.get('status')}")


def pull_back(stack: Stack, job: dict) -> None:
    """Pulls the job's image from the compose registry (published on loopback) with the
    builder's credentials, and checks the engine got the digest the job reported."""
    user, password = stack.registry_credentials()
    addr = f"127.0.0.1:{stack.registry_port}"
    repository = job["imageTag"].split("/", 1)[1].rsplit(":", 1)[0]
    reference = f"{addr}/{repository}@{job['imageDigest']}"
    stack.engine.docker("login", "--username", user, "--password-stdin", addr, input=password)
    try:
        stack.engine.docker("pull", "--quiet", reference)
        digests = json.loads(stack.engine.docker("image", "inspect", "--format", "{{json .RepoDigests}}",
                                                 reference).stdout)
        if reference not in digests:
            raise ComposeTestError(f"pulled {reference}, the engine has {digests}")
        stack.engine.docker("image", "rm", reference)
    finally:
        stack.engine.docker("logout", addr, check=False)
    anonymous = subprocess.run([DOCKER, "pull", "--quiet", reference], env=stack.engine.env(), capture_output=True,
                               text=True)
    if anonymous.returncode == 0:
        raise ComposeTestError("the compose registry served an image without credentials")


def check_admin(stack: Stack, job_id: str) -> None:
    password = secrets.token_urlsafe(12)
    stack.compose("exec", "-T", "-e", f"DJANGO_SUPERUSER_PASSWORD={password}", "web", "python", "manage.py",
                  "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.invalid")
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{stack.web_port}"
    page = opener.open(f"{base}/admin/login/", timeout=30).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": "ops", "password": password,
                                   "next": "/admin/"}).encode()
    request = urllib.request.Request(f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"})
    opener.open(request, timeout=30).read()
    listing = opener.open(f"{base}/admin/builds/job/", timeout=30).read().decode()
    if job_id not in html.unescape(listing):
        raise ComposeTestError("the admin's job list does not show the job (did the login work?)")


def run_flow(stack: Stack, timings: dict) -> None:
    repo = stack.git.repo("app")
    repo.commit({"Dockerfile": DOCKERFILE.format(marker="first", sleep=0)})
    started = time.monotonic()
    log(f"{stack.project}: up")
    stack.compose("up", "-d")
    stack.wait_ready()
    timings["up to /readyz"] = time.monotonic() - started
    user, password = stack.registry_credentials()
    _mirror_debian(f"127.0.0.1:{stack.registry_port}", user, password)

    log("a job from git to success")
    first = stack.submit(repo.url, "first")
    job = stack.wait_status(first, {"success", "failed", "canceled"}, 300)
    check_success(stack, job)
    timings["up to the first success"] = time.monotonic() - started
    pull_back(stack, job)
    check_callback(stack, first)
    check_admin(stack, first)

    mark = _step(timings, "first job checked (pull, callback, admin)", started)
    log("restart worker in the middle of a build")
    repo.commit({"Dockerfile": DOCKERFILE.format(marker="restart", sleep=20)})
    during = stack.submit(repo.url, "restart")
    stack.wait_status(during, {"building"}, 120)
    time.sleep(3)
    stack.compose("restart", "worker")
    job = stack.wait_status(during, {"success", "failed", "canceled"}, 400)
    check_success(stack, job)
    log(f"the build across the restart: {job['status']} on {job['worker']}, retryCount {job['retryCount']}")
    check_callback(stack, during)
    time.sleep(5)  # a second final callback would have come by now
    finals = stack.receiver.for_job(during)
    if len(finals) != 1:
        raise ComposeTestError(f"{len(finals)} callbacks for {during}, want one: {[r.json for r in finals]}")

    mark = _step(timings, "restart worker during a build", mark)
    log("scale worker=2")
    stack.compose("up", "-d", "--scale", "worker=2")
    repo.commit({"Dockerfile": DOCKERFILE.format(marker="scale", sleep=15)})
    spread = [stack.submit(repo.url, f"scale{n}") for n in range(2)]
    seen: dict[str, str] = {}

    def both_running():
        status, running = stack.api("GET", "/dev/running-builds")
        for item in running if status == 200 else []:
            if item["id"] in spread and item["worker"]:
                seen[item["id"]] = item["worker"]
        return len(set(seen.values())) == 2

    wait_for(both_running, 180, "the two jobs building on two workers in /dev/running-builds", interval=1)
    for job_id in spread:
        check_success(stack, stack.wait_status(job_id, {"success", "failed", "canceled"}, 300))

    mark = _step(timings, "scale worker=2, two builds", mark)
    log("down and up again")
    jobs_before = {job_id: stack.job(job_id) for job_id in [first, during, *spread]}
    logs_before = {job_id: stack.api("GET", f"/api/v1/jobs/{job_id}/logs")[1] for job_id in jobs_before}
    stack.compose("down", "--timeout", "60")
    stack.compose("up", "-d")
    stack.wait_ready()
    for job_id, before in jobs_before.items():
        after = stack.job(job_id)
        if (after["status"], after["imageDigest"]) != (before["status"], before["imageDigest"]):
            raise ComposeTestError(f"{job_id} changed across down/up: {before} -> {after}")
        if stack.api("GET", f"/api/v1/jobs/{job_id}/logs")[1] != logs_before[job_id]:
            raise ComposeTestError(f"the log of {job_id} changed across down/up")
    mark = _step(timings, "down, up, /readyz, jobs and logs kept", mark)
    again = stack.submit(repo.url, "again")
    check_success(stack, stack.wait_status(again, {"success", "failed", "canceled"}, 300))
    _step(timings, "a job after down and up", mark)


def _step(timings: dict, name: str, since: float) -> float:
    now = time.monotonic()
    timings[name] = now - since
    return now


def _mirror_debian(addr: str, user: str, password: str) -> None:
    """debian:bookworm-slim in the compose registry's docker.io mirror (the override's
    buildkitd.toml), as baseimages made it."""
    from tests.support import baseimages

    saved = {k: os.environ.get(k) for k in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")}
    os.environ.update(REGISTRY_USERNAME=user, REGISTRY_PASSWORD=password)
    try:
        layer = composeimages.debian_layer()
        repo, tags = baseimages.mirror_repository("debian")
        registry.push_image(addr, repo, tags, baseimages._image_config([layer], cmd=["bash"]), [layer])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["default", "scale", "both"], default="both")
    parser.add_argument("--keep", action="store_true", help="leave the last stack up on failure, to look at")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
    if os.geteuid() != 0:
        print("compose-test: dockerd needs root", file=sys.stderr)
        return 1
    state = ROOT / "data" / "compose"
    index = int(hashlib.sha256(str(state).encode()).hexdigest(), 16) % 200 + 20
    engine = Engine(state / "engine", f"10.215.{index % 50 * 4}.0/22")
    timings: dict[str, float] = {}
    started = time.monotonic()
    engine.start()
    profiles = ["default", "scale"] if args.profile == "both" else [args.profile]
    try:
        names = composeimages.DEFAULT_IMAGES + (composeimages.SCALE_IMAGES if "scale" in profiles else ())
        composeimages.make_images(state / "images", [DOCKER, "-H", engine.host], names, log=log)
        timings["images"] = time.monotonic() - started
        for offset, profile in enumerate(profiles):
            work = state / profile
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            stack = Stack(engine, f"hubfly-compose-{profile}", index + offset, work,
                          "scale" if profile == "scale" else None)
            stack.create()
            failed = True
            try:
                phase = {}
                run_flow(stack, phase)
                timings.update({f"{profile}: {k}": v for k, v in phase.items()})
                failed = False
            finally:
                if not (failed and args.keep):
                    stack.destroy()
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep:
            engine.stop()
    timings["total"] = time.monotonic() - started
    for name, seconds in timings.items():
        log(f"time: {name}: {seconds:.0f} s")
    log("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
