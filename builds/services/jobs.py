"""Creating jobs and the jobs' secret values (a request is validated by builds/services/submit.py
first; a job's presentation is builds/presentation.py).

A job's secret values (the `env` entries its `secrets` names) never stay in `build_config`:
they are stored encrypted in `secret_values` (Fernet, with the first key of SECRETS_KEY; the
other keys still decrypt, so a key can be rotated while jobs wait). Only the build, and the
comparison of a repeated request, decrypt them.
"""

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import threading

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now

from builds import errors
from builds.buildsettings import BuildSettings
from builds.errors import BuildError
from builds.joblog import writer
from builds.models import PRIORITIES, Job, Status
from builds.services.state import dispatch, lifecycle


class JobConflict(Exception):
    """A job with this id exists and was created from a different request."""


class SecretsUnreadable(BuildError):
    """The job's secret values cannot be read: no key of SECRETS_KEY decrypts them, or log
    retention removed them. Not retried: no later attempt can read them either."""

    code = errors.SECRETS_UNREADABLE


@functools.cache
def _cipher(keys: tuple[str, ...]) -> MultiFernet:
    # settings.py has checked that each key is 32 bytes of URL-safe base64, padded or not;
    # Fernet wants them padded.
    raw = [base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)) for key in keys]
    return MultiFernet([Fernet(base64.urlsafe_b64encode(key)) for key in raw])


def seal_secrets(values: dict[str, str]) -> str:
    if not values:
        return ""
    return _cipher(tuple(settings.SECRETS_KEYS)).encrypt(_canonical(values)).decode()


def job_secrets(job: Job) -> dict[str, str]:
    """The job's secret env entries, decrypted; raises SecretsUnreadable."""
    config = job.build_config or {}
    keys = config.get("secrets") or []
    if not keys:
        return {}
    if not job.secret_values:
        env = config.get("env") or {}
        if all(key in env for key in keys):  # written in plain text by a release before secret_values
            return {key: env[key] for key in keys}
        raise SecretsUnreadable("the job's secret values were removed by log retention")
    try:
        return json.loads(_cipher(tuple(settings.SECRETS_KEYS)).decrypt(job.secret_values.encode()))
    except InvalidToken:
        raise SecretsUnreadable(
            "no key in SECRETS_KEY decrypts this job's secret values (was the key replaced without keeping the old one?)"
        ) from None


def build_config_with_secrets(job: Job) -> dict:
    """The build config as the client sent it, secret values included (for a rebuild)."""
    config = dict(job.build_config or {})
    secrets = job_secrets(job)
    if secrets:
        config["env"] = {**(config.get("env") or {}), **secrets}
    return config


def _canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _split_secrets(build_config: dict) -> tuple[dict, dict[str, str]]:
    """(the config without secret values, the secret values)."""
    keys = set(build_config.get("secrets") or [])
    env = build_config.get("env") or {}
    secrets = {k: v for k, v in env.items() if k in keys}
    if not secrets:
        return build_config, {}
    return {**build_config, "env": {k: v for k, v in env.items() if k not in keys}}, secrets


def fingerprint(data: dict) -> str:
    """Of a request without its secret values: the values are compared decrypted instead."""
    return hashlib.sha256(_canonical(data)).hexdigest()


def _same_secrets(job: Job, secrets: dict[str, str]) -> bool:
    try:
        stored = job_secrets(job)
    except SecretsUnreadable:  # nothing to compare with: not provably the same request
        return False
    return hmac.compare_digest(_canonical(stored), _canonical(secrets))


# A process's creations take SQLite's write lock one at a time (its broker publish included): a
# waiter is woken when the lock is free instead of sleeping in SQLite's busy handler, in steps
# growing to 100 ms, which under 8 concurrent clients was most of a creation's p95. Not inside a
# transaction begun earlier: that one holds SQLite's lock already, and another creation holding
# this one would wait for it.
_sqlite_creations = threading.Lock()


def _one_creation_at_a_time():
    if connection.vendor == "sqlite" and not connection.in_atomic_block:
        return _sqlite_creations
    return contextlib.nullcontext()


ACCEPTED = "job accepted; waiting for a worker"


def _request_digest(data: dict) -> tuple[dict, dict[str, str], str]:
    """(the build config without secret values, the secret values, the request's fingerprint)."""
    build_config, secrets = _split_secrets(data.get("buildConfig") or {})
    return build_config, secrets, fingerprint({**data, "buildConfig": build_config} if secrets else data)


