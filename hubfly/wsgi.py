import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
application = get_wsgi_application()

from builds.api.reads import LeanReads  # noqa: E402  (after Django's set-up)

application = LeanReads(application)
