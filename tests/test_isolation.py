"""Untrusted builds are contained (issue 10): the build network's egress policy, builds without
a network, ADD <url> under the same rules, and a registry only the builder writes to.

Every target is an address of this machine: loopback, the build bridge's gateway, the host's
own interface addresses, or a host inside a network namespace the test creates itself (with a
private-range address, standing for an internal service).
"""

import contextlib
import ipaddress
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from builds.models import Job
from infra import buildnet, localservices
from tests.conftest import wait_for
from tests.support import registry
from tests.support.jobs import log_text, new_id, submit, wait_final
from tests.support.webserver import WebServer, free_port
from tests.testenv import REGISTRY_ADDR, TEST_ROOT

BASE = "FROM debian:bookworm-slim\n"
# One line per target: "<name> open" or "<name> refused". bash's /dev/tcp needs nothing installed.
PROBE = (
    'probe() { if timeout 5 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; '
    'then echo "PROBE $1 open"; else echo "PROBE $1 refused"; fi; }'
)


def probe_step(targets: dict[str, tuple[str, int]]) -> str:
    calls = "; ".join(f"probe {name} {host} {port}" for name, (host, port) in targets.items())
    return f"RUN {PROBE}; {calls}\n"


def probe_results(log: str) -> dict[str, str]:
    results = {}
    for line in log.splitlines():
        if "PROBE " in line and "probe()" not in line:
            name, verdict = line.split("PROBE ", 1)[1].split()[:2]
            results[name] = verdict
    return results


class PrivateHost:
    """A host with a private-range address, in a network namespace of the test's own, serving
    HTTP on two ports; reached from this host through a veth pair."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.netns = f"hbt-{tag}"
        self.host_if, self.ns_if = f"hbth{tag}", f"hbtn{tag}"
        octet = int(tag[:2], 16) % 250 + 1
        self.host_address, self.address = f"10.250.{octet}.1", f"10.250.{octet}.2"
        self.ports = (8000 + int(tag[2:4], 16) % 100, 8200 + int(tag[4:6], 16) % 100)
        self.servers = []
        run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
        run("ip", "netns", "add", self.netns)
        try:
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.netns)
            run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_if)
            run("ip", "link", "set", self.host_if, "up")
            run("ip", "-n", self.netns, "addr", "add", f"{self.address}/30", "dev", self.ns_if)
            run("ip", "-n", self.netns, "link", "set", self.ns_if, "up")
            run("ip", "-n", self.netns, "link", "set", "lo", "up")
            for port in self.ports:
                self.servers.append(subprocess.Popen(
                    ["ip", "netns", "exec", self.netns, sys.executable, "-m", "http.server", str(port),
                     "--bind", self.address],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=TEST_ROOT,
                ))
            for port in self.ports:
                wait_for(lambda: self._answers(port), 20, f"the private host's port {port}")
        except BaseException:
            self.close()
            raise

    def _answers(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}:{port}/", timeout=1):
                return True
        except OSError:
            return False

    def close(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)


@pytest.fixture(scope="module")
def private_host():
    host = PrivateHost()
    yield host
    host.close()


@pytest.fixture(scope="module")
def host_server():
    """An HTTP server on every address of the host (0.0.0.0)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=TEST_ROOT)
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), 20, "the host's HTTP server")
    yield port
    proc.kill()
    proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def build_network(infra) -> dict:
    policy = buildnet.read_policy(Path(infra["state_dir"]) / "buildnet")
    assert policy, "the test buildkitd runs without the build network's policy"
    return policy


