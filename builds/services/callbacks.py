"""The webhook outbox: one event per final outcome, delivered at least once.

The event row is written in the transaction that makes the job final. Delivery claims the row
with a conditional update (so two senders never post the same attempt), posts the stored bytes,
records the attempt, and on failure schedules the next try with exponential backoff. Nothing
here sleeps: waiting is done by `next_attempt_at` and the periodic task.
"""

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from builds.models import CallbackAttempt, CallbackEvent, Job

log = logging.getLogger(__name__)


def iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def outcome_payload(job: Job) -> dict:
    return {
        "id": job.id,
        "projectId": job.project_id,
        "userId": job.user_id,
        "status": job.status,
        "imageTag": job.image_tag or None,
        "imageDigest": job.image_digest or None,
        "commitSha": job.commit_sha or None,
        "startedAt": iso(job.started_at),
        "finishedAt": iso(job.finished_at),
        "durationSeconds": job.duration_seconds,
        "logPath": f"/api/v1/jobs/{job.id}/logs",
        "errorCode": job.error_code or None,
        "error": job.error or None,
        "retryCount": job.retry_count,
    }


def enqueue_outcome(job: Job) -> CallbackEvent | None:
    """Called inside the transaction that finalises the job."""
    if not settings.CALLBACK_URL:
        return None
    event = CallbackEvent.objects.create(
        job=job,
        url=settings.CALLBACK_URL,
        body=json.dumps(outcome_payload(job), separators=(",", ":")),
        next_attempt_at=timezone.now(),
    )
    transaction.on_commit(lambda: _publish(event.pk))
    return event


def _publish(event_id) -> None:
    """First attempt at once, in the maintenance worker (never in a build slot). If the
    message is lost, the periodic flush finds the event anyway."""
    from builds.tasks import deliver_callback

    try:
        deliver_callback.apply_async((str(event_id),))
    except Exception:
        log.exception("could not publish callback %s; the periodic flush will send it", event_id)


def signature(secret: str, timestamp: str, event_id: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + event_id.encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is a failed attempt: urllib would re-send a redirected POST as a GET
    without its body, to wherever the Location says."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_RefuseRedirects)


def _post(event: CallbackEvent) -> tuple[int | None, str]:
    body = event.body.encode()
    headers = {"Content-Type": "application/json", "X-Hubfly-Event-Id": str(event.id), "User-Agent": "hubfly-builder"}
    if settings.CALLBACK_SECRET:
        ts = str(int(time.time()))
        headers["X-Hubfly-Timestamp"] = ts
        headers["X-Hubfly-Signature"] = signature(settings.CALLBACK_SECRET, ts, str(event.id), body)
    request = urllib.request.Request(event.url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=settings.CALLBACK_TIMEOUT_SECONDS) as response:
            response.read(4096)
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}" + (" (redirects are not followed)" if 300 <= exc.code < 400 else "")
    except Exception as exc:  # network errors of every kind are retried the same way
        return None, f"{type(exc).__name__}: {exc}"[:500]


def deliver(event_id) -> bool:
    """One delivery attempt if the event is due and nobody else is sending it. True if delivered."""
    now = timezone.now()
    lock_for = timedelta(seconds=settings.CALLBACK_TIMEOUT_SECONDS + 30)
    claimed = (
        CallbackEvent.objects.filter(pk=event_id, state=CallbackEvent.State.PENDING, next_attempt_at__lte=now)
        .exclude(locked_until__gt=now)
        .update(locked_until=now + lock_for)
    )
    if not claimed:
        return False
    event = CallbackEvent.objects.get(pk=event_id)
    started = time.monotonic()
    status, error = _post(event)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    ok = status is not None and 200 <= status < 300
    CallbackAttempt.objects.create(event=event, http_status=status, error=error, duration_ms=elapsed_ms)
    attempts = event.attempts + 1
    now = timezone.now()
    if ok:
        CallbackEvent.objects.filter(pk=event.pk).update(
            state=CallbackEvent.State.DELIVERED, attempts=attempts, delivered_at=now, locked_until=None, last_error=""
        )
        return True
    give_up = now - event.created_at > timedelta(hours=settings.CALLBACK_MAX_AGE_HOURS)
    delay = min(settings.CALLBACK_BACKOFF_MAX_SECONDS, settings.CALLBACK_BACKOFF_SECONDS * 2 ** (attempts - 1))
    CallbackEvent.objects.filter(pk=event.pk).update(
        state=CallbackEvent.State.GAVE_UP if give_up else CallbackEvent.State.PENDING,
        attempts=attempts,
        next_attempt_at=now + timedelta(seconds=delay),
        locked_until=None,
        last_error=error or f"HTTP {status}",
    )
    log.warning("callback %s for job %s failed (attempt %d): %s", event.pk, event.job_id, attempts, error or status)
    return False


def deliver_due(limit: int = 100) -> int:
    due = CallbackEvent.objects.filter(
        state=CallbackEvent.State.PENDING, next_attempt_at__lte=timezone.now()
    ).order_by("next_attempt_at").values_list("pk", flat=True)[:limit]
    return sum(1 for event_id in list(due) if deliver(event_id))
