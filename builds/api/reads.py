"""The lean read path: `GET /api/v1/jobs/{id}` and `GET /api/v1/jobs?...` answered in front of
Django's handler, without its middleware chain, URL resolver and DRF's request, negotiation and
renderer, which cost more than the query and the JSON.

It answers only the plain success: a valid token, a job that exists, filters that are valid.
Anything else (no token, a wrong one, an unknown job, a bad filter, a database error, a HEAD)
goes on to Django unchanged, so the error envelopes, the 503 of a database outage and the
OpenAPI schema stay those of builds.api.views, the one place they are written.
"""

import hmac
import re
from urllib.parse import parse_qsl

import orjson
from django.conf import settings
from django.core import signals

from builds import presentation, selectors
from builds.models import Job


JOB_PATH = re.compile(r"^/api/v1/jobs/([^/]+)$")
LIST_PATH = "/api/v1/jobs"
MAX_PAGE = 200  # builds.api.views.MAX_PAGE


def _token_ok(environ) -> bool:
    """BearerTokenAuthentication's accept rule; its refusals are Django's to write."""
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.encode(), known.encode()) for known in settings.API_TOKENS)


def _headers(allow: str, length: int) -> list[tuple[str, str]]:
    """What Django's middleware and DRF put on these answers (SecurityMiddleware,
    XFrameOptionsMiddleware, APIView's Allow)."""
    headers = [("Content-Type", "application/json"), ("Allow", allow), ("Content-Length", str(length))]
    if settings.X_FRAME_OPTIONS:
        headers.append(("X-Frame-Options", settings.X_FRAME_OPTIONS))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        headers.append(("Referrer-Policy", policy if isinstance(policy, str) else ",".join(policy)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    return headers


_BY_ID = f"SELECT * FROM {Job._meta.db_table} WHERE id = %s"  # the ORM's compiling costs more than the query


def _detail(job_id: str):
    job = next(iter(Job.objects.raw(_BY_ID, [job_id])), None)
    return None if job is None else presentation.job_json(job)


def _int(params: dict, name: str, default: int, minimum: int, maximum: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        return None
    value = int(raw)
    return value if value >= minimum and (maximum is None or value <= maximum) else None


def _list(query_string: str):
    """JobListCreate.get's answer, or None where it would refuse the filters."""
    params = dict(parse_qsl(query_string, keep_blank_values=True))  # the last value wins, as QueryDict.get
    try:
        query = selectors.job_list(project_id=params.get("projectId"), user_id=params.get("userId"),
                                   status=params.get("status"), priority=params.get("priority"))
    except selectors.FilterRefused:
        return None
    limit, offset = _int(params, "limit", 50, 1, MAX_PAGE), _int(params, "offset", 0, 0)
    if limit is None or offset is None:
        return None
    return selectors.job_page(query, limit=limit, offset=offset)


class LeanReads:
    """WSGI middleware in front of Django's WSGI handler."""

    def __init__(self, django_app):
        self.django_app = django_app
        self.enabled = settings.API_LEAN_READS

    def __call__(self, environ, start_response):
        if not self.enabled or environ.get("REQUEST_METHOD") != "GET" or not _token_ok(environ):
            return self.django_app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if path == LIST_PATH:
            answer, allow = _list, "GET, POST, HEAD, OPTIONS"
            argument = environ.get("QUERY_STRING", "")
        elif match := JOB_PATH.match(path):
            answer, allow = _detail, "GET, HEAD, OPTIONS"
            argument = match.group(1)  # WSGI's latin-1 text: a non-ASCII id is no job's (ID_PATTERN)
        else:
            return self.django_app(environ, start_response)
        # As Django's handler: its receivers close a connection that is too old or broken.
        signals.request_started.send(sender=self.__class__, environ=environ)
        try:
            data = answer(argument)
        except Exception:  # noqa: BLE001 - Django answers it (503 for a database outage, 500 otherwise)
            data = None
        finally:
            signals.request_finished.send(sender=self.__class__)
        if data is None:
            return self.django_app(environ, start_response)
        body = orjson.dumps(data)
        start_response("200 OK", _headers(allow, len(body)))
        return [body]
