"""A job as the service shows it, written once: the API's answer (`job_json`) and the webhook's
body, a documented subset of the same fields (`outcome_json`, `CALLBACK_FIELDS`).

The API's views render them through builds/api/schema.py's JobOutput and JobOutcomeOutput, the
classes the OpenAPI schema is made from (a test keeps their fields equal to what is written
here); the lean reads (builds/api/reads.py) and the worker's webhook, which load no DRF, call
these functions directly."""

from builds import errors
from builds.joblog import masking
from builds.models import PRIORITY_NAMES, Job, Status
from builds.services.state import queue

# The fields of a job the outcome webhook posts, in the API's order.
CALLBACK_FIELDS = (
    "id", "projectId", "userId", "status", "imageTag", "imageDigest", "commitSha", "retryCount",
    "errorCode", "error", "failure", "warnings", "logPath", "startedAt", "finishedAt", "durationSeconds",
    "image", "steps", "cache", "queuedSeconds", "fetchSeconds", "buildSeconds", "pushSeconds",
)


def iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def masked_source_info(job: Job) -> dict:
    info = dict(job.source_info or {})
    if "gitRepository" in info:
        info["gitRepository"] = masking.mask_url_credentials(info["gitRepository"])
    return info


def masked_build_config(job: Job) -> dict:
    config = dict(job.build_config or {})
    secret_keys = config.get("secrets") or []
    if config.get("env") or secret_keys:
        shown = {k: (masking.MASK if k in secret_keys else v) for k, v in (config.get("env") or {}).items()}
        config["env"] = {**shown, **{k: masking.MASK for k in secret_keys}}
    return config


def report_fields(job: Job) -> dict:
    """What was built (`image`, `steps`, `cache` and phase times), from the report the last
    attempt wrote (builds.services.pipeline); None where it did not get that far."""
    report = job.report or {}
    phases = report.get("phases") or {}
    queued = None
    if job.started_at and job.created_at:
        queued = round(max((job.started_at - job.created_at).total_seconds(), 0.0), 3)
    return {
        "image": report.get("image"),
        "steps": report.get("steps"),
        "cache": report.get("cache"),
        "queuedSeconds": queued,
        "fetchSeconds": phases.get("fetch"),
        "buildSeconds": phases.get("build"),
        "pushSeconds": phases.get("push"),
    }


# The columns `job_json` reads, so a read can fetch these alone (builds.api.reads).
SHOWN_FIELDS = (
    "id", "project_id", "user_id", "source_type", "source_info", "build_config", "status", "image_tag",
    "image_digest", "commit_sha", "retry_count", "error_code", "error", "failure_step", "warnings", "callback_url",
    "progress", "created_at", "updated_at", "started_at", "finished_at", "worker", "priority", "report",
)


class JobRow:
    """A job's SHOWN_FIELDS without a model instance, which `job_json` renders as it does a Job:
    a page of rows read as tuples costs less than constructing as many Jobs."""

    __slots__ = SHOWN_FIELDS
    duration_seconds = Job.duration_seconds

    def __init__(self, **values):
        for name, value in values.items():
            setattr(self, name, value)


CANCELING = {"position": None, "ahead": None, "reason": "canceling"}


def queue_place(job_id: str, places: dict) -> dict:
    """A pending job's `queue` in the API's answer, from the queue's places: a waiting job
    missing from them is about to be canceled."""
    return places.get(job_id) or dict(CANCELING)


def job_json(job: Job | JobRow, places: dict | None = None, *, placed: bool = True, reason: str | None = None) -> dict:
    """The job as the API shows it. `places`: the queue's places (default: queue.cached_places()).
    `placed=False` (a job just created): its reason to wait (`reason`, default
    queue.waiting_reason's), but no position, which would cost placing every waiting job once
    per creation."""
    place = None
    if job.status == Status.PENDING and not placed:
        reason = reason or queue.waiting_reason(job.user_id, job.project_id)
        place = {"position": None, "ahead": None, "reason": reason}
    elif job.status == Status.PENDING:
        if places is None:
            places = queue.cached_places()
        place = queue_place(job.id, places)
    return {
        "id": job.id,
        "projectId": job.project_id,
        "userId": job.user_id,
        "sourceType": job.source_type,
        "sourceInfo": masked_source_info(job),
        "buildConfig": masked_build_config(job),
        "status": job.status,
        "imageTag": job.image_tag or None,
        "imageDigest": job.image_digest or None,
        "commitSha": job.commit_sha or None,
        "retryCount": job.retry_count,
        "errorCode": job.error_code or None,
        "error": job.error or None,
        "failure": errors.failure(status=job.status, code=job.error_code, step=job.failure_step),
        "warnings": job.warnings or [],
        "logPath": f"/api/v1/jobs/{job.id}/logs",
        "callbackUrl": job.callback_url or None,
        "progress": job.progress,
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
        "startedAt": iso(job.started_at),
        "finishedAt": iso(job.finished_at),
        "durationSeconds": job.duration_seconds,
        "worker": job.worker or None,
        "priority": PRIORITY_NAMES.get(job.priority, "normal"),
        "queue": place,
        **report_fields(job),
    }


def outcome_json(job: Job) -> dict:
    """The webhook's body for a job that ended: CALLBACK_FIELDS of its `job_json`."""
    shown = job_json(job, {})
    return {name: shown[name] for name in CALLBACK_FIELDS}
