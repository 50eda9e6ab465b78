"""The lean read paths: `GET /api/v1/jobs/{id}` and `GET /api/v1/jobs?...` answered without
Django's middleware chain, URL resolver and DRF's request, negotiation and renderer, which cost
more than the query and the JSON. Two of them, by database:

- `LoopReads` (SQLite): in the event loop itself, in front of the thread pool, so a read does
  not hop threads: the row read by primary key from a connection of the loop's own (tens of
  microseconds, never waiting on a lock: WAL readers do not wait for writers), the job's JSON
  rendered once per change of its row, the queue's places recomputed (in a thread) only when the
  database changed and the queue's signature with it.
- `LeanReads` (any database; PostgreSQL's only one): WSGI middleware in front of Django's
  handler, in the pool's threads. A blocking PostgreSQL read in the loop would stall every
  request and log follower of the process for as long as the server is slow or away.

Both answer only the plain success: a valid token, a job that exists, filters that are valid.
Anything else (no token, a wrong one, an unknown job, a bad filter, a database error, a HEAD, a
request that declares a body) goes on to Django unchanged, so the error envelopes, the 503 of a
database outage and the OpenAPI schema stay those of builds.api.views, the one place they are
written.
"""

import asyncio
import datetime
import hmac
import json
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
from django.conf import settings
from django.core import signals
from django.db import models
from django.utils.dateparse import parse_datetime

from builds import presentation, selectors
from builds.models import Job, Status
from builds.services.state import queue

JOB_PATH = re.compile(r"^/api/v1/jobs/([^/]+)$")
LIST_PATH = "/api/v1/jobs"
MAX_PAGE = 200  # builds.api.views.MAX_PAGE
JOB_ALLOW = "GET, HEAD, OPTIONS"
LIST_ALLOW = "GET, POST, HEAD, OPTIONS"


def token_ok(header: str) -> bool:
    """BearerTokenAuthentication's accept rule; its refusals are Django's to write."""
    scheme, _, token = header.partition(" ")
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


def _int(params: dict, name: str, default: int, minimum: int, maximum: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        return None
    value = int(raw)
    return value if value >= minimum and (maximum is None or value <= maximum) else None


def _page_request(query_string: str) -> tuple[dict, int, int] | None:
    """The list's filters ({column: value}), limit and offset, or None where JobListCreate.get
    would refuse them."""
    params = dict(parse_qsl(query_string, keep_blank_values=True))  # the last value wins, as QueryDict.get
    try:
        filters = selectors.job_filters(project_id=params.get("projectId"), user_id=params.get("userId"),
                                        status=params.get("status"), priority=params.get("priority"))
    except selectors.FilterRefused:
        return None
    limit, offset = _int(params, "limit", 50, 1, MAX_PAGE), _int(params, "offset", 0, 0)
    if limit is None or offset is None:
        return None
    return filters, limit, offset


# --- in the pool's threads, on any database ------------------------------------------------

_BY_ID = f"SELECT * FROM {Job._meta.db_table} WHERE id = %s"  # the ORM's compiling costs more than the query


def _detail(job_id: str):
    job = next(iter(Job.objects.raw(_BY_ID, [job_id])), None)
    return None if job is None else presentation.job_json(job)


def _list(query_string: str):
    """JobListCreate.get's answer, or None where it would refuse the filters."""
    request = _page_request(query_string)
    if request is None:
        return None
    filters, limit, offset = request
    return selectors.job_page(selectors.jobs_where(filters), limit=limit, offset=offset)


class LeanReads:
    """WSGI middleware in front of Django's WSGI handler."""

    def __init__(self, django_app):
        self.django_app = django_app
        self.enabled = settings.API_LEAN_READS

    def __call__(self, environ, start_response):
        if (not self.enabled or environ.get("REQUEST_METHOD") != "GET"
                or not token_ok(environ.get("HTTP_AUTHORIZATION", ""))):
            return self.django_app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if path == LIST_PATH:
            answer, allow = _list, LIST_ALLOW
            argument = environ.get("QUERY_STRING", "")
        elif match := JOB_PATH.match(path):
            answer, allow = _detail, JOB_ALLOW
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


# --- in the event loop, on SQLite ------------------------------------------------------------

_TABLE = Job._meta.db_table
_COLUMNS = ", ".join(Job._meta.get_field(name).column for name in presentation.SHOWN_FIELDS)
_ORDER = ", ".join(f"{Job._meta.get_field(name.lstrip('-')).column} {'DESC' if name.startswith('-') else 'ASC'}"
                   for name in selectors.LIST_ORDER)
_ROW_BY_ID = f"SELECT {_COLUMNS} FROM {_TABLE} WHERE id = ?"


def _datetime(raw: str) -> datetime.datetime:
    # Django's SQLite converter: the text as stored, in UTC.
    return parse_datetime(raw).replace(tzinfo=datetime.timezone.utc)


def _json(raw: str):
    # JSONField.from_db_value's rule.
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _converter(name: str):
    field = Job._meta.get_field(name)
    if isinstance(field, models.DateTimeField):
        return _datetime
    if isinstance(field, models.JSONField):
        return _json
    return None


_CONVERTERS = tuple(zip(presentation.SHOWN_FIELDS, map(_converter, presentation.SHOWN_FIELDS)))


def job_row(values: tuple) -> presentation.JobRow:
    """A row of SHOWN_FIELDS as SQLite returns it, with the values Django's converters give."""
    return presentation.JobRow(**{name: (convert(raw) if convert and raw is not None else raw)
                                  for (name, convert), raw in zip(_CONVERTERS, values)})


def asgi_headers(allow: str, length: int) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in _headers(allow, length)]


