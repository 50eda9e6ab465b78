"""Image names: `<REGISTRY_URL>/<userId>/<projectId>:<jobId>`.

Repository components are lower-cased and reduced to the characters a registry accepts
(`[a-z0-9]` separated by single `.`, `_` or `-`). The tag is the job id, which is already
limited to `[A-Za-z0-9._-]{1,128}`; an id starting with `.` or `-` gets a `job` prefix, since a
tag must start with a letter, digit or `_`. Each project's registry build cache lives at
`<REGISTRY_URL>/<userId>/<projectId>/buildcache:latest`.
"""

import hashlib
import re

from django.conf import settings


def repository_component(value: str) -> str:
    text = re.sub(r"[^a-z0-9._-]+", "-", value.lower())
    text = re.sub(r"[._-]{2,}", "-", text).strip("._-")
    return text[:64].strip("._-") or "x" + hashlib.sha256(value.encode()).hexdigest()[:8]


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
    """A per-project id for BuildKit cache mounts (hashed: ids may collide once sanitised)."""
    return "p" + hashlib.sha256(f"{user_id}\0{project_id}".encode()).hexdigest()[:24]
