"""What a job may name as its source: repository URL, ref and commit rules.

Used by the API at submit time and again by the worker right before fetching, because a
host's DNS answer can change between the two (the check is on resolved addresses).
"""

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._~-]+)@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>[^:].*)$")
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
MAX_URL_LENGTH = 2048


class SourceError(ValueError):
    """The source names something we refuse to fetch; the message says why."""


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
    return Repository(url=url, scheme=scheme, host=host.lower(), port=port)


def _host_is_listed(host: str, port: int | None) -> bool:
    allowed = settings.GIT_ALLOWED_HOSTS
    return host in allowed or (port is not None and f"{host}:{port}" in allowed)


def check_host_allowed(repo: Repository) -> None:
    """Refuse hosts that resolve to loopback, private, link-local or otherwise internal
    addresses, unless the operator listed them in GIT_ALLOWED_HOSTS."""
    if _host_is_listed(repo.host, repo.port):
        return
    try:
        infos = socket.getaddrinfo(repo.host, repo.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        raise SourceError(f"git host {repo.host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise SourceError(
                f"git host {repo.host!r} resolves to a non-public address ({address}); "
                "list it in GIT_ALLOWED_HOSTS to allow it"
            )


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