class LoopReads:
    """ASGI, in front of the threaded application (hubfly/asgi.py): the reads of jobs it can
    answer from SQLite, answered in the event loop; everything else goes on to `threaded`."""

    RENDERED_MAX = 1024  # jobs whose JSON is kept, a few KiB each

    def __init__(self, threaded, database: str):
        self.threaded = threaded
        self.database = database
        self.enabled = settings.API_LEAN_READS
        self._db: sqlite3.Connection | None = None
        # job id -> (its row as read, its JSON as a dict, that JSON as bytes unless pending).
        self._rendered: dict[str, tuple] = {}
        # The places as last computed: (data_version, signature, computed at, places), and the
        # computation under way: (data_version, task).
        self._places: tuple | None = None
        self._placing: tuple | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="places")

    async def __call__(self, scope, receive, send):
        route = self._route(scope) if self.enabled else None
        body = None
        if route is not None:
            answer, argument, allow = route
            try:
                body = await answer(argument)
            except Exception:  # noqa: BLE001 - Django answers it, as any refusal
                self._close()
        if body is None:
            await self.threaded(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": asgi_headers(allow, len(body))})
        await send({"type": "http.response.body", "body": body})

    def _route(self, scope):
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value
            elif name in (b"content-length", b"transfer-encoding") and value != b"0":
                return None  # a body, however odd on a GET: the size rules are Django's middleware's
        if authorization is None or not token_ok(authorization.decode("latin-1")):
            return None
        path = scope["path"]
        if path == LIST_PATH:
            return self._list, scope["query_string"], LIST_ALLOW
        if match := JOB_PATH.match(path):
            return self._job, match.group(1), JOB_ALLOW
        return None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # mode=rw: never create a database that is not there; timeout 0: a lock (only a
            # WAL recovery takes one from readers) is the thread pool's to wait for.
            db = sqlite3.connect(f"{Path(self.database).resolve().as_uri()}?mode=rw", uri=True, timeout=0,
                                 isolation_level=None)
            db.execute("PRAGMA query_only = ON")
            self._db = db
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except sqlite3.Error:
                pass

    def _render(self, row: tuple) -> tuple[dict, bytes | None]:
        """The job's JSON (without its place, if pending), rendered again only if its row changed."""
        cached = self._rendered.get(row[0])
        if cached is None or cached[0] != row:
            shown = presentation.job_json(job_row(row), {})
            cached = (row, shown, None if shown["status"] == Status.PENDING else orjson.dumps(shown))
            if len(self._rendered) >= self.RENDERED_MAX:
                del self._rendered[next(iter(self._rendered))]
            self._rendered[row[0]] = cached
        return cached[1], cached[2]

    async def _job(self, job_id: str) -> bytes | None:
        rows = self._connection().execute(_ROW_BY_ID, (job_id,)).fetchall()
        if not rows:
            return None
        shown, body = self._render(rows[0])
        if body is None:
            places = await self._current_places()
            body = orjson.dumps({**shown, "queue": presentation.queue_place(job_id, places)})
        return body

    async def _list(self, query_string: bytes) -> bytes | None:
        if not query_string.isascii():
            return None
        request = _page_request(query_string.decode("ascii"))
        if request is None:
            return None
        filters, limit, offset = request
        where = " AND ".join(f"{Job._meta.get_field(name).column} = ?" for name in filters)
        where = f" WHERE {where}" if where else ""
        db = self._connection()
        (count,), = db.execute(f"SELECT COUNT(*) FROM {_TABLE}{where}", tuple(filters.values())).fetchall()
        rows = db.execute(f"SELECT {_COLUMNS} FROM {_TABLE}{where} ORDER BY {_ORDER} LIMIT ? OFFSET ?",
                          (*filters.values(), limit, offset)).fetchall()
        results = [self._render(row)[0] for row in rows]
        if any(shown["status"] == Status.PENDING for shown in results):
            places = await self._current_places()
            results = [{**shown, "queue": presentation.queue_place(shown["id"], places)}
                       if shown["status"] == Status.PENDING else shown for shown in results]
        return orjson.dumps({"count": count, "limit": limit, "offset": offset, "results": results})

    async def _current_places(self) -> dict:
        """queue.places(), as of this moment or later: kept while the database has not changed
        (SQLite's data_version, a counter with no table to read) or, when it has, while the
        queue's signature has not, for at most queue.PLACES_MAX_AGE_SECONDS (a retry time passing
        changes neither); else computed again in a thread, one computation at a time."""
        db = self._connection()
        (version,), = db.execute("PRAGMA data_version").fetchall()
        asked_at = time.monotonic()
        cached = self._places
        if cached is not None and asked_at - cached[2] < queue.PLACES_MAX_AGE_SECONDS:
            if cached[0] == version:
                return cached[3]
            signature = db.execute(queue.SIGNATURE_SQL).fetchall()[0]
            if signature == cached[1]:
                self._places = (version, *cached[1:])
                return cached[3]
        else:
            signature = db.execute(queue.SIGNATURE_SQL).fetchall()[0]
        while True:
            if self._placing is None:
                task = asyncio.ensure_future(self._place(version, signature, asked_at))
                self._placing = (version, task)
            placing_version, task = self._placing
            if placing_version >= version:  # data_version counts the changes up
                return await asyncio.shield(task)
            # Under way since before this database change: its result may not show it.
            await asyncio.wait([task])

    async def _place(self, version: int, signature: tuple, at: float) -> dict:
        try:
            placed = await asyncio.get_running_loop().run_in_executor(self._pool, _places_in_thread)
            self._places = (version, signature, at, placed)
            return placed
        finally:
            self._placing = None


def _places_in_thread() -> dict:
    # As a request in the pool's threads: the receivers close a connection too old or broken.
    signals.request_started.send(sender=LoopReads)
    try:
        return queue.places()
    finally:
        signals.request_finished.send(sender=LoopReads)


def in_the_loop(threaded, database: dict | None = None):
    """The ASGI application for API requests: `threaded` with the loop's read path in front on
    SQLite, `threaded` alone on other databases (`database`: the default one's settings)."""
    database = database or settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3" or not settings.API_LEAN_READS:
        return threaded
    return LoopReads(threaded, str(database["NAME"]))