def host_targets(infra, port: int) -> dict[str, tuple[str, int]]:
    """The host's own non-loopback addresses, the bridge gateway among them."""
    gateway = build_network(infra)["gateway"]
    targets = {"host-via-gateway": (gateway, port)}
    for address in sorted(buildnet.host_addresses(), key=str):
        if address.version == 4 and not address.is_loopback and str(address) != gateway:
            targets[f"host-{address}"] = (str(address), port)
    return targets


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_a_build_reaches_the_internet_but_nothing_of_this_host_or_the_private_network(
    api, worker, git_server, infra, host_server, private_host, tmp_path
):
    web = WebServer(tmp_path / "web.log", bind_all=True)
    try:
        registry_port = int(REGISTRY_ADDR.rsplit(":", 1)[1])
        gateway = build_network(infra)["gateway"]
        targets = {
            "registry-loopback": ("127.0.0.1", registry_port),
            "registry-gateway": (gateway, registry_port),
            "api-gateway": (gateway, web.port),
            **host_targets(infra, host_server),
            "private-host": (private_host.address, private_host.ports[0]),
        }
        # Public egress: packages from Debian's archive, as builds install them.
        dockerfile = BASE + probe_step(targets) + (
            "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends hello >/dev/null "
            "&& hello\n"
        )
        repo = git_server.repo("isolation-" + new_id())
        repo.commit({"Dockerfile": dockerfile})
        job = wait_final(submit(api, repo.url, env={"NONCE": new_id()}), timeout=300)
        log = log_text(api, job.id)
    finally:
        web.stop()
    results = probe_results(log)
    print("egress matrix:", results)
    assert set(results) == set(targets), log[-3000:]
    assert all(verdict == "refused" for verdict in results.values()), results
    assert job.status == "success", (job.error, log[-3000:])
    assert "Hello, world!" in log


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_a_build_without_network_cannot_install_packages(api, worker, git_server):
    repo = git_server.repo("hermetic-" + new_id())
    # apt-get update exits 0 when it cannot download anything; the install then fails.
    repo.commit({"Dockerfile": BASE + "RUN apt-get update -qq; apt-get install -y -qq --no-install-recommends hello\n"})
    job = wait_final(submit(api, repo.url, network="none"), timeout=180)
    log = log_text(api, job.id)
    assert job.status == "failed"
    assert job.error_code == "BUILD_STEP_FAILED", (job.error_code, job.error)
    assert "this build runs without a network" in log


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_add_url_follows_the_egress_rules(api, worker, git_server, infra, host_server):
    gateway = build_network(infra)["gateway"]
    for url in (f"http://{gateway}:{host_server}/", f"http://127.0.0.1:{REGISTRY_ADDR.rsplit(':', 1)[1]}/v2/_catalog"):
        repo = git_server.repo("add-url-" + new_id())
        repo.commit({"Dockerfile": BASE + f"ADD {url} /fetched\n"})
        job = wait_final(submit(api, repo.url), timeout=120)
        assert job.status == "failed"
        assert job.error_code == "EGRESS_REFUSED", (job.error_code, job.error)
    # A URL the Dockerfile builds from a variable we do not know is denied by BuildKit itself.
    repo = git_server.repo("add-url-arg-" + new_id())
    repo.commit({"Dockerfile": BASE + "ARG WHERE\nADD http://$WHERE/ /fetched\n"})
    job = wait_final(submit(api, repo.url), timeout=120)
    assert job.status == "failed"
    assert job.error_code == "EGRESS_REFUSED", (job.error_code, job.error, log_text(api, job.id)[-2000:])


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_a_build_cannot_start_from_another_tenants_image(api, worker, git_server):
    victim = git_server.repo("victim-" + new_id())
    victim.commit({"Dockerfile": BASE + "RUN echo secret-of-the-victim > /secret\n"})
    victim_job = wait_final(submit(api, victim.url), timeout=120)
    assert victim_job.status == "success", victim_job.error
    thief = git_server.repo("thief-" + new_id())
    thief.commit({"Dockerfile": f"FROM {victim_job.image_tag}\nRUN cat /secret\n"})
    response = api.post("/api/v1/jobs", {
        "id": new_id(), "projectId": "other-project", "userId": "thief", "sourceType": "git",
        "sourceInfo": {"gitRepository": thief.url},
    }, format="json")
    assert response.status_code == 201, response.content
    job = wait_final(response.json()["id"], timeout=120)
    assert job.status == "failed"
    assert job.error_code == "EGRESS_REFUSED", (job.error_code, job.error)


@pytest.mark.e2e
def test_the_registry_refuses_anonymous_reads_and_pushes_and_takes_the_builders(infra):
    base = f"http://{REGISTRY_ADDR}"
    for method, path in (("GET", "/v2/_catalog"), ("POST", "/v2/intruder/app/blobs/uploads/"),
                         ("DELETE", "/v2/tester/demo-project/manifests/sha256:" + "0" * 64)):
        request = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
        assert refused.value.code == 401, (method, path)
    # The builder's credentials push.
    digest = registry.push_image(REGISTRY_ADDR, "tester/pushed-by-builder", ("t1",),
                                 {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                                  "config": {}}, [])
    assert registry.manifest_digest(REGISTRY_ADDR, "tester/pushed-by-builder", "t1") == digest


@contextlib.contextmanager
def buildkitd_with(tmp_path: Path, network: buildnet.BuildNetwork):
    addr = f"unix://{tmp_path}/bk/buildkitd.sock"
    proc = localservices.start_buildkitd(tmp_path, addr, REGISTRY_ADDR, tmp_path / "buildkitd.log", network=network)
    try:
        yield addr
    finally:
        localservices.stop(proc)


def buildctl_probe(addr: str, tmp_path: Path, targets: dict) -> dict[str, str]:
    context = tmp_path / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(BASE + probe_step(targets))
    argv = ["buildctl", "--addr", addr, "build", "--progress", "plain", "--no-cache", "--frontend", "dockerfile.v0",
            "--local", f"context={context}", "--local", f"dockerfile={context}"]
    with registry.docker_config(REGISTRY_ADDR) as config_dir:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "DOCKER_CONFIG": config_dir})
    assert result.returncode == 0, result.stderr[-3000:]
    return probe_results(result.stderr)


