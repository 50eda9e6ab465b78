"""GET /api/v1/jobs/{id}/logs: the log by byte offset, followed live, or as Server-Sent Events.

A plain async Django view rather than a DRF one (DRF has no async views): under the ASGI server
a follower waits on the event loop, not on a worker thread, so followers never block other
requests. Authentication and error bodies are the API's: the same bearer tokens, the same
`{"error", "message"}` JSON.

- no `follow`: bytes [offset, end of log at the time of the request), `X-Log-Offset` = end;
- `?follow=true`: bytes from `offset` as they are written, until the job is final;
- `Accept: text/event-stream`: the same as events whose `id:` is the byte offset after their
  lines; `Last-Event-ID` (or `?offset=`) resumes there. The last event is `event: end` with
  `{"status", "offset"}` as data.

The route takes no request body. Django's ASGI handler reads a whole body (spooling a large one
to disk) before any middleware or view runs, so `refuse_request_body` answers a request that
declares one before Django sees it, without reading a byte of it.
"""

import json

from asgiref.sync import sync_to_async
from django.http import JsonResponse
from rest_framework import exceptions

from builds.api.auth import BearerTokenAuthentication
from builds.api.middleware import body_refusal
from builds.models import FINAL_STATUSES
from builds.services import follow, logs
from builds.services.follow import LogCursor, LogStreamingResponse

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        self.response = JsonResponse({"error": code, "message": message}, status=status, headers=headers)


def _authenticate(request) -> None:
    try:
        if BearerTokenAuthentication().authenticate(request) is None:
            raise exceptions.NotAuthenticated()
    except exceptions.APIException as exc:
        raise _Refused(401, "UNAUTHORIZED", str(exc.detail), {"WWW-Authenticate": "Bearer"}) from None


def _offset(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise _Refused(400, "VALIDATION_ERROR", f"{name} must be a whole number")
    return int(value)


def wants_events(request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _body_refusal(scope) -> tuple[int, str, str, list] | None:
    headers = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.lower(), value.decode("latin-1"))
    refusal = body_refusal(headers.get(b"content-length"), headers.get(b"transfer-encoding"))
    if refusal:
        return (*refusal, [])
    if scope["method"] not in ("GET", "HEAD"):
        return 405, "METHOD_NOT_ALLOWED", f'method "{scope["method"]}" not allowed', [(b"allow", b"GET, HEAD")]
    if int(headers.get(b"content-length") or 0):  # a valid number: body_refusal has read it
        return 400, "BAD_REQUEST", "this endpoint takes no request body", []
    return None


def refuse_request_body(app):
    """ASGI middleware for the log route: a request with a body is answered unread."""

    async def guarded(scope, receive, send):
        refusal = _body_refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            return await app(scope, receive, send)
        status, code, message, extra_headers = refusal
        body = json.dumps({"error": code, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return guarded


def _plan(request, job_id: str) -> LogCursor | tuple[LogCursor, int]:
    """Check the request and the job; returns the cursor to stream (and the end for non-follow)."""
    _authenticate(request)
    sse = wants_events(request)
    raw_follow = request.GET.get("follow", "").lower()
    if raw_follow not in _TRUE + _FALSE:
        raise _Refused(400, "VALIDATION_ERROR", "follow must be true or false")
    following = sse or raw_follow in _TRUE
    offset = _offset(request.GET.get("offset"), "offset") or 0
    if sse:
        resume = _offset(request.headers.get("Last-Event-ID"), "Last-Event-ID")
        offset = resume if resume is not None else offset
    status = follow.job_status(job_id)
    if status is None:
        raise _Refused(404, "JOB_NOT_FOUND", "job not found")
    end = logs.log_end(job_id)
    if end == 0 and (not following or status in FINAL_STATUSES):
        raise _Refused(404, "BUILD_LOG_NOT_FOUND", "build log not found")
    start = min(offset, end)
    if following:
        return LogCursor(job_id, start, follow=True, sse=sse)
    return LogCursor(job_id, start, end=end), end


async def job_logs(request, job_id: str):
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            {"error": "METHOD_NOT_ALLOWED", "message": f'method "{request.method}" not allowed'},
            status=405, headers={"Allow": "GET, HEAD"},
        )
    try:
        plan = await sync_to_async(_plan)(request, job_id)
    except _Refused as refused:
        return refused.response
    if isinstance(plan, tuple):
        cursor, end = plan
        response = LogStreamingResponse(cursor, content_type="text/plain; charset=utf-8")
        response["X-Log-Offset"] = str(end)
    else:
        cursor = plan
        content_type = "text/event-stream; charset=utf-8" if cursor.sse else "text/plain; charset=utf-8"
        response = LogStreamingResponse(cursor, content_type=content_type)
        response["X-Log-Start"] = str(cursor.position)
        # Tell proxies (nginx) not to buffer a live stream.
        response["X-Accel-Buffering"] = "no"
    response["Cache-Control"] = "no-store"
    return response
