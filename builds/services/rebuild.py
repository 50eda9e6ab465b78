"""A rebuild is a new job with the source and settings of an earlier one.

The backend knows jobs by id, so a rebuild gets a new, recognisable one: `<original id>-r<n>`
with the next free n (a rebuild of `app-7-r2` is `app-7-r3`, not `app-7-r2-r1`), shortened
at the front part to stay within 128 characters.
"""

import re

from builds.models import Job
from builds.services import jobs

MAX_ID_LENGTH = 128
_SUFFIX = re.compile(r"-r(\d+)$")


def rebuild_id(job_id: str) -> str:
    match = _SUFFIX.search(job_id)
    base = job_id[: match.start()] if match else job_id
    n = int(match[1]) + 1 if match else 1
    while True:
        suffix = f"-r{n}"
        candidate = base[: MAX_ID_LENGTH - len(suffix)] + suffix
        if not Job.objects.filter(pk=candidate).exists():
            return candidate
        n += 1


def rebuild_request(job: Job) -> dict:
    """The job's original request (credentials and secret values included, decrypted) under a
    new id, for the same validation and `jobs.job_create` as an API request."""
    return {
        "id": rebuild_id(job.id),
        "projectId": job.project_id,
        "userId": job.user_id,
        "sourceType": job.source_type,
        "sourceInfo": dict(job.source_info or {}),
        "buildConfig": jobs.build_config_with_secrets(job),
        **({"callbackUrl": job.callback_url} if job.callback_url else {}),
    }
