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
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from builds import presentation
from builds.joblog.masking import mask_url_credentials
from builds.models import CallbackAttempt, CallbackEvent, Job
from builds.services.state import dispatch
from builds.services.steps import source_rules

log = logging.getLogger(__name__)
# Who asked for a delivery by hand, and when: one line per request (the attempt row keeps it too).
audit = logging.getLogger("builds.audit")


def check_callback_url(url: str, *, max_age_seconds: float = 0) -> tuple[str, ...]:
    """A job's own callbackUrl: http(s), no credentials, and a host that resolves to public
    addresses only, unless CALLBACK_ALLOWED_HOSTS lists it (the rules of git URLs). Raises
    source_rules.SourceError saying why; returns the addresses accepted (empty: listed by name).
    `max_age_seconds`: as check_host_allowed's (the API's check; a delivery asks again)."""
    if len(url) > source_rules.MAX_URL_LENGTH or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise source_rules.SourceError("callbackUrl must be a URL without spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise source_rules.SourceError("callbackUrl must be an http:// or https:// URL")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise source_rules.SourceError("callbackUrl has an invalid port") from None
    if not host:
        raise source_rules.SourceError("callbackUrl has no host")
    if parts.username is not None or parts.password is not None:
        raise source_rules.SourceError("callbackUrl must not carry credentials (requests are signed instead)")
    if parts.fragment:
        raise source_rules.SourceError("callbackUrl must not have a fragment")
    repo = source_rules.Repository(url=url, scheme=parts.scheme, host=host.lower(), port=port)
    return source_rules.check_host_allowed(repo, allowed=settings.CALLBACK_ALLOWED_HOSTS, what="callback host",
                                        setting="CALLBACK_ALLOWED_HOSTS", max_age_seconds=max_age_seconds)


def enqueue_outcome(job: Job) -> CallbackEvent | None:
    """Called inside the transaction that finalises the job."""
    url = job.callback_url or settings.CALLBACK_URL
    if not url:
        return None
    event = CallbackEvent.objects.create(
        job=job,
        url=url,
        body=json.dumps(presentation.outcome_json(job), separators=(",", ":")),
        next_attempt_at=timezone.now(),
    )
    transaction.on_commit(lambda: _publish(event.pk))
    return event


def _publish(event_id) -> None:
    """First attempt at once, in the maintenance worker (never in a build slot). If the
    message is lost, the periodic flush finds the event anyway."""
    try:
        dispatch.send(dispatch.DELIVER_CALLBACK, str(event_id))
    except Exception:
        log.exception("could not publish callback %s; the periodic flush will send it", event_id)


def signature(secret: str, timestamp: str, event_id: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + event_id.encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _post(event: CallbackEvent, job_url: bool) -> tuple[int | None, str]:
    if job_url:
        # Checked again at every attempt: the host's DNS answer may have changed since submit.
        try:
            check_callback_url(event.url)
        except source_rules.SourceError as exc:
            return None, f"refused: {exc}"
    body = event.body.encode()
    headers = {"Content-Type": "application/json", "X-Hubfly-Event-Id": str(event.id), "User-Agent": "hubfly-builder"}
    if settings.CALLBACK_SECRET:
        ts = str(int(time.time()))
        headers["X-Hubfly-Timestamp"] = ts
        headers["X-Hubfly-Signature"] = signature(settings.CALLBACK_SECRET, ts, str(event.id), body)
    # Here, not at the top: only the maintenance worker posts, and httpx costs every other
    # process that records an outcome (web, build workers) 6 MiB.
    import httpx

    try:
        # A 3xx answer is a failed attempt, never followed: the Location could name any host.
        # The answer's body is not read: only the status counts.
        with httpx.stream("POST", event.url, content=body, headers=headers, follow_redirects=False,
                          timeout=settings.CALLBACK_TIMEOUT_SECONDS) as response:
            status = response.status_code
    except Exception as exc:  # network errors of every kind are retried the same way
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= status < 300:
        return status, ""
    return status, f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")


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
    event = CallbackEvent.objects.select_related("job").get(pk=event_id)
    ok, status, error = _attempt(event)
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


def _attempt(event: CallbackEvent, requested_by: str = "") -> tuple[bool, int | None, str]:
    """Post the event once and record the attempt: (delivered, HTTP status, error)."""
    started = time.monotonic()
    status, error = _post(event, job_url=bool(event.job.callback_url) and event.url == event.job.callback_url)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    CallbackAttempt.objects.create(event=event, http_status=status, error=error, duration_ms=elapsed_ms,
                                   requested_by=requested_by)
    return status is not None and 200 <= status < 300, status, error


class DeliveryBusy(Exception):
    """An attempt at this event is being made right now."""


def redeliver(event_id, *, requested_by: str) -> CallbackAttempt:
    """One new attempt at an event, whatever its state (delivered, given up or waiting), with the
    same event id and body, signed afresh. Claimed like the outbox's own attempts, so it never
    overlaps one; raises DeliveryBusy when one is under way. A success marks a waiting or
    given-up event delivered; a failure leaves the outbox's schedule as it was."""
    now = timezone.now()
    lock_for = timedelta(seconds=settings.CALLBACK_TIMEOUT_SECONDS + 30)
    if not CallbackEvent.objects.filter(pk=event_id).exclude(locked_until__gt=now).update(locked_until=now + lock_for):
        raise DeliveryBusy()
    event = CallbackEvent.objects.select_related("job").get(pk=event_id)
    audit.info("callback %s of job %s: redelivery requested by %s", event.pk, event.job_id, requested_by)
    try:
        ok, status, error = _attempt(event, requested_by)
    except BaseException:
        CallbackEvent.objects.filter(pk=event.pk).update(locked_until=None)
        raise
    # One update with the unlock: the outbox must not find the event pending and free between
    # the two. attempts counts from the row as it is now.
    fields = {"attempts": F("attempts") + 1, "locked_until": None}
    if ok:
        fields.update(state=CallbackEvent.State.DELIVERED, last_error="")
        if event.state != CallbackEvent.State.DELIVERED:
            fields["delivered_at"] = timezone.now()
    else:
        fields["last_error"] = error or f"HTTP {status}"
    CallbackEvent.objects.filter(pk=event.pk).update(**fields)
    audit.info("callback %s of job %s: redelivery by %s %s", event.pk, event.job_id, requested_by,
               f"answered HTTP {status}" if ok else f"failed: {error or status}")
    return event.attempt_log.order_by("-at", "-pk").first()


def deliver_due(limit: int = 100) -> int:
    due = CallbackEvent.objects.filter(
        state=CallbackEvent.State.PENDING, next_attempt_at__lte=timezone.now()
    ).order_by("next_attempt_at").values_list("pk", flat=True)[:limit]
    return sum(1 for event_id in list(due) if deliver(event_id))


def attempt_json(attempt: CallbackAttempt) -> dict:
    return {
        "at": presentation.iso(attempt.at),
        "httpStatus": attempt.http_status,
        "error": attempt.error or None,
        "durationMs": attempt.duration_ms,
        "requestedBy": attempt.requested_by or None,
    }


def deliveries_json(job: Job) -> list[dict]:
    """The job's webhook events, oldest first, each with every attempt made."""
    events = list(job.callback_events.order_by("created_at", "pk"))
    attempts: dict = {}
    for attempt in CallbackAttempt.objects.filter(event__in=events).order_by("at", "pk"):
        attempts.setdefault(attempt.event_id, []).append(attempt_json(attempt))
    return [
        {
            "eventId": str(event.pk),
            "url": mask_url_credentials(event.url),
            "state": event.state,
            "createdAt": presentation.iso(event.created_at),
            "deliveredAt": presentation.iso(event.delivered_at),
            "nextAttemptAt": presentation.iso(event.next_attempt_at) if event.state == CallbackEvent.State.PENDING else None,
            "attempts": attempts.get(event.pk, []),
        }
        for event in events
    ]
