"""What a job may name as its source: repository URL, ref and commit rules.

Used by the API at submit time and again by the worker right before fetching, because a
host's DNS answer can change between the two (the check is on resolved addresses). The
worker's check returns the addresses it accepted and git is pinned to them, so an answer that
changes again between the check and the fetch is never used.
"""

import contextlib
import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
# IPv6 ranges that carry an IPv4 address (judged as that address) and ranges Python 3.11's
# `is_global` calls global although they are not reachable public unicast.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NOT_GLOBAL = (ipaddress.ip_network("fec0::/10"), ipaddress.ip_network("64:ff9b:1::/48"))
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._~-]+)@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>[^:].*)$")
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
MAX_URL_LENGTH = 2048
# The API's check may reuse a host's answer this long (a burst of creations names the same
# host); the worker's check before a fetch always asks again.
SUBMIT_DNS_CACHE_SECONDS = 10.0
_MAX_CACHED_HOSTS = 1024
_resolved: dict[tuple[str, int], tuple[float, list]] = {}


class SourceError(ValueError):
    """The source names something we refuse to fetch; the message says why."""


class WouldResolve(Exception):
    """A host's DNS answer was needed where no blocking call may be made (the web process's
    event loop, builds.api.creations) and none was kept: the caller asks again where it may
    block. Not an OSError: check_host_allowed must not take it for a failed lookup."""


_no_lookups = threading.local()


@contextlib.contextmanager
def kept_answers_only():
    """In this thread, a DNS question without a kept answer raises WouldResolve."""
    _no_lookups.on = True
    try:
        yield
    finally:
        _no_lookups.on = False


@dataclass(frozen=True)
class Repository:
    url: str
    scheme: str  # https, http or ssh
    host: str
    port: int | None


def parse_repository(url: str) -> Repository:
    if not isinstance(url, str) or not url.strip():
        raise SourceError("gitRepository is required")
    if len(url) > MAX_URL_LENGTH:
        raise SourceError(f"gitRepository is longer than {MAX_URL_LENGTH} characters")
    if url != url.strip() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise SourceError("gitRepository must not contain spaces or control characters")
    if url.startswith("-"):
        raise SourceError("gitRepository must not start with '-'")
    if "::" in url.split("/", 1)[0]:
        raise SourceError("git remote helpers (such as ext::) are not allowed")

    match = _SCP_LIKE.match(url)
    if match and "://" not in url:
        host, path, scheme, port = match["host"].strip("[]"), match["path"], "ssh", None
    else:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http", "ssh"):
            raise SourceError("gitRepository must be an https://, http://, ssh:// or user@host:path URL")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise SourceError("gitRepository has an invalid port") from None
        if not host:
            raise SourceError("gitRepository has no host")
        path = parts.path
        if parts.query or parts.fragment:
            raise SourceError("gitRepository must not have a query or fragment")
    if any(segment == ".." for segment in re.split(r"[/\\]", path)):
        raise SourceError("gitRepository must not contain '..' path segments")
    if not path.strip("/"):
        raise SourceError("gitRepository has no repository path")
    if host.startswith("-"):
        raise SourceError("gitRepository host must not start with '-'")
    host = host.lower()
    # The host git connects to must be the one checked and pinned: no IDN or escapes that
    # git's resolver could read differently from ours.
    if not _HOST.match(host) and not _is_ipv6(host):
        raise SourceError("gitRepository host must be a DNS name (ASCII, xn-- for IDN, no final dot) or an IP address")
    return Repository(url=url, scheme=scheme, host=host, port=port)


def _is_ipv6(host: str) -> bool:
    if "%" in host:  # a zone: meaningful only on this machine's links
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _host_is_listed(host: str, port: int | None, allowed: list[str]) -> bool:
    return host in allowed or (port is not None and f"{host}:{port}" in allowed)