def _new_job(data: dict) -> Job:
    """The unsaved job of a validated request."""
    build_config, secrets, digest = _request_digest(data)
    return Job(
        id=data["id"],
        project_id=data["projectId"],
        user_id=data["userId"],
        source_type=data.get("sourceType", "git"),
        source_info=data["sourceInfo"],
        build_config=build_config,
        secret_values=seal_secrets(secrets),
        request_fingerprint=digest,
        callback_url=data.get("callbackUrl") or "",
        priority=PRIORITIES[BuildSettings.of(build_config).priority],
        enqueued_at=Now(),  # the database's clock, as the reaper compares it
    )


def job_create(*, data: dict) -> tuple[Job, bool]:
    """Store a validated request as a pending job and queue it once committed.
    Returns (job, created); the same request again returns the existing job."""
    try:
        job = jobs_create_new([data])[0]
    except IntegrityError:  # the id taken meanwhile, by another process's creation
        if not Job.objects.filter(pk=data["id"]).exists():  # not the id's constraint
            raise
        job = None
    if job is not None:
        return job, True
    existing = Job.objects.get(pk=data["id"])
    _, secrets, digest = _request_digest(data)
    same = existing.request_fingerprint == digest and _same_secrets(existing, secrets)
    # A row a release before secret_values wrote hashes the whole request, values included.
    if not same and not (secrets and existing.request_fingerprint == fingerprint(data)):
        raise JobConflict()
    return existing, False


def jobs_create_new(requests: list[dict]) -> list[Job | None]:
    """Validated requests stored as pending jobs in one transaction (rows, log headers,
    supersedes) and queued once it committed, their messages in one publish: the API's group
    commit (builds.api.creations) and, for one request, job_create. Where a request's id is
    taken (or named twice in `requests`) its place in the answer is None: job_create answers
    it (the existing job, or JobConflict)."""
    built = [_new_job(data) for data in requests]
    with _one_creation_at_a_time(), transaction.atomic():
        taken = set(Job.objects.filter(pk__in=[job.pk for job in built]).values_list("pk", flat=True))
        answer = []
        for job in built:
            answer.append(None if job.pk in taken else job)
            taken.add(job.pk)
        fresh = [job for job in answer if job is not None]
        Job.objects.bulk_create(fresh)
        writer.start_logs([job.pk for job in fresh], ACCEPTED)
        for job in fresh:
            supersede_older(job)
        dispatch.publish_many_on_commit([job.pk for job in fresh])
    return answer


def jobs_seal_plain_secrets() -> int:
    """The contract step of the upgrade that brought secret_values (README, Upgrading): rows
    that a release before it wrote keep their secret values in plain text in build_config, where
    that release's workers read them; this moves them into secret_values and fingerprints the
    request as job_create does now. Run once no process of that release is left; a second run
    finds nothing. Returns how many jobs it sealed."""
    sealed = 0
    for job in Job.objects.filter(build_config__has_key="secrets").iterator():
        public, plain = _split_secrets(job.build_config or {})
        if not plain:
            continue
        request = {"id": job.id, "projectId": job.project_id, "userId": job.user_id, "sourceType": job.source_type,
                   "sourceInfo": job.source_info, "buildConfig": public}
        Job.objects.filter(pk=job.pk).update(
            build_config=public, secret_values=job.secret_values or seal_secrets(plain),
            request_fingerprint=fingerprint(request),
        )
        sealed += 1
    return sealed


def supersede_older(job: Job) -> list[str]:
    """buildConfig.supersede (or SUPERSEDE_DEFAULT): cancel the older jobs of the same projectId
    + ref + workingDir that are pending, and with "running" the one building too. Returns
    their ids."""
    mode = BuildSettings.of(job.build_config).supersede
    if not mode:
        return []
    running = mode == "running"
    statuses = (Status.PENDING, Status.CLAIMED, Status.BUILDING) if running else (Status.PENDING,)
    key = [(job.source_info or {}).get(name) or "" for name in ("ref", "workingDir")]
    older = Job.objects.filter(project_id=job.project_id, status__in=statuses, created_at__lte=job.created_at)
    superseded = []
    for other_id, source_info in older.exclude(pk=job.pk).values_list("pk", "source_info"):
        if [(source_info or {}).get(name) or "" for name in ("ref", "workingDir")] != key:
            continue
        if lifecycle.job_supersede(job_id=other_id, by=job.id, running=running):
            superseded.append(other_id)
    if superseded:
        writer.append_text(job.id, f"superseded older job(s) {', '.join(superseded)}")
    return superseded