@pytest.mark.e2e
def test_an_egress_allow_entry_opens_exactly_one_target(infra, private_host, host_server, tmp_path):
    network = buildnet.from_environment(tmp_path / "buildnet")
    network.allow = buildnet.parse_allow(f"{private_host.address}:{private_host.ports[0]}")
    with buildkitd_with(tmp_path, network) as addr:
        targets = {
            "allowed": (private_host.address, private_host.ports[0]),
            "same-host-other-port": (private_host.address, private_host.ports[1]),
            "host": (network.gateway, host_server),
        }
        assert network.installed()
        results = buildctl_probe(addr, tmp_path, targets)
    print("egress matrix with BUILD_EGRESS_ALLOW:", results)
    assert results == {"allowed": "open", "same-host-other-port": "refused", "host": "refused"}
    # Stopping buildkitd takes the policy and the bridge away with it.
    assert not network.installed()
    assert subprocess.run(["ip", "link", "show", network.bridge], capture_output=True).returncode != 0


@pytest.mark.e2e
def test_without_the_policy_the_same_targets_are_reachable(infra, private_host, host_server, tmp_path):
    """The control experiment: what the policy refuses above is otherwise open."""
    network = buildnet.from_environment(tmp_path / "buildnet")
    with buildkitd_with(tmp_path, network) as addr:
        network.remove(delete_bridge=False)
        targets = {"private-host": (private_host.address, private_host.ports[0]),
                   "host-via-gateway": (network.gateway, host_server)}
        results = buildctl_probe(addr, tmp_path, targets)
    assert results == {"private-host": "open", "host-via-gateway": "open"}


def test_the_policy_is_idempotent_and_removed_whole(tmp_path):
    network = buildnet.BuildNetwork(name=f"hubfly-t{secrets.token_hex(3)}", bridge=f"hbt{secrets.token_hex(4)}",
                                    subnet="", state_dir=tmp_path, dns=[ipaddress.ip_address("10.255.0.53")])
    try:
        network.apply()
        first = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
        network.apply()
        second = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
        assert first == second
        assert network.installed()
        assert buildnet.read_policy(tmp_path)["subnet"] == network.subnet
    finally:
        network.remove()
    assert not network.installed()
    assert network.chain not in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert network.chain not in subprocess.run(["ip6tables", "-S"], capture_output=True, text=True).stdout


def test_egress_allow_values_are_checked():
    assert [str(e) for e in buildnet.parse_allow("10.1.2.0/24, 192.0.2.7:3128, [fd00::1]:443")] == [
        "10.1.2.0/24", "192.0.2.7/32 port 3128", "fd00::1/128 port 443"]
    for bad in ("nonsense", "10.0.0.1:99999", "host-that-does-not-resolve.invalid:80"):
        with pytest.raises(buildnet.NetworkError):
            buildnet.parse_allow(bad)


def test_denied_ranges_cover_what_the_issue_lists():
    denied = [ipaddress.ip_network(c) for c in buildnet.DENIED_V4 + buildnet.DENIED_V6]
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                    "224.0.0.1", "240.0.0.1", "255.255.255.255", "0.0.0.0", "::1", "fe80::1", "fc00::1",
                    "fd00::2", "ff02::1", "fec0::1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::ffff:127.0.0.1",
                    "::127.0.0.1"):
        assert any(ipaddress.ip_address(address) in net for net in denied), address
    for address in ("203.0.113.7", "1.1.1.1", "2606:4700::1111"):
        assert not any(ipaddress.ip_address(address) in net for net in denied), address


@pytest.mark.e2e
def test_readiness_reports_whether_builds_are_isolated(infra, tmp_path, settings):
    from builds.services.operations import health

    assert health.checks()["buildNetwork"] == "ok"
    addr = f"unix://{tmp_path}/bk/buildkitd.sock"
    proc = localservices.start_buildkitd(tmp_path, addr, REGISTRY_ADDR, tmp_path / "buildkitd.log", network=False)
    try:
        settings.BUILDKIT_ADDR = addr
        assert "host network: builds are not isolated" in health.checks()["buildNetwork"]
    finally:
        localservices.stop(proc)


