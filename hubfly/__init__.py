"""Django project wiring for hubfly-builder. The Celery app (hubfly.celery) is loaded when
Django starts (builds.apps), not on import of this package: hubfly.localservices and the web
server's master process use the package without Django or Celery."""


def __getattr__(name):
    if name == "celery_app":
        # On first use: loading the settings (manage.py, the web) must not load Celery.
        from .celery import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
