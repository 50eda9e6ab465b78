"""ASGI application on settings_async_chain. Static files (admin, API docs) are not served in
this variant: it measures the JSON API only."""

import os

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.web.settings_async_chain"

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
