"""gunicorn settings for the web process (`--config python:hubfly.gunicorn_conf`).

gunicorn's own lines and the access log (written by uvicorn's worker through gunicorn's
loggers) use the service's log format, so LOG_FORMAT=json makes every line of the web
process a JSON object.
"""

import os
import warnings

from hubfly.logformat import logging_config

# whitenoise serves the admin's and the API docs' static files as sync file responses, which
# Django's ASGI handler reads whole (they are small) and warns about on every request. The
# large responses, the logs, stream asynchronously (builds.joblog.reader).
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

# Read here as hubfly/settings.py reads them: gunicorn's master process loads this file and never
# Django's settings (importing them would cost it about 7 MiB).
logconfig_dict = logging_config(os.environ.get("LOG_FORMAT", "plain").lower(), os.environ.get("LOG_LEVEL", "INFO"))
# gunicorn 27's runtime control socket has one default path per user: two web processes on one
# host (the scale-out layout) would fight over it, and nothing here uses it.
control_socket_disable = True


def post_worker_init(worker):
    # gunicorn reads this file before Django is set up; the worker has set it up by now.
    from builds.services.state import dispatch

    dispatch.warm_up()
