"""The lean creation path: `POST /api/v1/jobs` taken in the event loop, in front of the reads
(builds.api.reads) and Django, and its jobs stored by group commit.

A creation through Django costs several milliseconds of Python before its one INSERT: the
middleware chain, DRF's request and a fresh copy of the serializer's fields, its own write
transaction and commit, a broker message in another transaction, an aggregate for the answer's
reason to wait. Here:

- the loop reads the body, parses it (orjson) and validates it with the same JobCreateInput and
  check_build_config the view runs (its fields bound once, so its rules are the view's by
  construction), without any blocking call: a host whose DNS answer is not kept
  (source_rules.kept_answers_only) goes on to Django, which asks;
- valid requests wait for the one writer thread, which stores all that came in meanwhile in one
  transaction (rows, log headers, supersedes: services.jobs.jobs_create_new), publishes their
  messages in one broker transaction, works out the reason to wait once per tenant and renders
  each answer; while it writes, the next batch gathers.

Only the plain success is answered here: a valid token, a JSON body Django would read (a
Content-Length within MAX_REQUEST_BODY_BYTES, no Transfer-Encoding), a request that validates,
an id not taken. Anything else, a database error included, goes on to Django with the body as
it came (a repeated id: job_create answers 200 or 409), so the error envelopes, the waits of a
database outage and the OpenAPI schema stay those of builds.api.views.
"""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import orjson
from django.conf import settings
from django.core import signals

from builds import presentation
from builds.api.middleware import json_too_deep
from builds.api.reads import LIST_ALLOW, LIST_PATH, asgi_headers, token_ok
from builds.api.serializers import JobCreateInput
from builds.dockerfile import check_build_config
from builds.services import jobs
from builds.services.state import queue
from builds.services.steps import source_rules

log = logging.getLogger(__name__)

JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


class LoopCreations:
    """ASGI, in front of `app` (hubfly/asgi.py)."""

    MAX_BATCH = 256

    def __init__(self, app):
        self.app = app
        self.enabled = settings.API_LEAN_CREATIONS
        self._input: JobCreateInput | None = None  # the loop's own, its fields bound once
        self._waiting: list[tuple[dict, asyncio.Future]] = []
        self._committing: asyncio.Task | None = None  # held: the loop keeps only weak references
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="creations")

    async def __call__(self, scope, receive, send):
        if not (self.enabled and self._routed(scope)):
            await self.app(scope, receive, send)
            return
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = None
        if messages[-1]["type"] == "http.request":
            data = self._validated(b"".join(message.get("body", b"") for message in messages))
            if data is not None:
                body = await self._create(data)
        if body is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        await send({"type": "http.response.start", "status": 201, "headers": asgi_headers(LIST_ALLOW, len(body))})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _routed(scope) -> bool:
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != LIST_PATH
                or scope.get("root_path")):
            return False
        found = {}
        for name, value in scope["headers"]:
            if name in (b"authorization", b"content-type", b"content-length"):
                if name in found:
                    return False
                found[name] = value
            elif name == b"transfer-encoding":
                return False  # Django's middleware's to refuse
        length = found.get(b"content-length", b"")
        return (found.get(b"content-type", b"").lower() in JSON_TYPES
                and length.isdigit() and 0 < int(length) <= settings.MAX_REQUEST_BODY_BYTES
                and token_ok(found.get(b"authorization", b"").decode("latin-1")))

    def _validated(self, raw: bytes) -> dict | None:
        """The request as JobCreateInput validates it, or None where the view must answer."""
        if json_too_deep(raw):
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        if self._input is None:
            self._input = JobCreateInput()
            self._input.fields  # noqa: B018 - bound here, once: the copy is most of DRF's cost
        try:
            with source_rules.kept_answers_only():
                validated = self._input.run_validation(data)
                check_build_config(validated.get("buildConfig") or {})
        except Exception:  # noqa: BLE001 - refusals (and lookups to make) are the view's
            return None
        return validated

    async def _create(self, data: dict) -> bytes | None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((data, future))
        if self._committing is None:
            self._committing = asyncio.ensure_future(self._commit_waiting())
        return await future

    async def _commit_waiting(self) -> None:
        """Store what waits, a batch at a time, until nothing does."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.MAX_BATCH], self._waiting[self.MAX_BATCH:]
                try:
                    bodies = await loop.run_in_executor(self._pool, _create_in_thread, [data for data, _ in batch])
                except Exception:  # noqa: BLE001 - the view answers them (a database outage: 503 after its wait)
                    log.warning("a batch of %d creations failed; Django answers them", len(batch), exc_info=True)
                    bodies = [None] * len(batch)
                for (_, future), body in zip(batch, bodies):
                    if not future.done():
                        future.set_result(body)
        finally:
            self._committing = None


def _create_in_thread(requests: list[dict]) -> list[bytes | None]:
    # As a request in the pool's threads: the receivers close a connection too old or broken.
    signals.request_started.send(sender=LoopCreations)
    try:
        created = jobs.jobs_create_new(requests)
        reasons: dict[tuple[str, str], str] = {}
        bodies = []
        for job in created:
            if job is None:
                bodies.append(None)
                continue
            tenant = (job.user_id, job.project_id)
            if tenant not in reasons:
                reasons[tenant] = queue.waiting_reason(*tenant)
            bodies.append(orjson.dumps(presentation.job_json(job, placed=False, reason=reasons[tenant])))
        return bodies
    finally:
        signals.request_finished.send(sender=LoopCreations)


def _replay(messages: list[dict], receive):
    """`receive` with the messages already taken from it given again first."""
    messages = list(messages)

    async def replayed():
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed
