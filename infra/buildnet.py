"""The network every RUN step gets: a CNI bridge of its own, and an egress policy we own.

buildkitd runs each RUN step in a network namespace of its own, plugged into a bridge that only
build containers use (`cni_config`). The egress policy is a pair of iptables chains per bridge,
for IPv4 and IPv6, that we install when buildkitd starts and remove when it stops:

- `<chain>-IN`, jumped to from INPUT for packets coming in on the bridge: a build may talk to
  this host only for DNS on a configured resolver; everything else is refused. So every address
  of the host is closed (loopback, the bridge's own gateway, eth0's address...), whatever it is.
- `<chain>-FWD`, jumped to from FORWARD for packets from the bridge: DNS to the resolvers and the
  operator's `BUILD_EGRESS_ALLOW` entries pass; loopback, private, link-local, CGNAT, multicast
  and reserved ranges are refused; the rest (the public internet) passes, masqueraded by the
  bridge plugin. With `BUILD_NETWORK=none` nothing passes.

Refused means an answer at once (a TCP reset, an ICMP error), so a build that tries fails fast
with "connection refused" in its log rather than hanging. Applying is idempotent: whatever an
earlier run left under the same chain names is removed first.

Standard library only: it runs from infra.localservices (before Django) and alone in the
buildkitd container of docker-compose.yml (`python3 buildnet.py apply ...`, with no Django
settings there), so it reads its variables (BUILD_NETWORK, BUILD_SUBNET, BUILD_BRIDGE,
BUILD_EGRESS_ALLOW, CNI_BINARY_DIR) from the environment itself.
"""

import argparse
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Destinations a build may never reach (unless BUILD_EGRESS_ALLOW opens one). The documentation
# ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are not here: nothing on
# the internet routes them, so refusing them protects nothing, and some sandboxes use them for
# their public side.
DENIED_V4 = (
    "0.0.0.0/8",        # "this network"
    "10.0.0.0/8",       # private
    "100.64.0.0/10",    # CGNAT (carrier-grade NAT, and some clouds' metadata ranges)
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local (cloud metadata lives here)
    "172.16.0.0/12",    # private
    "192.0.0.0/24",     # IETF protocol assignments
    "192.168.0.0/16",   # private
    "198.18.0.0/15",    # benchmarking
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, and broadcast
)
DENIED_V6 = (
    "::/127",           # unspecified and loopback
    "::ffff:0:0/96",    # IPv4-mapped
    "::/96",            # IPv4-compatible (deprecated)
    "64:ff9b::/96",     # NAT64: would reach the IPv4 address it carries
    "64:ff9b:1::/48",   # local-use NAT64
    "100::/64",         # discard
    "2001::/23",        # IETF protocol assignments (Teredo among them)
    "2002::/16",        # 6to4: carries an IPv4 address
    "fc00::/7",         # unique local (private)
    "fe80::/10",        # link-local
    "fec0::/10",        # site-local (deprecated, still private)
    "ff00::/8",         # multicast
)
POLICY_VERSION = 1


class NetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class AllowEntry:
    """An operator's exception: a network (any port) or one address and port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None

    def __str__(self) -> str:
        return f"{self.network}" + (f" port {self.port}" if self.port else "")


def parse_allow(value: str, resolve=socket.getaddrinfo) -> list[AllowEntry]:
    """BUILD_EGRESS_ALLOW: comma-separated CIDRs, addresses, or host:port ([v6]:port).
    Host names are resolved once, when the policy is applied."""
    entries: list[AllowEntry] = []
    for raw in (part.strip() for part in value.split(",")):
        if not raw:
            continue
        try:
            entries.append(AllowEntry(ipaddress.ip_network(raw, strict=False)))
            continue
        except ValueError:
            pass
        host, sep, port_text = raw.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
            raise NetworkError(f"BUILD_EGRESS_ALLOW: {raw!r} is not a CIDR, an address or host:port")
        host = host.strip("[]")
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = resolve(host, int(port_text), proto=socket.IPPROTO_TCP)
            except (OSError, UnicodeError):
                raise NetworkError(f"BUILD_EGRESS_ALLOW: {host!r} does not resolve") from None
            addresses = sorted({ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}, key=str)
        for address in addresses:
            entries.append(AllowEntry(ipaddress.ip_network(address), int(port_text)))
    return entries


_host_addresses: set | None = None


def host_addresses() -> set:
    """Every address of this host's interfaces (read once per process)."""
    global _host_addresses
    if _host_addresses is None:
        found = set()
        try:
            out = subprocess.run([_ip_tool(), "-o", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
        except (NetworkError, OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            parts = line.split()
            for family in ("inet", "inet6"):
                if family in parts:
                    try:
                        found.add(ipaddress.ip_interface(parts[parts.index(family) + 1]).ip)
                    except (ValueError, IndexError):
                        pass
        _host_addresses = found
    return _host_addresses


def resolvers(path: str = "/etc/resolv.conf") -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The DNS servers a build container is given, as buildkitd picks them: the host's, or
    systemd-resolved's upstream servers when the host's are only its loopback stub (loopback
    servers cannot serve a container). With none, buildkitd falls back to public resolvers,
    which the policy lets through anyway."""
    found = _nameservers(path)
    if not found and Path("/run/systemd/resolve/resolv.conf").exists():
        found = _nameservers("/run/systemd/resolve/resolv.conf")
    return found


def _nameservers(path: str) -> list:
    found = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                address = ipaddress.ip_address(parts[1].split("%", 1)[0])
            except ValueError:
                continue
            if not address.is_loopback and address not in found:
                found.append(address)
    return found


@dataclass
class BuildNetwork:
    """One bridge for the build containers of one buildkitd, and its policy."""

    name: str                      # CNI network name, also the chains' suffix
    bridge: str                    # interface name, at most 15 characters
    subnet: str                    # IPv4 CIDR for the build containers
    state_dir: Path                # CNI IPAM state, the config file, the applied policy
    mode: str = "bridge"           # "bridge" (public egress) or "none" (no egress at all)
    allow: list[AllowEntry] = field(default_factory=list)
    dns: list = field(default_factory=list)

    def __post_init__(self):
        self.state_dir = Path(self.state_dir)
        if self.mode not in ("bridge", "none"):
            raise NetworkError(f"BUILD_NETWORK must be bridge or none; got {self.mode!r}")
        if len(self.bridge) > 15 or not self.bridge.replace("-", "").isalnum():
            raise NetworkError(f"bridge name {self.bridge!r} must be 1-15 letters, digits or '-'")
        if self.subnet:
            try:
                net = ipaddress.ip_network(self.subnet, strict=True)
            except ValueError:
                net = None
            if net is None or net.version != 4 or net.prefixlen > 28:
                raise NetworkError(f"BUILD_SUBNET must be an IPv4 network of at least 16 addresses; got {self.subnet!r}")

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def chain(self) -> str:
        # iptables chain names are at most 28 characters.
        return "HUBFLY-" + hashlib.sha256(self.name.encode()).hexdigest()[:10].upper()

    @property
    def config_path(self) -> Path:
        return self.state_dir / "cni.conflist"

    @property
    def policy_path(self) -> Path:
        return self.state_dir / "egress-policy.json"

    def cni_config(self) -> dict:
        return {
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": True,
                # Off: a build's packets to another build on the bridge must go through the
                # host's FORWARD chain (br_netfilter), where they are refused as private.
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "subnet": self.subnet,
                    "dataDir": str(self.state_dir / "ipam"),
                },
            }],
        }

    # --- the rules -------------------------------------------------------------------------

    def rules(self, version: int) -> dict[str, list[list[str]]]:
        """The chains' rules (iptables arguments after `-A <chain>`), for IPv4 or IPv6."""
        reject_tcp = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]
        reject_other = ["-j", "REJECT", "--reject-with",
                        "icmp-admin-prohibited" if version == 4 else "icmp6-adm-prohibited"]
        dns = [a for a in self.dns if a.version == version]
        allow = [e for e in self.allow if e.network.version == version]

        def accept_dns(target_rules: list) -> None:
            for address in dns:
                for proto in ("udp", "tcp"):
                    target_rules.append(["-d", str(address), "-p", proto, "--dport", "53", "-j", "ACCEPT"])

        def accept_allowed(target_rules: list) -> None:
            for entry in allow:
                if entry.port:
                    for proto in ("tcp", "udp"):
                        target_rules.append(["-d", str(entry.network), "-p", proto, "--dport", str(entry.port), "-j", "ACCEPT"])
                else:
                    target_rules.append(["-d", str(entry.network), "-j", "ACCEPT"])

        inbound: list[list[str]] = []
        forward: list[list[str]] = []
        if self.mode == "bridge":
            accept_dns(inbound)
            accept_allowed(inbound)
            accept_dns(forward)
            accept_allowed(forward)
            for cidr in DENIED_V4 if version == 4 else DENIED_V6:
                forward.append(["-d", cidr, *reject_tcp])
                forward.append(["-d", cidr, *reject_other])
            if version == 4:
                forward.append(["-j", "ACCEPT"])
        # Whatever is left is refused: the host in every mode, everything in mode none, and all
        # of IPv6 beyond the allow list (the bridge has no IPv6 route out).
        for chain_rules in (inbound, forward):
            chain_rules.append(reject_tcp)
            chain_rules.append(reject_other)
        return {f"{self.chain}-IN": inbound, f"{self.chain}-FWD": forward}

    def jumps(self) -> list[tuple[str, list[str]]]:
        """Where the chains hook in, first in their parent chain so nothing earlier accepts."""
        return [
            ("INPUT", ["-i", self.bridge, "-j", f"{self.chain}-IN"]),
            ("FORWARD", ["-i", self.bridge, "-j", f"{self.chain}-FWD"]),
            # Replies to connections a build opened (public egress), whatever FORWARD's policy.
            ("FORWARD", ["-o", self.bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]),
        ]

    def apply(self) -> None:
        """Create the bridge, write the CNI config and install the policy; safe to run again.
        Call it before buildkitd starts: the IPAM state of an earlier run is dropped."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.remove(delete_bridge=False)
        shutil.rmtree(self.state_dir / "ipam", ignore_errors=True)
        with _host_lock():
            self._create_bridge()
        _write(self.config_path, json.dumps(self.cni_config(), indent=2) + "\n")
        _sysctl("net/ipv4/ip_forward", "1")
        # Builds on the same bridge talk through FORWARD only when bridged frames go through
        # iptables; where br_netfilter is not loaded there is nothing to set.
        if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            _sysctl("net/bridge/bridge-nf-call-iptables", "1")
            _sysctl("net/bridge/bridge-nf-call-ip6tables", "1")
        for version in (4, 6):
            tool = _tool(version)
            for chain, chain_rules in self.rules(version).items():
                _run(tool, "-N", chain)
                for rule in chain_rules:
                    _run(tool, "-A", chain, *rule)
            for parent, rule in reversed(self.jumps()):
                _run(tool, "-I", parent, "1", *rule)
        _write(self.policy_path, json.dumps(self.describe(), indent=2) + "\n")

    def _create_bridge(self) -> None:
        """The bridge with its gateway address, made here rather than by the CNI plugin so that
        two buildkitds starting at once never pick the same subnet."""
        ip = _ip_tool()
        current = _bridge_subnet(ip, self.bridge)
        if self.subnet and current and current != self.subnet:
            subprocess.run([ip, "link", "delete", self.bridge], capture_output=True)
            current = None
        if not self.subnet:
            self.subnet = current or _free_subnet(ip)
        if not current:
            subprocess.run([ip, "link", "delete", self.bridge], capture_output=True)
            prefix = ipaddress.ip_network(self.subnet).prefixlen
            _check(ip, "link", "add", "name", self.bridge, "type", "bridge")
            _check(ip, "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _check(ip, "link", "set", self.bridge, "up")

    def remove(self, delete_bridge: bool = True) -> None:
        """Take out everything apply() installed; what is already gone is fine."""
        for version in (4, 6):
            tool = _tool(version)
            for parent, rule in self.jumps():
                while _run(tool, "-D", parent, *rule, check=False) == 0:
                    pass
            for chain in self.rules(version):
                _run(tool, "-F", chain, check=False)
                _run(tool, "-X", chain, check=False)
        try:
            self.policy_path.unlink()
        except FileNotFoundError:
            pass
        if delete_bridge:
            subprocess.run([_ip_tool(), "link", "delete", self.bridge], capture_output=True)

    def installed(self) -> bool:
        """True when every rule and jump of the policy is in place now."""
        for version in (4, 6):
            tool = _tool(version)
            for parent, rule in self.jumps():
                if _run(tool, "-C", parent, *rule, check=False) != 0:
                    return False
            for chain, chain_rules in self.rules(version).items():
                for rule in chain_rules:
                    if _run(tool, "-C", chain, *rule, check=False) != 0:
                        return False
        return True

    def describe(self) -> dict:
        return {
            "version": POLICY_VERSION,
            "mode": self.mode,
            "network": self.name,
            "bridge": self.bridge,
            "subnet": self.subnet,
            "gateway": self.gateway,
            "chain": self.chain,
            "dns": [str(a) for a in self.dns],
            "allow": [str(e) for e in self.allow],
            "denied": list(DENIED_V4 + DENIED_V6) if self.mode == "bridge" else ["0.0.0.0/0", "::/0"],
        }


def from_environment(state_dir: Path) -> BuildNetwork:
    """The build network of the buildkitd whose state lives in state_dir, as configured by
    BUILD_NETWORK, BUILD_SUBNET, BUILD_BRIDGE and BUILD_EGRESS_ALLOW. Without BUILD_BRIDGE and
    BUILD_SUBNET, each state directory gets a bridge of its own and the first free /24 of
    10.213.0.0/16, so several buildkitds (test sessions, benchmarks) can run side by side."""
    state_dir = Path(state_dir).resolve()
    tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return BuildNetwork(
        name=f"hubfly-{tag}",
        bridge=os.environ.get("BUILD_BRIDGE") or f"hb{tag}",
        subnet=os.environ.get("BUILD_SUBNET") or "",
        state_dir=state_dir,
        mode=(os.environ.get("BUILD_NETWORK", "bridge").strip().lower() or "bridge"),
        allow=parse_allow(os.environ.get("BUILD_EGRESS_ALLOW", "")),
        dns=resolvers(),
    )


def read_policy(state_dir: Path) -> dict | None:
    """The policy a running buildkitd's network has, as apply() recorded it."""
    try:
        return json.loads((Path(state_dir) / "egress-policy.json").read_text())
    except (OSError, ValueError):
        return None


def cni_binary_dir() -> str:
    for candidate in (os.environ.get("CNI_BINARY_DIR", ""), "/usr/lib/cni", "/opt/cni/bin"):
        if candidate and Path(candidate, "bridge").exists():
            return candidate
    raise NetworkError("the CNI plugins are not installed (Debian: containernetworking-plugins)")


def _ip_tool() -> str:
    found = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not found:
        raise NetworkError("ip is not installed (Debian: iproute2)")
    return found


def _check(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetworkError(f"{' '.join(argv[1:])}: {result.stderr.strip()}")


def _bridge_subnet(ip: str, bridge: str) -> str | None:
    out = subprocess.run([ip, "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return str(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return None


def _free_subnet(ip: str, pool: str = "10.213.0.0/16") -> str:
    """The first /24 of the pool that no route of this host overlaps."""
    out = subprocess.run([ip, "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    used = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit"):
            first = line.split()[1] if first != "default" and len(line.split()) > 1 else ""
        try:
            used.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    for candidate in ipaddress.ip_network(pool).subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return str(candidate)
    raise NetworkError(f"no free /24 left in {pool}; set BUILD_SUBNET")


class _host_lock:
    """One apply() at a time on this host (subnet choice, xtables)."""

    def __enter__(self):
        self._file = open("/run/lock/hubfly-buildnet.lock" if Path("/run/lock").is_dir() else "/tmp/hubfly-buildnet.lock", "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._file.close()


def _tool(version: int) -> str:
    name = "iptables" if version == 4 else "ip6tables"
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise NetworkError(f"{name} is not installed (Debian: iptables)")
    return found


def _run(*argv: str, check: bool = True) -> int:
    # -w: wait for the xtables lock rather than fail when another tool holds it.
    result = subprocess.run([argv[0], "-w", "5", *argv[1:]], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.returncode


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as exc:
        raise NetworkError(f"cannot set {key.replace('/', '.')}={value}: {exc}") from None


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.buildnet")
    parser.add_argument("command", choices=("apply", "remove", "check", "show"))
    parser.add_argument("--state-dir", default=os.environ.get("BUILD_NETWORK_STATE", "/var/lib/hubfly-net"))
    args = parser.parse_args(argv)
    try:
        network = from_environment(Path(args.state_dir))
        if args.command == "apply":
            network.apply()
        elif args.command == "remove":
            network.remove()
        elif args.command == "check":
            if not network.installed():
                print("the egress policy is not installed", file=sys.stderr)
                return 1
        print(json.dumps(network.describe(), indent=2))
    except NetworkError as exc:
        print(f"buildnet: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
