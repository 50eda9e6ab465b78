from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The Celery app before any task is published: shared_task binds to the current app.
        import hubfly.celery  # noqa: F401

        from . import workerstart  # noqa: F401  (worker start-up hooks)
