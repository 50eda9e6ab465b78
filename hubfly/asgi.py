"""The web process's ASGI application, in two halves.

A job's log route can follow a build for minutes, for hundreds of clients: it is an ASGI
application of its own (builds.api.logstream.serve_logs), where a follower is a coroutine fed by
its job's one shared reader, not a thread with a database connection of its own. Every other
request (the JSON API, the admin, static files) runs Django as WSGI in a pool of WEB_THREADS
threads: one hand-off per request instead of several, and each thread keeps its database
connection between requests (CONN_MAX_AGE). Reads of jobs are answered in front of Django's
handler when they succeed (builds.api.reads): on SQLite in the event loop itself, before the
hand-off to a thread; on PostgreSQL in the threads. Job creations that succeed are taken in the
loop too and stored by group commit in a thread of their own (builds.api.creations). Measured
in bench/RESULTS.md.

Neither half reads a request body before it is checked: the WSGI half reads lazily (the size
limit and the token come first), and the log route refuses any body unread.
"""

import os

from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
django_app = get_wsgi_application()  # sets Django up first

from builds.api.logstream import LOG_PATH, refuse_request_body, serve_logs  # noqa: E402
from builds.api.creations import LoopCreations  # noqa: E402
from builds.api.reads import LeanReads, in_the_loop  # noqa: E402

api = LoopCreations(in_the_loop(WSGIMiddleware(LeanReads(django_app), workers=settings.WEB_THREADS)))

streaming = refuse_request_body(serve_logs)


async def lifespan(scope, receive, send):
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    elif scope["type"] == "http" and LOG_PATH.match(scope["path"]):
        await streaming(scope, receive, send)
    else:
        await api(scope, receive, send)
