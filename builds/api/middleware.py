"""Limits on request bodies: the size, checked before anything reads a body, and the nesting
depth of JSON, checked before Python's recursive parser sees it."""

import io
import re
import time

from django.conf import settings
from django.http import JsonResponse
from rest_framework import parsers

from builds.api.errors import ApiError

# Job requests nest three levels; the parser recurses once per level and would fail with
# RecursionError (a 500) near a thousand.
MAX_JSON_DEPTH = 32


def body_refusal(content_length: str | None, transfer_encoding: str | None) -> tuple[int, str, str] | None:
    """(status, code, message) when a request's declared body must be refused unread."""
    try:
        length = int(content_length or 0)
    except ValueError:
        return 400, "BAD_REQUEST", "invalid Content-Length"
    if not length and transfer_encoding:
        # Django reads a body by its Content-Length only; without one it would see none.
        return 411, "LENGTH_REQUIRED", "send the request body with a Content-Length header"
    if length > settings.MAX_REQUEST_BODY_BYTES:
        return 413, "PAYLOAD_TOO_LARGE", f"request bodies are limited to {settings.MAX_REQUEST_BODY_BYTES} bytes"
    return None


class BodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        refusal = body_refusal(request.META.get("CONTENT_LENGTH"), request.META.get("HTTP_TRANSFER_ENCODING"))
        if refusal:
            status, code, message = refusal
            return JsonResponse({"error": code, "message": message}, status=status)
        return self.get_response(request)


class DatabaseOutageMiddleware:
    """An API request that met a database outage (a server restart, a dropped connection) is
    run again, with backoff, for up to API_DATABASE_WAIT_SECONDS from its start; only then does
    the client get the 503. A few seconds without a database cost the client a slow answer,
    not an error. Running a request again is safe: a transaction that failed did not commit,
    and the one case in doubt (a COMMIT whose answer was lost with the connection) is harmless
    for a job's creation, idempotent by its id, and for a cancel, which flags a job once. The body
    (within MAX_REQUEST_BODY_BYTES) is read first so that each run parses it again."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        wait = settings.API_DATABASE_WAIT_SECONDS
        if not wait or not request.path.startswith("/api/"):
            return self.get_response(request)
        request.body  # noqa: B018 - kept by Django, read again by each run
        deadline = time.monotonic() + wait
        delay = 0.1
        while True:
            response = self.get_response(request)
            remaining = deadline - time.monotonic()
            if not getattr(response, "database_outage", False) or remaining <= 0:
                return response
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)


_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if arrays and objects nest deeper than `limit`; brackets inside strings do not
    count. Linear in the body's size, whatever it holds (invalid JSON is the parser's call)."""
    depth, in_string, escaped_at = 0, False, -1
    for match in _JSON_SPECIAL.finditer(raw):
        position = match.start()
        if position == escaped_at:
            continue
        char = raw[position : position + 1]
        if in_string:
            if char == b"\\":
                escaped_at = position + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser behind a nesting limit. DRF parses after authentication, and the
    body is already known to be within MAX_REQUEST_BODY_BYTES."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        if json_too_deep(raw):
            raise ApiError(400, "VALIDATION_ERROR", f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
        return super().parse(io.BytesIO(raw), media_type, parser_context)
