"""Django project wiring for hubfly-builder: settings, URLs, the ASGI/WSGI applications, the
Celery app and the processes' entry points and configuration. The Celery app (hubfly.celery)
is loaded when Django starts (builds.apps), not on import of this package: the web server's
master process uses the package without Django or Celery."""


def __getattr__(name):
    if name == "celery_app":
        # On first use: loading the settings (manage.py, the web) must not load Celery.
        from .celery import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
