"""GET /api/v1/jobs/{id}/logs: the log by byte offset, followed live, or as Server-Sent Events.

In the web process the route is `serve_logs`, an ASGI application of its own rather than a view
behind Django's ASGI handler: that handler gives every request a thread and a database
connection for as long as its response lasts, which for a follower is the whole build. Here a
follower is a coroutine fed by its job's shared reader (builds.joblog.reader.LogFollowers),
and a web process admits at most MAX_LOG_FOLLOWERS of them (429 beyond). `job_logs` is the same
route as a plain Django view, for WSGI (Django's test client), streamed by
`LogStreamingResponse`. Both use Django's request object,
the API's bearer tokens and its `{"error", "message"}` JSON.

- no `follow`: bytes [offset, end of log at the time of the request), `X-Log-Offset` = end;
- `?follow=true`: bytes from `offset` as they are written, until the job is final;
- `Accept: text/event-stream`: the same as events whose `id:` is the byte offset after their
  lines; `Last-Event-ID` (or `?offset=`) resumes there. The last event is `event: end` with
  `{"status", "offset"}` as data.

The route takes no request body: `refuse_request_body` answers a request that declares one
without reading a byte of it.
"""

import asyncio
import contextlib
import io
import json
import logging
import re
from urllib.parse import unquote

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework import exceptions

from builds.api.auth import BearerTokenAuthentication
from builds.api.middleware import body_refusal
from builds.joblog import reader
from builds.joblog.reader import LogCursor
from builds.joblog.writer import log_end
from builds.models import FINAL_STATUSES

LOG_PATH = re.compile(r"^/api/v1/jobs/([^/]+)/logs/?$")
RETRY_AFTER_SECONDS = 5
_TRUE = ("true", "1", "yes")

logger = logging.getLogger(__name__)
_FALSE = ("false", "0", "no", "")


class LogStreamingResponse(StreamingHttpResponse):
    """Streams a LogCursor under WSGI (the admin's download, Django's test client). The web
    process's log route streams with `LogFollowers` instead (`serve_logs`)."""

    def __init__(self, cursor: LogCursor, **kwargs):
        super().__init__(iter(cursor), **kwargs)
        self._cursor = cursor


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
    status = reader.job_status(job_id)
    if status is None:
        raise _Refused(404, "JOB_NOT_FOUND", "job not found")
    end = log_end(job_id)
    if end == 0 and (not following or status in FINAL_STATUSES):
        raise _Refused(404, "BUILD_LOG_NOT_FOUND", "build log not found")
    start = min(offset, end)
    if following:
        return LogCursor(job_id, start, follow=True, sse=sse)
    return LogCursor(job_id, start, end=end), end


def _respond(cursor: LogCursor, end: int | None, response: HttpResponse) -> HttpResponse:
    if end is not None:
        response["Content-Type"] = "text/plain; charset=utf-8"
        response["X-Log-Offset"] = str(end)
    else:
        response["Content-Type"] = "text/event-stream; charset=utf-8" if cursor.sse else "text/plain; charset=utf-8"
        response["X-Log-Start"] = str(cursor.position)
        # Tell proxies (nginx) not to buffer a live stream.
        response["X-Accel-Buffering"] = "no"
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def job_logs(request, job_id: str):
    """The route under WSGI: a cursor that reads for itself."""
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            {"error": "METHOD_NOT_ALLOWED", "message": f'method "{request.method}" not allowed'},
            status=405, headers={"Allow": "GET, HEAD"},
        )
    try:
        plan = _plan(request, job_id)
    except _Refused as refused:
        return refused.response
    cursor, end = plan if isinstance(plan, tuple) else (plan, None)
    return _respond(cursor, end, LogStreamingResponse(cursor))


async def serve_logs(scope, receive, send):
    """The route in the web process (hubfly/asgi.py), behind `refuse_request_body`."""
    followers = reader.followers()
    request = ASGIRequest(scope, io.BytesIO())
    job_id = unquote(LOG_PATH.match(scope["path"])[1])
    try:
        plan = await followers.readers.run(_plan, request, job_id)
    except _Refused as refused:
        return await _send_whole(send, refused.response)
    except Exception:
        logger.exception("log request for job %s failed", job_id)
        return await _send_whole(send, JsonResponse({"error": "INTERNAL_ERROR", "message": "internal error"},
                                                    status=500))
    if isinstance(plan, tuple):
        cursor, end = plan
        return await _stream(scope, receive, send, _respond(cursor, end, HttpResponse()), followers.download(cursor))
    if not followers.admit():
        message = (f"this web process has {followers.limit} log followers (MAX_LOG_FOLLOWERS); "
                   f"retry in {RETRY_AFTER_SECONDS} s")
        return await _send_whole(send, JsonResponse({"error": "TOO_MANY_FOLLOWERS", "message": message}, status=429,
                                                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)}))
    try:
        await _stream(scope, receive, send, _respond(plan, None, HttpResponse()), followers.follow(plan))
    finally:
        followers.release()


def _start(response: HttpResponse) -> dict:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}


async def _send_whole(send, response: HttpResponse) -> None:
    await send(_start(response))
    await send({"type": "http.response.body", "body": response.content})


async def _stream(scope, receive, send, response: HttpResponse, pieces) -> None:
    """Send the headers of `response`, then `pieces` until they end or the client goes away."""

    async def pump():
        await send(_start(response))
        async with contextlib.aclosing(pieces):
            if scope["method"] != "HEAD":
                async for piece in pieces:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def disconnected():
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.create_task(pump()), asyncio.create_task(disconnected())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0] in done and tasks[0].exception() is not None:
        logger.error("streaming a log failed", exc_info=tasks[0].exception())
