"""Creating jobs and presenting them (contract 1.1 and 1.2)."""

import hashlib
import json

from django.db import IntegrityError, transaction
from django.utils import timezone

from builds.models import Job
from builds.services import dispatch, logs
from builds.services.callbacks import iso


class JobConflict(Exception):
    """A job with this id exists and was created from a different request."""


def fingerprint(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def job_create(*, data: dict) -> tuple[Job, bool]:
    """Store a validated request as a pending job and queue it once committed.
    Returns (job, created); the same request again returns the existing job."""
    digest = fingerprint(data)
    existing = Job.objects.filter(pk=data["id"]).first()
    if existing is None:
        try:
            with transaction.atomic():
                job = Job.objects.create(
                    id=data["id"],
                    project_id=data["projectId"],
                    user_id=data["userId"],
                    source_type=data.get("sourceType", "git"),
                    source_info=data["sourceInfo"],
                    build_config=data.get("buildConfig") or {},
                    request_fingerprint=digest,
                    enqueued_at=timezone.now(),
                )
                logs.append_text(job.id, "job accepted; waiting for a worker")
                dispatch.publish_on_commit(job.id)
            return job, True
        except IntegrityError:  # a concurrent request with the same id won
            existing = Job.objects.get(pk=data["id"])
    if existing.request_fingerprint != digest:
        raise JobConflict()
    return existing, False


def masked_source_info(job: Job) -> dict:
    info = dict(job.source_info or {})
    if "gitRepository" in info:
        info["gitRepository"] = logs.mask_url_credentials(info["gitRepository"])
    return info


def masked_build_config(job: Job) -> dict:
    config = dict(job.build_config or {})
    secret_keys = set(config.get("secrets") or [])
    if config.get("env"):
        config["env"] = {k: (logs.MASK if k in secret_keys else v) for k, v in config["env"].items()}
    return config


def job_json(job: Job) -> dict:
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
        "logPath": f"/api/v1/jobs/{job.id}/logs",
        "progress": job.progress,
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
        "startedAt": iso(job.started_at),
        "finishedAt": iso(job.finished_at),
        "durationSeconds": job.duration_seconds,
        "worker": job.worker or None,
    }
