"""Image names: `<REGISTRY_URL>/<userId>/<projectId>:<jobId>`, one-to-one over (userId, projectId).

A repository component is the id itself when the id is already a lossless registry name:
lower-case `[a-z0-9]` runs joined by single `.`, `_` or `-`, at most 64 characters. Any other id
gets a readable form (lower-cased, other characters and separator runs made `-`, trimmed,
shortened to 46 characters), then `--` and the first 16 hex digits of the SHA-256 of the exact
id: `Alice` -> `alice--<hash>`, `a__b` -> `a-b--<hash>`, `My_Org` -> `my_org--<hash>`. A
lossless id never contains `--`, so it never equals a hashed name, and two ids that read alike
differ in their hash. The components are joined with `/`, which neither contains, so two
(userId, projectId) pairs never share a repository or a registry build cache.

The tag is the job id, which is already limited to `[A-Za-z0-9._-]{1,128}`; an id starting with
`.` or `-` gets a `job` prefix, since a tag must start with a letter, digit or `_`. Each
project's registry build cache lives at `<REGISTRY_URL>/<userId>/<projectId>/buildcache:latest`.

Cache mounts (`RUN --mount=type=cache`) are namespaced by an HMAC of the ids under a server-side
secret, so no Dockerfile can name another project's cache mount.
"""

import hashlib
import hmac
import re

from django.conf import settings

MAX_COMPONENT = 64
HASH_DIGITS = 16  # 64 bits of SHA-256: a collision between two ids that read alike is negligible
_LOSSLESS = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")


def repository_component(value: str) -> str:
    if len(value) <= MAX_COMPONENT and _LOSSLESS.fullmatch(value):
        return value
    readable = re.sub(r"[^a-z0-9._-]+", "-", value.lower())
    readable = re.sub(r"[._-]{2,}", "-", readable).strip("._-")
    readable = readable[:MAX_COMPONENT - 2 - HASH_DIGITS].strip("._-") or "x"
    return f"{readable}--{hashlib.sha256(value.encode()).hexdigest()[:HASH_DIGITS]}"


def image_repository(user_id: str, project_id: str) -> str:
    return f"{settings.REGISTRY_URL}/{repository_component(user_id)}/{repository_component(project_id)}"


def image_tag(job_id: str) -> str:
    tag = job_id if re.match(r"^[A-Za-z0-9_]", job_id) else f"job{job_id}"
    return tag[:128]


def image_name(user_id: str, project_id: str, job_id: str) -> str:
    return f"{image_repository(user_id, project_id)}:{image_tag(job_id)}"


def cache_ref(user_id: str, project_id: str) -> str:
    # Its own repository: exporting the cache into the image's repository while the image is
    # pushed there made both upload the same layer at once ("provided digest did not match").
    return f"{image_repository(user_id, project_id)}/buildcache:latest"


def workspace_name(job_id: str, lease_hex: str) -> str:
    """A directory name that is safe whatever the id holds."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:16] + "-" + lease_hex[:12]


def cache_namespace(user_id: str, project_id: str) -> str:
    """A per-project id for BuildKit cache mounts: keyed with CACHE_NAMESPACE_SECRET, so knowing
    another tenant's ids is not enough to name (and read or poison) their caches."""
    key = settings.CACHE_NAMESPACE_SECRET.encode()
    return "p" + hmac.new(key, f"{user_id}\0{project_id}".encode(), hashlib.sha256).hexdigest()[:32]