@pytest.mark.parametrize("dockerfile, refused", [
    ("FROM debian\nADD http://127.0.0.1:5000/v2/_catalog /x\n", True),
    ("FROM debian\nADD --chmod=644 http://10.0.0.8/file /x\n", True),
    ("FROM debian\nADD [\"http://[::1]:8080/\", \"/x\"]\n", True),
    ("FROM debian\nARG WHERE=169.254.169.254\nADD http://${WHERE}/latest/meta-data /x\n", True),
    ("FROM debian\nADD \\\n  http://192.168.1.1/x \\\n  /x\n", True),
    ("FROM debian\nADD git@127.0.0.1:team/app.git /src\n", True),
    ("FROM debian\nADD http://1.1.1.1/file /x\n", False),
    ("FROM debian\nADD ./local-file /x\nCOPY . /app\n", False),
    ("FROM 127.0.0.1:5999/someone/else:1\n", False),  # not our registry: the policy keeps it denied
])
def test_add_sources_are_checked_before_the_build(dockerfile, refused, settings):
    from builds.services.steps import egress

    settings.BUILD_EGRESS_ALLOW = []
    check = egress.check_dockerfile(dockerfile, build_args={}, network_none=False,
                                    own_repository=f"{settings.REGISTRY_URL}/tester/demo-project")
    assert bool(check.refused) == refused, check.refused


def test_the_source_policy_denies_first_and_allows_back_what_was_checked(settings):
    from builds.services.steps import egress

    settings.BUILD_EGRESS_ALLOW = buildnet.parse_allow("10.9.9.9:3128")
    own = f"{settings.REGISTRY_URL}/tester/demo-project"
    check = egress.check_dockerfile(
        f"FROM {settings.REGISTRY_URL}/tester/demo-project:old\nADD http://1.1.1.1/a /a\nADD http://10.9.9.9:3128/b /b\n"
        "FROM 1.1.1.1:443/org/image:1\n",
        build_args={}, network_none=False, own_repository=own)
    assert not check.refused
    rules = [(r["action"], r["selector"]["identifier"]) for r in check.policy(own)["rules"]]
    assert rules[:4] == [("DENY", "docker-image://*"), ("DENY", "http://*"), ("DENY", "https://*"), ("DENY", "git://*")]
    allowed = {identifier for action, identifier in rules if action == "ALLOW"}
    assert {"docker-image://docker.io/*", f"docker-image://{own}:*", "http://1.1.1.1/*", "http://10.9.9.9:*",
            "docker-image://1.1.1.1:443/*"} <= allowed
    # Another project's image in our registry is refused outright; without a network, every URL.
    assert egress.check_dockerfile(f"FROM {settings.REGISTRY_URL}/victim/app:1\n", build_args={},
                                   network_none=False, own_repository=own).refused
    assert egress.check_dockerfile("FROM debian\nADD http://1.1.1.1/a /a\n", build_args={},
                                   network_none=True, own_repository=own).refused


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_a_job_named_like_an_official_image_cannot_replace_what_builds_pull(api, worker, git_server, infra):
    """userId library, projectId debian, job id bookworm-slim: the push lands on the job's own
    repository, never on the docker.io mirror's library/debian that every FROM debian pulls."""
    from tests.support import baseimages

    mirror_repo, tags = baseimages.mirror_repository("debian")
    before = registry.manifest_digest(REGISTRY_ADDR, mirror_repo, tags[0])
    planted = git_server.repo("planted-" + new_id())
    planted.commit({"Dockerfile": "FROM scratch\nCOPY planted /planted\n", "planted": "not debian\n"})
    job_id = "bookworm-slim"
    Job.objects.filter(pk=job_id).delete()
    response = api.post("/api/v1/jobs", {
        "id": job_id, "projectId": "debian", "userId": "library", "sourceType": "git",
        "sourceInfo": {"gitRepository": planted.url},
    }, format="json")
    assert response.status_code == 201, response.content
    job = wait_final(job_id, timeout=120)
    assert job.status == "success", job.error
    assert registry.manifest_digest(REGISTRY_ADDR, mirror_repo, tags[0]) == before
    assert job.image_digest != before


@pytest.mark.e2e
def test_build_network_none_closes_all_egress_for_the_deployment(infra, host_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_NETWORK", "none")
    network = buildnet.from_environment(tmp_path / "buildnet")
    assert network.mode == "none"
    with buildkitd_with(tmp_path, network) as addr:
        results = buildctl_probe(addr, tmp_path, {"host": (network.gateway, host_server)})
        assert results == {"host": "refused"}
        context = tmp_path / "install"
        context.mkdir()
        (context / "Dockerfile").write_text(
            BASE + "RUN apt-get update -qq; apt-get install -y -qq --no-install-recommends hello\n")
        argv = ["buildctl", "--addr", addr, "build", "--progress", "plain", "--no-cache", "--frontend",
                "dockerfile.v0", "--local", f"context={context}", "--local", f"dockerfile={context}"]
        with registry.docker_config(REGISTRY_ADDR) as config_dir:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "DOCKER_CONFIG": config_dir})
    assert result.returncode != 0
    assert "Unable to locate package hello" in result.stderr or "Temporary failure" in result.stderr, \
        result.stderr[-2000:]
