"""The web process's ASGI application, in two halves.

A job's log endpoint can follow a build for minutes: it runs on Django's ASGI handler, where a
follower is a coroutine, not a thread. Every other request (the JSON API, the admin, static files)
runs Django as WSGI in a pool of WEB_THREADS threads: one hand-off per request instead of several,
and each thread keeps its database connection between requests (CONN_MAX_AGE), which Django's
ASGI handler closes after every request. Measured in bench/RESULTS.md.

Neither half reads a request body before it is checked: the WSGI half reads lazily (the size
limit and the token come first), and the log route refuses any body before Django's ASGI
handler, which reads a whole body up front, could take it.
"""

import os
import re

from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
django_asgi = get_asgi_application()  # sets Django up, which the log route's module needs

from builds.api.logstream import refuse_request_body  # noqa: E402

streaming = refuse_request_body(django_asgi)
threaded = WSGIMiddleware(get_wsgi_application(), workers=settings.WEB_THREADS)
_STREAMED = re.compile(r"^/api/v1/jobs/[^/]+/logs/?$")


async def application(scope, receive, send):
    if scope["type"] == "http" and not _STREAMED.match(scope["path"]):
        await threaded(scope, receive, send)
    else:
        await streaming(scope, receive, send)
