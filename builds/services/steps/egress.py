"""What buildkitd itself may fetch for a build: `ADD <url>` sources and images.

RUN steps are contained by the build network's egress policy (infra.buildnet), but buildkitd
fetches `ADD https://...`, `ADD git@...` and every image from the host's own network. So each
build gets a BuildKit source policy (`buildctl --source-policy-file`) that denies every HTTP,
git and image source, then allows back what this module checked:

- images from Docker Hub (`docker.io/...`, the official images every Dockerfile starts from);
- images from another registry named literally in a `FROM` line, when its host resolves to
  public addresses (or is listed in BUILD_EGRESS_ALLOW); from the builder's own registry only
  the job's own repository, so no tenant builds FROM another tenant's image;
- `ADD` URLs named literally in the Dockerfile, by host, under the same rules as RUN steps;
  none at all when the build runs without a network.

A source the Dockerfile spells in a way we do not read here (a URL built from a variable the
build does not define, `COPY --from=<image>`) stays denied: the build fails with
EGRESS_REFUSED rather than fetching something nobody checked.
"""

import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from builds.joblog.masking import mask_url_credentials
from infra import buildnet

_ARG = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")
_SCP_GIT = re.compile(r"^[A-Za-z0-9._~-]+@(?P<host>[A-Za-z0-9.-]+):")
_DENIED = [ipaddress.ip_network(c) for c in buildnet.DENIED_V4 + buildnet.DENIED_V6]


@dataclass
class SourceCheck:
    allowed_hosts: set[str] = field(default_factory=set)   # for ADD: http(s) and git hosts
    image_hosts: set[str] = field(default_factory=set)     # registries other than docker.io
    refused: list[str] = field(default_factory=list)       # why, one line each

    def policy(self, own_repository: str) -> dict:
        """The BuildKit source policy: deny, then allow back (the last matching rule wins)."""
        rules = [_rule("DENY", pattern) for pattern in ("docker-image://*", "http://*", "https://*", "git://*")]
        rules.append(_rule("ALLOW", "docker-image://docker.io/*"))
        for host in sorted(self.image_hosts):
            rules.append(_rule("ALLOW", f"docker-image://{host}/*"))
        rules.append(_rule("ALLOW", f"docker-image://{own_repository}:*"))
        rules.append(_rule("ALLOW", f"docker-image://{own_repository}@*"))
        for host in sorted(self.allowed_hosts):
            for scheme in ("http", "https", "git"):
                rules.append(_rule("ALLOW", f"{scheme}://{host}/*"))
                rules.append(_rule("ALLOW", f"{scheme}://{host}:*"))
        return {"rules": rules}


def image_name(reference: str) -> str:
    """An image reference as BuildKit names it: one without a registry is Docker Hub's."""
    first, _, rest = reference.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        return f"docker.io/{reference if rest else 'library/' + reference}"
    return reference


def allow_image(reference: str) -> list[dict]:
    """Rules that let buildkitd pull one operator-chosen image (the SBOM scanner)."""
    reference = image_name(reference)
    return [_rule("ALLOW", f"docker-image://{reference}"), _rule("ALLOW", f"docker-image://{reference}@*")]


def _rule(action: str, identifier: str) -> dict:
    return {"action": action, "selector": {"identifier": identifier, "matchType": "WILDCARD"}}


def check_dockerfile(text: str, *, build_args: dict[str, str], network_none: bool, own_repository: str) -> SourceCheck:
    """Reads the Dockerfile's FROM and ADD sources and checks each against the egress rules."""
    check = SourceCheck()
    args: dict[str, str] = {}
    for instruction, words in _instructions(text):
        if instruction == "ARG":
            for word in words:
                name, _, default = word.partition("=")
                args[name] = build_args.get(name, _expand(default, args))
        elif instruction == "FROM":
            refs = [w for w in words if not w.startswith("--")]
            if refs:
                _check_image(_expand(refs[0], args), check, own_repository)
        elif instruction == "ADD":
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                _check_url(_expand(source, args), check, network_none)
    return check


def _instructions(text: str):
    """(INSTRUCTION, words) for each instruction, with line continuations joined."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current:
        logical.append(current)
    for line in logical:
        parts = line.split(None, 1)
        if not parts:
            continue
        rest = parts[1] if len(parts) > 1 else ""
        words = _json_words(rest) if rest.lstrip().startswith("[") else rest.split()
        yield parts[0].upper(), words


def _json_words(rest: str) -> list[str]:
    try:
        value = json.loads(rest)
    except ValueError:
        return rest.split()
    return [str(v) for v in value] if isinstance(value, list) else rest.split()


def _expand(value: str, args: dict[str, str]) -> str:
    return _ARG.sub(lambda m: args.get(m[1] or m[2], m[0]), value)


def _check_url(source: str, check: SourceCheck, network_none: bool) -> None:
    scp = _SCP_GIT.match(source)
    if scp:
        host, port = scp["host"].lower(), 22
    elif re.match(r"^(https?|git|ssh)://", source, re.I):
        try:
            parts = urlsplit(source)
            default = {"http": 80, "https": 443, "git": 9418, "ssh": 22}[parts.scheme.lower()]
            host, port = (parts.hostname or "").lower(), parts.port or default
        except ValueError:
            check.refused.append(f"ADD {source[:200]}: not a valid URL")
            return
    else:
        return  # a path in the build context
    if "$" in source:
        return  # left denied by the policy: nothing we can check
    if network_none:
        check.refused.append(f"ADD {_safe(source)}: this build runs without a network")
        return
    reason = host_refusal(host, port)
    if reason:
        check.refused.append(f"ADD {_safe(source)}: {reason}")
    else:
        check.allowed_hosts.add(host)


def _check_image(ref: str, check: SourceCheck, own_repository: str) -> None:
    if "$" in ref or ref.lower() == "scratch":
        return
    first, _, rest = ref.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        return  # Docker Hub, allowed by the policy as it is
    host = first.lower()
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return
    if host == settings.REGISTRY_URL.lower():
        # Only the job's own repository: no tenant starts from another tenant's image.
        name = re.split(r"[:@]", rest, maxsplit=1)[0]
        if f"{host}/{name}" != own_repository.lower():
            check.refused.append(f"FROM {_safe(ref)}: images of other projects in the builder's registry are not available")
        return
    hostname, port = _split_host_port(host)
    if hostname is None:
        return  # not a reference BuildKit can resolve either
    if host_refusal(hostname, port) is None:
        check.image_hosts.add(host)


def _split_host_port(host: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(f"//{host}")
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def host_refusal(host: str, port: int | None) -> str | None:
    """Why buildkitd may not fetch from host, or None when it may: every address it resolves
    to must be public, or listed in BUILD_EGRESS_ALLOW."""
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return f"{host} does not resolve"
    allow = settings.BUILD_EGRESS_ALLOW
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if any(address in entry.network and entry.port in (None, port or 443) for entry in allow):
            continue
        if address in buildnet.host_addresses() or any(address in net for net in _DENIED):
            return f"{host} resolves to {address}, which builds may not reach"
    return None


def _safe(text: str) -> str:
    return mask_url_credentials(text)[:300]