def _allowed_networks(allowed: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in allowed:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            pass  # a host name (or host:port)
    return networks


def carried_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64, 6to4, IPv4-compatible);
    any other address stands for itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: list[str] | None = None) -> bool:
    """True for addresses a fetch must not connect to: anything but public unicast, judged by
    the IPv4 address an IPv6 one carries, unless `allowed` (GIT_ALLOWED_HOSTS by default) lists
    it or its network."""
    carried = carried_address(address)
    networks = _allowed_networks(settings.GIT_ALLOWED_HOSTS if allowed is None else allowed)
    if any(a in network for network in networks for a in (address, carried)):
        return False
    if any(carried in network for network in _NOT_GLOBAL):
        return True
    return not carried.is_global or carried.is_multicast


def _getaddrinfo(host: str, port: int, max_age_seconds: float) -> list:
    """socket.getaddrinfo, or its answer of at most max_age_seconds ago (answers only: a
    failure is asked again)."""
    key = (host, port)
    cached = _resolved.get(key)
    now = time.monotonic()
    if cached and now - cached[0] < max_age_seconds:
        return cached[1]
    if getattr(_no_lookups, "on", False):
        raise WouldResolve(host)
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    if max_age_seconds > 0:
        if len(_resolved) >= _MAX_CACHED_HOSTS:
            _resolved.clear()
        _resolved[key] = (now, infos)
    return infos


def check_host_allowed(repo: Repository, *, allowed: list[str] | None = None, what: str = "git host",
                       setting: str = "GIT_ALLOWED_HOSTS", max_age_seconds: float = 0) -> tuple[str, ...]:
    """Refuse hosts that resolve to loopback, private, link-local or otherwise internal
    addresses, unless `allowed` (GIT_ALLOWED_HOSTS by default; `setting` names it in the
    message) lists the host or the addresses. Returns the addresses accepted, for the fetch to
    connect to; empty for a host listed by name (any address will do).
    `max_age_seconds`: how old a DNS answer may be reused (the rules apply to it anew)."""
    allowed = settings.GIT_ALLOWED_HOSTS if allowed is None else allowed
    if _host_is_listed(repo.host, repo.port, allowed):
        return ()
    try:
        infos = _getaddrinfo(repo.host, repo.port or 443, max_age_seconds)
    except (socket.gaierror, UnicodeError, OSError):
        raise SourceError(f"{what} {repo.host!r} does not resolve") from None
    accepted: list[str] = []
    for info in infos:
        text = info[4][0]
        address = ipaddress.ip_address(text)
        if "%" in text or address_refused(address, allowed):
            raise SourceError(
                f"{what} {repo.host!r} resolves to a non-public address ({address}); "
                f"list it in {setting} to allow it"
            )
        if text not in accepted:
            accepted.append(text)
    if not accepted:
        raise SourceError(f"{what} {repo.host!r} does not resolve")
    return tuple(accepted)


def validate_ref(ref: str) -> str:
    """git's ref-name rules (check-ref-format), plus: never starts with '-'."""
    if not ref or len(ref) > 255:
        raise SourceError("ref must be 1-255 characters")
    if ref.startswith("-"):
        raise SourceError("ref must not start with '-'")
    if ref == "@" or "@{" in ref or ".." in ref or "//" in ref or _REF_FORBIDDEN.search(ref):
        raise SourceError("ref is not a valid git ref name")
    if ref.startswith("/") or ref.endswith("/") or ref.endswith("."):
        raise SourceError("ref is not a valid git ref name")
    for component in ref.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            raise SourceError("ref is not a valid git ref name")
    return ref


def validate_commit(sha: str) -> str:
    if not _SHA.match(sha or ""):
        raise SourceError("commitSha must be 4-64 hexadecimal characters")
    return sha.lower()


def validate_relative_path(value: str, field: str) -> str:
    """A path inside the repository: relative, no '..', no control characters. '' means the root."""
    if len(value) > 1024:
        raise SourceError(f"{field} is longer than 1024 characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or "\\" in value:
        raise SourceError(f"{field} must not contain control characters or backslashes")
    if value.startswith("/") or value.startswith("-"):
        raise SourceError(f"{field} must be a relative path inside the repository")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise SourceError(f"{field} must not contain '..'")
    return "/".join(parts)
